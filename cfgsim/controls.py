"""The WebUI script's controls: one declared list, from which ``ui()`` and ``run()`` are both derived.

The WebUI hands a selectable script's control values to ``run(p, *args)`` positionally, in the
order ``ui()`` returned the components, and the HTTP API passes ``script_args`` in that same
order. Keeping one table here (name, label, kind, default, choices, hint, element id) means the
order is written down once: ``scripts/cfgsim_probe.py`` builds its components by walking
:data:`CONTROLS` and unpacks ``run()``'s arguments with :func:`unpack`, and the README's API table
is :func:`api_table`.

Values arrive in several shapes: from the browser (gradio has already converted them), from the
API (raw JSON: a ``Dropdown(type="index")`` gets an int, a checkbox a bool, an image a base64
string) and from the API's defaults (the WebUI fills missing arguments with each component's
``.value``, which for an index dropdown is the choice *label*). :func:`unpack` accepts all of them
and raises :class:`~cfgsim.errors.InputError` naming the control when a value makes no sense.

This module never imports the WebUI or gradio; it also holds the WebUI-free helpers the script
needs around the controls: reading a reference image's infotext and building the probe spec.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cfgsim import imageio, metadata
from cfgsim.errors import InputError
from cfgsim.spec import DEFAULT_PRESET, NOT_THE_PROBE, PRESETS, SpecChoice, format_seeds, get_preset
from cfgsim.spec import choose_spec as spec_choice

ELEM_PREFIX = "cfgsim_"

# Checkbox-group labels of the metrics the UI offers, and the registry names they stand for. The
# API also accepts registry names (any metric the registry knows, e.g. "psnr").
METRIC_LABELS: dict[str, str] = {"ssim": "SSIM", "clip": "CLIP", "phash": "pHash"}
DEFAULT_METRICS = ("ssim",)

REFERENCE_NONE, REFERENCE_CHECKPOINT, REFERENCE_IMAGE = 0, 1, 2
REFERENCE_CHOICES = ("None", "One of the selected checkpoints", "Uploaded image")

# The UI's step slider; the probe's own 256 steps are set in code (above the WebUI's slider maximum).
MAX_PREVIEW_STEPS = 150


@dataclass(frozen=True)
class Control:
    """One control of the script: its component, its value's meaning, and its hover hint.

    ``kind`` decides both the gradio component and how a value is normalised:

    ``checkpoints``  multiselect dropdown of installed checkpoints (list of titles or names)
    ``choice``       dropdown returning the chosen string (one of ``choices``)
    ``index``        ``Dropdown(type="index")``: the position of the choice (an int over the API)
    ``checkpoint``   dropdown of one of the selected checkpoints (title or name; "" = the first)
    ``text``         one-line text box
    ``image``        image upload (PIL image; base64 or a data URL over the API; None = no image)
    ``metrics``      checkbox group of metric labels (or registry names over the API)
    ``bool``         checkbox
    ``steps``        slider of an int step count, 0 = off
    """

    name: str
    label: str
    kind: str
    default: Any
    hint: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 0

    @property
    def elem_id(self) -> str:
        return ELEM_PREFIX + self.name

    @property
    def elem_class(self) -> str:
        return "cfgsim-" + self.name.replace("_", "-")

    def normalise(self, value: Any) -> Any:
        """The value in its canonical Python form. ``None`` (an argument the API left out) means
        the default."""
        if value is None:
            value = self.default
        normaliser = _NORMALISERS[self.kind]
        try:
            return normaliser(self, value)
        except InputError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputError(f"{self.label}: {value!r} is not valid ({exc})") from None


def _names(control: Control, value: Any) -> list[str]:
    if isinstance(value, str):
        # One name per line: checkpoint file names may contain commas.
        items = value.splitlines() if "\n" in value else [value]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise InputError(f"{control.label}: expected a list of names, got {type(value).__name__}")
    out: list[str] = []
    for item in items:
        name = str(item).strip()
        if name and name not in out:
            out.append(name)
    return out


def _choice(control: Control, value: Any) -> str:
    text = str(value).strip()
    for choice in control.choices:
        if text.lower() == choice.lower():
            return choice
    raise InputError(f"{control.label}: {text!r} is not one of {', '.join(control.choices)}")


def _index(control: Control, value: Any) -> int:
    # A Dropdown(type="index") sends an int from the browser and over the API; the API's default
    # for a missing argument is the component's .value, i.e. the choice label.
    if isinstance(value, bool):
        raise InputError(f"{control.label}: expected a number 0-{len(control.choices) - 1}, got {value!r}")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        index = int(value.strip())
    elif isinstance(value, str):
        return control.choices.index(_choice(control, value))
    else:
        raise InputError(f"{control.label}: expected a number or a choice, got {type(value).__name__}")
    if not 0 <= index < len(control.choices):
        raise InputError(f"{control.label}: {index} is not a choice (0-{len(control.choices) - 1})")
    return index


def _text(control: Control, value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value).strip()


def _image(control: Control, value: Any) -> Image.Image | None:
    return decode_image(value, what=control.label)


def _metrics(control: Control, value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    by_label = {label.lower(): name for name, label in METRIC_LABELS.items()}
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        name = by_label.get(text.lower(), text.lower())
        if name not in out:
            out.append(name)
    return out


def _bool(control: Control, value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", ""):
            return False
        raise InputError(f"{control.label}: {value!r} is not true or false")
    if isinstance(value, bool | int | float):
        return bool(value)
    raise InputError(f"{control.label}: expected true or false, got {type(value).__name__}")


def _steps(control: Control, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(f"{control.label}: expected a step count, got {value!r}")
    number = float(value)
    if not number.is_integer():
        raise InputError(f"{control.label}: {value!r} is not a whole number of steps")
    steps = int(number)
    # The UI slider stops at MAX_PREVIEW_STEPS; the API may ask for more (the spec allows 10000).
    if steps < 0 or steps > 10000:
        raise InputError(f"{control.label}: {steps} is outside 0-10000 (0 = off: the real probe)")
    return steps


_NORMALISERS = {
    "checkpoints": _names,
    "choice": _choice,
    "index": _index,
    "checkpoint": lambda control, value: str(value).strip(),
    "text": _text,
    "image": _image,
    "metrics": _metrics,
    "bool": _bool,
    "steps": _steps,
}


# The one declared list. Its order is the order of ui()'s components, of run()'s arguments and of
# the API's script_args; append new controls at the end so existing API calls keep working.
CONTROLS: tuple[Control, ...] = (
    Control(
        "checkpoints",
        "Checkpoints to probe",
        "checkpoints",
        (),
        "The checkpoints to compare. Each is loaded once; the one loaded now runs first. SDXL, SD2 "
        "and other non-SD1 checkpoints are drawn as skipped: the probe is defined for SD 1.x.",
    ),
    Control(
        "preset",
        "Probe preset",
        "choice",
        DEFAULT_PRESET,
        "cfg1: empty prompt, zero-weighted negatives, Euler, 256 steps, CFG 1, seed 1337, 512x512, "
        "clip skip 2 (the published ground truth). prior-v2: no prompt at all, DDIM 1000 steps, "
        "seeds 1-20.",
        choices=tuple(PRESETS),
    ),
    Control(
        "seeds",
        "Probe seeds",
        "text",
        format_seeds(get_preset(DEFAULT_PRESET).seeds),
        "One grid row per seed: 1337, or a list and ranges like '1337, 42' or '1-20'. Empty: the "
        "preset's seeds. An uploaded reference image with infotext brings its own seed.",
    ),
    Control(
        "reference_mode",
        "Compare against",
        "index",
        REFERENCE_CHOICES[REFERENCE_NONE],
        "What the scores are measured against: nothing (only the N×N matrix), one of the selected "
        "checkpoints, or an uploaded probe image such as the published ground truth.",
        choices=REFERENCE_CHOICES,
    ),
    Control(
        "reference_checkpoint",
        "Reference checkpoint",
        "checkpoint",
        "",
        "Which of the selected checkpoints is the reference (empty: the first selected).",
    ),
    Control(
        "reference_image",
        "Reference image",
        "image",
        None,
        "A probe image to compare against. Its PNG infotext, when present, sets the probe's "
        "settings; any difference from the preset is shown here before the run and recorded.",
    ),
    Control(
        "metrics",
        "Similarity metrics",
        "metrics",
        tuple(METRIC_LABELS[name] for name in DEFAULT_METRICS),
        "SSIM: structure, pixel-aligned (the published baseline). CLIP: semantic similarity of "
        "image embeddings (needs open-clip-torch and a model). pHash: perceptual hash. For all "
        "of them 1.0 means identical.",
        choices=tuple(METRIC_LABELS.values()),
    ),
    Control(
        "overlays",
        "Draw scores on the grid",
        "bool",
        True,
        "Overlay each cell with its score against the reference and its rank, and colour its "
        "border; off gives a plain WebUI-style grid.",
    ),
    Control(
        "include_images",
        "Include single images in the gallery",
        "bool",
        False,
        "Also put every probe image, with its own infotext, into the gallery after the grid and "
        "the heatmaps.",
    ),
    Control(
        "preview_steps",
        f"Quick preview steps ({NOT_THE_PROBE}; 0 = off)",
        "steps",
        0,
        "Sample fewer steps to look at the grid quickly. The result is NOT the probe: low step "
        "counts make every checkpoint look alike, and the grid and metadata say so. 0 runs the "
        "real probe.",
        minimum=0,
        maximum=MAX_PREVIEW_STEPS,
    ),
    Control(
        "compare_weights",
        "Compare weights too (no generation)",
        "bool",
        False,
        "Also compare the checkpoints' weights in one pass over the files: which components are "
        "identical (UNet, text encoder, VAE), per-block similarity, and with a reference checkpoint "
        "each other checkpoint's merge recipe in terms of the reference and the rest.",
    ),
    Control(
        "with_library",
        "Include checkpoints probed before (from the library)",
        "bool",
        False,
        "Also compare every checkpoint the probe library holds under the same settings (made "
        "earlier, maybe no longer installed): their columns are labelled (library) and nothing is "
        "generated for them. Needs the probe library (Settings → CFG similarity).",
    ),
)

CONTROL_NAMES = tuple(control.name for control in CONTROLS)
_BY_NAME = {control.name: control for control in CONTROLS}


def control(name: str) -> Control:
    return _BY_NAME[name]


@dataclass
class ProbeArgs:
    """``run()``'s arguments, unpacked and normalised (see :func:`unpack`)."""

    checkpoints: list[str] = field(default_factory=list)
    preset: str = DEFAULT_PRESET
    seeds: str = ""
    reference_mode: int = REFERENCE_NONE
    reference_checkpoint: str = ""
    reference_image: Image.Image | None = None
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    overlays: bool = True
    include_images: bool = False
    preview_steps: int = 0
    compare_weights: bool = False
    with_library: bool = False


