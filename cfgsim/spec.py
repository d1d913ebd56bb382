"""The probe spec: one immutable, typed description of the probe, and its infotext labels.

The defaults are the published ground truth of the CFG 1.0 probe (the NovelAI model's output for
seed 1337): empty prompt, zero-weighted negatives, Euler, 256 steps, CFG 1, 512x512, clip skip 2.
``SPEC_LABELS`` is the one table from spec fields to infotext labels; everything that reads or
writes infotext goes through it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cfgsim.errors import InputError
from cfgsim.infotext import Infotext, format_value

DEFAULT_NEGATIVE = (
    "(bad:0), (comic:0), (cropped:0), (error:0), (extra:0), (low:0), (lowres:0), (speech:0), (worst:0)"
)

# Seeds in the WebUI are 32-bit unsigned; -1 (random) has no place in a probe.
MAX_SEED = 2**32 - 1
MAX_SEEDS = 1000


def parse_seeds(text: str | int | Iterable[int]) -> tuple[int, ...]:
    """Seeds from ``1337``, ``"1337, 42"``, ``"1-20"`` or a mix (``"1-3, 7"``); order kept, no repeats."""
    if isinstance(text, str):
        # "1 - 20" is one range: glue the dash to its ends before splitting on commas and blanks.
        parts = re.split(r"[,;\s]+", re.sub(r"\s*-\s*", "-", text.strip()))
    elif isinstance(text, int):
        parts = [str(text)]
    else:
        parts = [str(int(seed)) for seed in text]
    seeds: list[int] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if match:
            start, stop = int(match.group(1)), int(match.group(2))
            if stop < start:
                raise InputError(f"seed range {part!r}: the end is before the start")
            if stop - start >= MAX_SEEDS:
                raise InputError(f"seed range {part!r}: more than {MAX_SEEDS} seeds")
            values = range(start, stop + 1)
        elif re.fullmatch(r"\d+", part):
            values = range(int(part), int(part) + 1)
        else:
            raise InputError(f"seeds {text!r}: {part!r} is not a seed (use 1337, '1337, 42' or '1-20')")
        for seed in values:
            if seed > MAX_SEED:
                raise InputError(f"seed {seed} is larger than {MAX_SEED}")
            if seed not in seeds:
                seeds.append(seed)
    if not seeds:
        raise InputError(f"seeds {text!r}: no seed given")
    if len(seeds) > MAX_SEEDS:
        raise InputError(f"seeds {text!r}: more than {MAX_SEEDS} seeds")
    return tuple(seeds)


def format_seeds(seeds: Iterable[int]) -> str:
    """The shortest text ``parse_seeds`` reads back: runs of three or more become ranges."""
    seeds = list(seeds)
    out: list[str] = []
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{seeds[i]}-{seeds[j]}")
        else:
            out.extend(str(s) for s in seeds[i : j + 1])
        i = j + 1
    return ", ".join(out)


@dataclass(frozen=True)
class ProbeSpec:
    """Every setting of the probe that changes the pixels and that the probe pins.

    ``steps_override`` is the "quick preview": a run at fewer steps whose images are *not the
    probe* and are labelled so everywhere. ``extra`` keeps infotext pairs the spec has no field
    for (in order), so an image's settings survive a round trip.
    """

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    sampler: str = "Euler"
    scheduler: str = "Automatic"
    steps: int = 256
    cfg_scale: float = 1.0
    seeds: tuple[int, ...] = (1337,)
    width: int = 512
    height: int = 512
    clip_skip: int = 2
    steps_override: int | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        object.__setattr__(self, "extra", tuple((str(k), str(v)) for k, v in dict(self.extra).items()))
        problems = []
        if not 1 <= self.steps <= 10000:
            problems.append(f"steps {self.steps} is outside 1-10000")
        if self.steps_override is not None and not 1 <= self.steps_override <= 10000:
            problems.append(f"quick-preview steps {self.steps_override} is outside 1-10000")
        if not 0 <= self.cfg_scale <= 100:
            problems.append(f"CFG scale {self.cfg_scale} is outside 0-100")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 64 <= value <= 4096 or value % 8:
                problems.append(f"{name} {value} must be a multiple of 8 between 64 and 4096")
        if not 1 <= self.clip_skip <= 12:
            problems.append(f"clip skip {self.clip_skip} is outside 1-12")
        if problems:
            raise InputError("probe spec: " + "; ".join(problems))

    @property
    def effective_steps(self) -> int:
        """The steps actually sampled: the quick-preview override when set, else ``steps``."""
        return self.steps_override if self.steps_override is not None else self.steps

    @property
    def is_probe(self) -> bool:
        """False for a quick preview: its images are not comparable with real probe images."""
        return self.steps_override is None or self.steps_override == self.steps

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    def replace(self, **changes: object) -> ProbeSpec:
        return dataclasses.replace(self, **changes)

    # -- infotext -------------------------------------------------------------------------------

    def to_infotext(self, extra: Mapping[str, object] | None = None) -> Infotext:
        """The WebUI infotext of this spec (plus ``extra`` pairs, e.g. the compared models)."""
        params: dict[str, str] = {}
        for entry in SPEC_LABELS:
            value = entry.write(self)
            if value is not None:
                params[entry.label] = value
        params.update(dict(self.extra))
        for key, value in (extra or {}).items():
            if value is not None:
                params[key] = format_value(value)
        return Infotext(self.prompt, self.negative_prompt, params)

    @classmethod
    def from_infotext(cls, text: str | Infotext, *, base: ProbeSpec | None = None) -> ProbeSpec:
        """The spec an image was made with. Fields its infotext lacks keep ``base``'s values.

        Per-image keys (model name and hashes, VAE, WebUI version) describe that one image, not
        the probe: they are not carried into the spec. Other unknown keys go to ``extra``.
        """
        info = Infotext.parse(text) if isinstance(text, str) else text
        base = base or cls()
        values: dict[str, object] = {"prompt": info.prompt, "negative_prompt": info.negative_prompt}
        extra: dict[str, str] = {}
        for key, raw in info.params.items():
            entry = _BY_LABEL.get(key)
            if entry is not None:
                try:
                    values.update(entry.read(raw))
                except (ValueError, InputError) as exc:
                    raise InputError(f"infotext: {key}: {raw!r} is not valid ({exc})") from exc
            elif key not in PER_IMAGE_KEYS:
                extra[key] = raw
        values["extra"] = tuple(extra.items())
        # Infotext without "Clip skip" means the WebUI's default, 1 — not the probe's 2.
        if info.params and "Clip skip" not in info.params:
            values["clip_skip"] = 1
        return dataclasses.replace(base, **values)

    def differences(self, other: ProbeSpec) -> list[tuple[str, str, str]]:
        """(label, this value, other value) for every infotext label where the two specs differ.

        Values are the settings in use, also where the WebUI writes no pair for them: clip skip 1
        reads "1" (the infotext has no "Clip skip" then), the sampler's own schedule "Automatic".
        """
        mine, theirs = self.to_infotext(), other.to_infotext()
        out = []
        for label in ("Prompt", "Negative prompt"):
            a = mine.prompt if label == "Prompt" else mine.negative_prompt
            b = theirs.prompt if label == "Prompt" else theirs.negative_prompt
            if a != b:
                out.append((label, a, b))
        keys = list(mine.params) + [k for k in theirs.params if k not in mine.params]
        for key in keys:
            a, b = mine.params.get(key, ""), theirs.params.get(key, "")
            if a != b:
                out.append((key, a or self._implicit(key), b or other._implicit(key)))
        for entry in SPEC_LABELS:
            if entry.label in keys or entry.implicit is None:
                continue
            a, b = entry.implicit(self), entry.implicit(other)
            if a != b:
                out.append((entry.label, a, b))
        return out

    def _implicit(self, label: str) -> str:
        """The value of ``label`` in use when the infotext writes no pair for it ("" if none)."""
        entry = _BY_LABEL.get(label)
        return entry.implicit(self) if entry is not None and entry.implicit is not None else ""


def _size(raw: str) -> dict[str, object]:
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", raw)
    if not match:
        raise ValueError("expected WIDTHxHEIGHT")
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def _preview(raw: str) -> dict[str, object]:
    match = re.fullmatch(r"\s*(\d+)\s+of\s+(\d+)\s*", raw)
    if not match:
        raise ValueError("expected 'N of M'")
    return {"steps_override": int(match.group(1)), "steps": int(match.group(2))}


@dataclass(frozen=True)
class Label:
    """One infotext label: the spec fields it carries, how to write them and how to read them."""

    label: str
    fields: tuple[str, ...]
    write: Callable[[ProbeSpec], str | None]  # None: the WebUI writes no such pair
    read: Callable[[str], dict[str, object]]
    # The value in use, for labels the WebUI leaves out at their default (shown in differences).
    implicit: Callable[[ProbeSpec], str] | None = None


# The one table from spec fields to infotext labels, in the order the WebUI writes them.
SPEC_LABELS: tuple[Label, ...] = (
    Label("Steps", ("steps",), lambda s: str(s.effective_steps), lambda raw: {"steps": int(raw)}),
    Label("Sampler", ("sampler",), lambda s: s.sampler, lambda raw: {"sampler": raw}),
    # The WebUI writes no schedule type for the sampler's own ("Automatic") choice.
    Label(
        "Schedule type",
        ("scheduler",),
        lambda s: None if s.scheduler == "Automatic" else s.scheduler,
        lambda raw: {"scheduler": raw},
        lambda s: s.scheduler,
    ),
    Label(
        "CFG scale",
        ("cfg_scale",),
        lambda s: format_value(float(s.cfg_scale)),
        lambda raw: {"cfg_scale": float(raw)},
    ),
    Label("Seed", ("seeds",), lambda s: str(s.seeds[0]), lambda raw: {"seeds": (int(raw),)}),
    Label("Size", ("width", "height"), lambda s: f"{s.width}x{s.height}", _size),
    # No "Clip skip" pair means the WebUI's default, 1.
    Label(
        "Clip skip",
        ("clip_skip",),
        lambda s: None if s.clip_skip == 1 else str(s.clip_skip),
        lambda raw: {"clip_skip": int(raw)},
        lambda s: str(s.clip_skip),
    ),
    # Several seeds: "Seed" keeps the first (what "Send to txt2img" can use), this keeps them all.
    Label(
        "Probe seeds",
        ("seeds",),
        lambda s: format_seeds(s.seeds) if len(s.seeds) > 1 else None,
        lambda raw: {"seeds": parse_seeds(raw)},
    ),
    # A quick preview keeps the real probe's step count beside the steps it actually ran.
    Label(
        "Probe preview steps",
        ("steps_override", "steps"),
        lambda s: None if s.is_probe else f"{s.effective_steps} of {s.steps}",
        _preview,
    ),
)
_BY_LABEL = {entry.label: entry for entry in SPEC_LABELS}


# Keys that describe one image (which model made it, with which VAE, in which WebUI) and are
# therefore not part of a probe spec read from that image.
PER_IMAGE_KEYS = frozenset(
    {
        "Model",
        "Model hash",
        "VAE",
        "VAE hash",
        "Version",
        "Variation seed",
        "Variation seed strength",
        "Seed resize from",
        "Denoising strength",
        "Compared",
        "Compared hashes",
        "Reference",
        "Lineage",
    }
)

PRESETS: dict[str, ProbeSpec] = {
    "cfg1": ProbeSpec(),
    # The method author's later variant: no prompt at all, DDIM 1000 steps, 20 seeds.
    "prior-v2": ProbeSpec(negative_prompt="", sampler="DDIM", steps=1000, seeds=tuple(range(1, 21))),
}
DEFAULT_PRESET = "cfg1"


def get_preset(name: str) -> ProbeSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"preset {name!r} is unknown (known: {', '.join(PRESETS)})") from None


NOT_THE_PROBE = "not the probe"


@dataclass
class SpecChoice:
    """The probe spec a run will use, and why it is what it is (for the UI box and the metadata)."""

    spec: ProbeSpec
    preset: str
    # (label, preset value, used value) for every setting the reference image changed.
    deviations: list[tuple[str, str, str]] = field(default_factory=list)
    # Plain-text remarks for the user (e.g. "the image's seed replaces the seeds box").
    notes: list[str] = field(default_factory=list)
    reference_infotext: str = ""


def choose_spec(
    preset: str,
    seeds: str,
    preview_steps: int = 0,
    *,
    reference_infotext: str | None = None,
) -> SpecChoice:
    """The probe spec from a preset, the seeds box, the quick-preview steps and a reference image's
    infotext (``None``: no reference image; ``""``: an image that carries none).

    The preset gives every pinned setting; the seeds box replaces its seeds. A reference image that
    carries infotext sets the spec instead (a reference only means something under the settings it
    was made with, seed included): every difference from the preset is returned as a deviation.
    The quick-preview steps apply last and are not a deviation: they are labelled "not the probe"
    on their own.
    """
    base = get_preset(preset)
    choice = SpecChoice(spec=base, preset=preset)
    if reference_infotext:
        spec = ProbeSpec.from_infotext(reference_infotext, base=base)
        choice.reference_infotext = reference_infotext
        choice.deviations = base.differences(spec)
        typed = parse_seeds(seeds) if seeds.strip() else base.seeds
        if typed != spec.seeds:
            choice.notes.append(
                f"The reference image was made with seed {format_seeds(spec.seeds)}: that seed replaces "
                f"the seeds box ({format_seeds(typed)})."
            )
    else:
        spec = base.replace(seeds=parse_seeds(seeds)) if seeds.strip() else base
        if reference_infotext is not None:
            choice.notes.append(
                "The reference image carries no infotext: the preset's settings are used. Make sure "
                "it was made under the same probe and seed, or the scores mean little."
            )
    if preview_steps:
        spec = spec.replace(steps_override=preview_steps)
        if not spec.is_probe:
            choice.notes.append(
                f"Quick preview: {spec.effective_steps} of {spec.steps} steps, {NOT_THE_PROBE}."
            )
    choice.spec = spec
    return choice