def unpack(args: Sequence[Any], *, defaults: Mapping[str, Any] | None = None) -> ProbeArgs:
    """``run(p, *args)``'s positional values → :class:`ProbeArgs`.

    Missing trailing values and ``None`` take the control's default (``defaults`` may replace
    some, e.g. the default metrics from the WebUI's settings). More values than controls is an
    error: it means the caller's argument order is not this one.
    """
    if len(args) > len(CONTROLS):
        raise InputError(
            f"script_args: {len(args)} values for {len(CONTROLS)} controls ({', '.join(CONTROL_NAMES)})"
        )
    defaults = defaults or {}
    values: dict[str, Any] = {}
    for i, ctl in enumerate(CONTROLS):
        raw = args[i] if i < len(args) else None
        if raw is None:
            raw = defaults.get(ctl.name, ctl.default)
        values[ctl.name] = ctl.normalise(raw)
    return ProbeArgs(**values)


def api_table() -> str:
    """A Markdown table of the API's ``script_args``, in order (for the README and the docs)."""
    lines = ["| # | name | label | type | default |", "|---|---|---|---|---|"]
    types = {
        "checkpoints": "list of checkpoint titles or names",
        "choice": "string: {choices}",
        "index": "int: {indexed}",
        "checkpoint": "checkpoint title or name",
        "text": "string",
        "image": "base64 PNG (or data URL) or null",
        "metrics": "list of metric names",
        "bool": "bool",
        "steps": "int (0 = off)",
    }
    for i, ctl in enumerate(CONTROLS):
        kind = types[ctl.kind].format(
            choices=" / ".join(ctl.choices),
            indexed=", ".join(f"{n} = {c}" for n, c in enumerate(ctl.choices)),
        )
        default = ctl.default
        if ctl.kind == "index":
            default = ctl.choices.index(default)
        elif ctl.kind == "metrics":
            default = list(DEFAULT_METRICS)
        lines.append(f"| {i} | `{ctl.name}` | {ctl.label} | {kind} | `{json.dumps(default)}` |")
    return "\n".join(lines)


def hints() -> dict[str, str]:
    """Hover hints keyed by control label (the WebUI's ``titles`` mechanism matches label text)."""
    return {ctl.label: ctl.hint for ctl in CONTROLS}


def hints_by_elem_id() -> dict[str, str]:
    return {ctl.elem_id: ctl.hint for ctl in CONTROLS}


# -- reference image -------------------------------------------------------------------------------


def decode_image(value: Any, *, what: str = "image") -> Image.Image | None:
    """A PIL image from what the UI or the API sends: a PIL image, base64 or a data URL, or nothing.

    File paths are deliberately not accepted: over the API that would let a caller read any file
    the server can.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Image.Image):
        return check_pixels(value, what=what)
    if isinstance(value, Mapping):
        # gradio 4 may wrap the upload ({"image": ..., "mask": ...}) when it comes from a sketch.
        for key in ("image", "composite", "background"):
            if key in value:
                return decode_image(value[key], what=what)
        raise InputError(f"{what}: expected an image or base64 text, got an object with {sorted(value)}")
    if isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value.strip()
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            raw = base64.b64decode(text, validate=False)
            image = Image.open(io.BytesIO(raw))
            check_pixels(image, what=what)  # before decoding: the header says the size
            image.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"{what}: too large to load safely ({exc})") from None
        except (binascii.Error, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"{what}: not a base64-encoded image ({exc})") from None
        return image
    raise InputError(f"{what}: expected an image, got {type(value).__name__}")


def check_pixels(image: Image.Image, *, what: str = "image") -> Image.Image:
    """Refuse an image larger than :data:`cfgsim.imageio.MAX_PIXELS` (the limit every image file
    cfgsim reads goes through: a guard against decompression bombs sent over the API)."""
    limit = imageio.MAX_PIXELS
    width, height = image.size
    if width * height > limit:
        raise InputError(
            f"{what}: too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{limit:,} pixels (a guard against decompression bombs)"
        )
    return image


def infotext_from_image(image: Image.Image | None) -> str:
    """The WebUI infotext an image carries: the PNG ``parameters`` chunk, or for JPEG/WebP the
    EXIF UserComment the WebUI writes there. ``""`` when there is none."""
    if image is None:
        return ""
    info = getattr(image, "info", None) or {}
    text = info.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text:
        return str(text)
    try:
        exif = image.getexif()
        comment = exif.get_ifd(metadata.EXIF_IFD).get(metadata.EXIF_USER_COMMENT) if exif else None
    except (AttributeError, KeyError, ValueError, OSError):
        comment = None
    return metadata.read_user_comment(comment).strip("\0").strip() if comment else ""


def choose_spec(
    preset: str,
    seeds: str,
    preview_steps: int = 0,
    *,
    reference_mode: int = REFERENCE_NONE,
    reference_image: Image.Image | None = None,
) -> SpecChoice:
    """The probe spec from the controls' values (see :func:`cfgsim.spec.choose_spec`): an uploaded
    reference image counts only in "Uploaded image" mode, through the infotext it carries."""
    uses_image = reference_mode == REFERENCE_IMAGE and reference_image is not None
    return spec_choice(
        preset,
        seeds,
        preview_steps,
        reference_infotext=infotext_from_image(reference_image) if uses_image else None,
    )
