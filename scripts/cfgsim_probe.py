"""CFG 1.0 similarity probe: the WebUI script (AUTOMATIC1111 1.8-1.10 with gradio 3.41, Forge with 4.40).

Select "CFG 1.0 similarity probe" in txt2img's Script dropdown, pick checkpoints, press Generate:
every checkpoint is run under one fixed probe (empty prompt, CFG 1 = no guidance, fixed seed) and
the pictures are compared. This file is the only code of the extension that imports the WebUI
(``modules``) or gradio. It is an adapter: it lists checkpoints, makes one probe image per call,
reports progress and saves. The run loop, the comparison, the drawing and the metadata live in
the ``cfgsim`` library (shared with the standalone and HTTP-API runners) and are tested there.

Constraints from the WebUI that shape this file (see the project's design notes):

- Every top-level file in ``scripts/`` is executed and the extension root is on ``sys.path`` only
  while that happens, so ``cfgsim`` is imported here at module top, never lazily.
- ``ui()`` is called again inside ``gr.Blocks()`` to collect the API's default arguments: it must
  have no side effects. Its components' values reach ``run(p, *args)`` positionally; both sides
  derive from :data:`cfgsim.controls.CONTROLS`.
- ``copy(p)`` is shallow: each cell gets its own ``override_settings``, ``extra_generation_params``,
  ``comments`` and ``styles``. Checkpoints are switched with ``override_settings
  ['sd_model_checkpoint']`` (``reload_model_weights()`` is a no-op in Forge), and
  ``process_images`` restores overridden options itself; the loaded model stays loaded, so the
  original one is reloaded at the end.
- ``process_images`` silently drops a checkpoint override it cannot resolve and renders with the
  loaded model instead: checkpoints are resolved here first, an unknown one is a failed cell.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
from copy import copy
from typing import Any

import gradio as gr
from modules import images, processing, script_callbacks, scripts, sd_models, shared

# The WebUI puts the extension root on sys.path only while it loads scripts/: import cfgsim here.
from cfgsim import __version__ as cfgsim_version
from cfgsim import controls, grid, metadata, report
from cfgsim.compare import build_metrics
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, ProbeInterrupted
from cfgsim.infotext import Infotext, format_value
from cfgsim.metrics.clip import DEFAULT_MODEL as CLIP_DEFAULT_MODEL
from cfgsim.metrics.clip import DEFAULT_PRETRAINED as CLIP_DEFAULT_PRETRAINED
from cfgsim.probe import error_text, run_probe
from cfgsim.result import ProbeResult, Reference
from cfgsim.spec import format_seeds, get_preset
from cfgsim.standalone.checkpoint import (
    SAFETENSORS_SUFFIXES,
    detect_architecture,
    normalize_keys,
    read_safetensors_header,
)

log = logging.getLogger("cfgsim")

TITLE = "CFG 1.0 similarity probe"
SETTINGS_SECTION = ("cfgsim", "CFG similarity")
GRID_BASENAME = "cfgsim"

OVERLAY_STYLES = ("All selected metrics", "First metric only")

# Options the probe forces for every cell through override_settings (process_images restores them).
# Token merging changes pixels; the three ratios cover txt2img, hires and img2img.
FORCED_OPTIONS = {
    "token_merging_ratio": 0.0,
    "token_merging_ratio_hr": 0.0,
    "token_merging_ratio_img2img": 0.0,
}

# Options that change pixels and that the probe records but does not force: they are the user's
# environment (forcing e.g. the RNG source would make the run incomparable with the same user's
# earlier images). (WebUI infotext label, option key, the WebUI's default.) All go into the JSON;
# the grid's infotext gets those that differ from the default, as the WebUI writes its own.
RECORDED_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("RNG", "randn_source", "GPU"),
    ("Emphasis", "emphasis", "Original"),
    ("Noise Schedule", "sd_noise_schedule", "Default"),
    ("SGM noise multiplier", "sgm_noise_multiplier", False),
    ("Discard penultimate sigma", "always_discard_next_to_last_sigma", False),
    ("NGMS", "s_min_uncond", 0.0),
    ("NGMS all steps", "s_min_uncond_all", False),
    ("Skip Early CFG", "skip_early_cond", 0.0),
    ("Pad conds", "pad_cond_uncond", False),
    ("Old emphasis implementation", "use_old_emphasis_implementation", False),
    ("VAE Decoder", "sd_vae_decode_method", "Full"),
    ("SD VAE setting", "sd_vae", "Automatic"),
    ("Cross attention optimization", "cross_attention_optimization", "Automatic"),
    ("Upcast cross attention", "upcast_attn", False),
    ("Forge UNet storage", "forge_unet_storage_dtype", "Automatic"),
)

# Command-line flags of A1111 and Forge that change precision (and so pixels).
PRECISION_FLAGS = (
    "no_half",
    "no_half_vae",
    "upcast_sampling",
    "precision",
    "all_in_fp32",
    "all_in_fp16",
    "unet_in_fp16",
    "unet_in_bf16",
    "unet_in_fp8_e4m3fn",
    "unet_in_fp8_e5m2",
    "vae_in_fp16",
    "vae_in_fp32",
    "vae_in_bf16",
    "clip_in_fp16",
    "clip_in_fp32",
    "force_upcast_attention",
)


# -- checkpoint architecture -----------------------------------------------------------------------

_ARCH_CACHE: dict[tuple[str, int, float], str] = {}


def architecture_of(filename: str | None) -> str:
    """The architecture of a checkpoint file, before loading it: from a safetensors header's key
    names (cfgsim's reader, shared with the standalone runner). "unknown" for other formats (a
    pickle cannot be inspected without loading it; the loaded model's flags tell afterwards) and
    for unreadable files: those are probed, never dropped silently. Cached per path, size, mtime."""
    if not filename or not filename.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown"
    try:
        stat = os.stat(filename)
    except OSError:
        return "unknown"
    key = (filename, stat.st_size, stat.st_mtime)
    if key not in _ARCH_CACHE:
        try:
            _ARCH_CACHE[key] = detect_architecture(normalize_keys(read_safetensors_header(filename)))
        except CheckpointLoadError:
            _ARCH_CACHE[key] = "unknown"
    return _ARCH_CACHE[key]


def loaded_model_architecture(model: object) -> str | None:
    """The architecture of a loaded model from the flags both WebUIs set on it, None if it has none."""
    if model is None or not hasattr(model, "is_sdxl"):
        return None
    if getattr(model, "is_sdxl", False):
        return "sdxl"
    if getattr(model, "is_sd2", False):
        return "sd2"
    if getattr(model, "is_sd3", False):
        return "sd3"
    if getattr(model, "is_sd1", True):
        return "sd1"
    return "unknown"  # Forge sets no is_sd* flag on Flux and other newer families


# -- the host --------------------------------------------------------------------------------------


def probe_processing(
    p: Any,
    spec: Any,
    seed: int,
    checkpoint: str | None,
    *,
    known_options: Any = None,
) -> Any:
    """A copy of ``p`` with the probe enforced, whatever the txt2img UI holds.

    Everything that changes the pixels and that the probe pins is set here: prompt, negative
    prompt, sampler (+ schedule where the WebUI has one), steps (256 is above the UI slider: set in
    code), CFG, seed without variation or resize, size, batch 1 × 1, no hires fix, refiner, face
    restoration, tiling, styles, token merging; clip skip and the checkpoint go through
    ``override_settings`` so ``process_images`` restores them. Always-on scripts (ControlNet,
    ADetailer, Dynamic Prompts, ...) are detached from the copy: they change pixels.
    """
    pc = copy(p)
    pc.prompt = spec.prompt
    pc.negative_prompt = spec.negative_prompt
    pc.styles = []
    pc.sampler_name = spec.sampler
    if hasattr(pc, "scheduler"):  # A1111 1.9+ and Forge choose the schedule separately
        pc.scheduler = spec.scheduler
    pc.steps = spec.effective_steps
    pc.cfg_scale = float(spec.cfg_scale)
    pc.seed = int(seed)
    pc.subseed = -1
    pc.subseed_strength = 0.0
    pc.seed_resize_from_w = 0
    pc.seed_resize_from_h = 0
    pc.width, pc.height = spec.width, spec.height
    pc.batch_size = 1
    pc.n_iter = 1
    pc.enable_hr = False
    pc.refiner_checkpoint = None
    pc.refiner_switch_at = None
    pc.restore_faces = False
    pc.tiling = False
    pc.token_merging_ratio = 0.0
    pc.token_merging_ratio_hr = 0.0
    # Euler adds noise only with churn; DDIM only with eta: pin both to the deterministic samplers.
    pc.s_churn = 0.0
    pc.eta = 0.0
    if hasattr(pc, "firstpass_image"):
        pc.firstpass_image = None
    if hasattr(pc, "txt2img_upscale"):
        pc.txt2img_upscale = False
    pc.scripts = None
    # The copy is shallow: fresh containers, or cells would write into each other and into p.
    pc.extra_generation_params = {}
    pc.comments = {}
    pc.do_not_save_grid = True
    overrides = dict(getattr(p, "override_settings", None) or {})
    overrides.update(FORCED_OPTIONS)
    overrides["CLIP_stop_at_last_layers"] = int(spec.clip_skip)
    if checkpoint is not None:
        overrides["sd_model_checkpoint"] = checkpoint
    if known_options is not None:  # opts.set() raises on keys a WebUI version does not have
        overrides = {k: v for k, v in overrides.items() if k in known_options}
    pc.override_settings = overrides
    pc.override_settings_restore_afterwards = True
    return pc


class WebUIHost:
    """The probe's host inside the WebUI process (see :class:`cfgsim.host.Host`).

    The WebUI modules are parameters (defaulting to the real ones) so tests pass small fakes.
    """

    name = "webui"

    def __init__(
        self, p: Any, *, shared_mod: Any = None, sd_models_mod: Any = None, processing_mod: Any = None
    ) -> None:
        self.p = p
        self.shared = shared_mod or shared
        self.sd_models = sd_models_mod or sd_models
        self.processing = processing_mod or processing
        self._infos: dict[str, Any] = {}

    # -- checkpoints -------------------------------------------------------------------------------

    def _all_infos(self) -> list[Any]:
        return list(getattr(self.sd_models, "checkpoints_list", {}).values())

    def find_info(self, text: str) -> Any | None:
        """The CheckpointInfo for a title, name, file name or hash, exactly (no substring guess:
        probing a different model than the one asked for would be worse than failing)."""
        aliases = getattr(self.sd_models, "checkpoint_aliases", {}) or {}
        if text in aliases:
            return aliases[text]
        wanted = text.strip().lower()
        for info in self._all_infos():
            names = {
                getattr(info, attr, None)
                for attr in ("title", "name", "name_for_extra", "model_name", "short_title", "filename")
            }
            names.discard(None)
            if wanted in {str(n).lower() for n in names} or wanted == os.path.basename(info.filename).lower():
                return info
        return None

    def checkpoint_for(self, info: Any, label: str | None = None) -> Checkpoint:
        checkpoint = Checkpoint(
            name=info.name,
            label=label or getattr(info, "name_for_extra", None) or info.name,
            # Not the absolute path: the saved grid's metadata travels, the user's folders need not.
            file=None,
            model_hash=getattr(info, "hash", None),
            sha256=getattr(info, "sha256", None),
            architecture=architecture_of(info.filename),
        )
        self._infos[checkpoint.name] = info
        return checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        return [self.checkpoint_for(info) for info in self._all_infos()]

    def resolve(self, names: list[str]) -> list[Checkpoint]:
        """The user's selection, in order. A name that matches no installed checkpoint stays in the
        list (it becomes a failed cell, with the reason); short labels are used where unique."""
        found: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for text in names:
            info = self.find_info(text)
            key = info.filename if info is not None else text
            if key not in seen:  # the same file selected twice (by title and by name) runs once
                seen.add(key)
                found.append((text, info))
        short = [getattr(info, "name_for_extra", None) or text if info else text for text, info in found]
        out: list[Checkpoint] = []
        for (text, info), label in zip(found, short, strict=True):
            if info is None:
                out.append(Checkpoint(name=text, label=text, architecture="unknown"))
            else:
                # Two files with one base name in different folders: their names tell them apart.
                out.append(self.checkpoint_for(info, info.name if short.count(label) > 1 else label))
        return out

    def _loaded_model(self) -> Any:
        # model_data holds the model without triggering a load (A1111's shared.sd_model would).
        data = getattr(self.sd_models, "model_data", None)
        if data is not None:
            return getattr(data, "sd_model", None)
        return getattr(self.shared, "sd_model", None)

    def loaded_info(self) -> Any | None:
        return getattr(self._loaded_model(), "sd_checkpoint_info", None)

    def current_checkpoint(self) -> str | None:
        info = self.loaded_info()
        if info is None:
            # Forge loads lazily: nothing is loaded before the first generation; the checkpoint
            # selected in the UI is what the next generation would load.
            selected = getattr(self.shared.opts, "sd_model_checkpoint", None)
            info = self.find_info(selected) if selected else None
        return getattr(info, "name", None)

    # -- generation --------------------------------------------------------------------------------

    def generate(self, checkpoint: Checkpoint, spec: Any, seed: int) -> Generated:
        info = self._infos.get(checkpoint.name)
        if info is None:
            raise CheckpointLoadError(f"{checkpoint.name!r} is not among the installed checkpoints")
        if not os.path.exists(info.filename):
            raise CheckpointLoadError(f"file not found: {info.filename}")
        opts, state = self.shared.opts, self.shared.state
        known = getattr(opts, "data_labels", None)
        pc = probe_processing(self.p, spec, seed, info.name, known_options=known)
        try:
            processed = self.processing.process_images(pc)
        except Exception as exc:
            if getattr(state, "interrupted", False):
                raise ProbeInterrupted() from exc
            loaded = self.loaded_info()
            if loaded is None or getattr(loaded, "filename", None) != info.filename:
                forget_failed_forge_load(self.sd_models)
                raise CheckpointLoadError(f"loading failed: {error_text(exc)}") from exc
            raise
        if getattr(state, "interrupted", False):
            raise ProbeInterrupted()  # sampling was cut short: the image is not a probe image
        if getattr(state, "skipped", False):
            state.skipped = False
            raise RuntimeError("skipped by the user (the image is incomplete)")
        if not processed.images:
            if getattr(state, "stopping_generation", False):
                raise ProbeInterrupted()
            raise RuntimeError("the WebUI returned no image")
        arch = loaded_model_architecture(self._loaded_model())
        if arch not in (None, "sd1", "unknown"):
            # A pickle (.ckpt) cannot be inspected before loading: its architecture shows now.
            reason = Checkpoint(checkpoint.name, architecture=arch).probe_skip_reason
            raise CheckpointLoadError(reason or arch)
        image = processed.images[0]
        infotext = (processed.infotexts or [processed.info])[0] or ""
        vae = getattr(processed, "sd_vae_name", None) or "from the checkpoint"
        return Generated(image=image, infotext=infotext, settings={"VAE in use": vae})

    def progress(self, done: int, total: int, job: str) -> None:
        state = self.shared.state
        state.job_count = total
        state.job = job
        # process_images calls nextjob() itself once per image; cells that made no image (failed,
        # skipped) still count, so catch the counter up rather than calling nextjob() per cell.
        while getattr(state, "job_no", 0) < done:
            state.nextjob()

    def interrupted(self) -> bool:
        state = self.shared.state
        return bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))

    def environment(self) -> dict[str, str]:
        """Everything that changes pixels and that the probe records but does not force."""
        opts = self.shared.opts
        env = {"WebUI": webui_name(), "Version": webui_version()}
        data = getattr(opts, "data", {}) or {}
        labels = getattr(opts, "data_labels", {}) or {}
        # The request's own override_settings (API callers set e.g. randn_source there) apply to
        # every cell (probe_processing keeps them): record those values, not the global options.
        requested = getattr(self.p, "override_settings", None) or {}
        for label, key, default in RECORDED_OPTIONS:
            if key in requested:
                env[label] = format_value(requested[key])
            elif key in data or key in labels:
                env[label] = format_value(setting(opts, key, default))
        env["Precision"] = precision_text(self.shared)
        env["Always-on scripts"] = "off during the probe"
        env["cfgsim"] = cfgsim_version
        return env


def webui_name() -> str:
    """ "Forge" when Forge's own package is importable, else "AUTOMATIC1111"."""
    try:
        return "Forge" if importlib.util.find_spec("modules_forge") is not None else "AUTOMATIC1111"
    except (ImportError, ValueError):
        return "AUTOMATIC1111"


@functools.cache
def webui_version() -> str:
    """The WebUI's version: Forge's version file, else the git tag the WebUI itself reports."""
    version = ""
    try:
        forge_version = importlib.import_module("modules_forge.forge_version")
        version = str(getattr(forge_version, "version", "") or "")
    except ImportError:
        pass
    if not version:
        try:
            launch_utils = importlib.import_module("modules.launch_utils")
            version = str(launch_utils.git_tag())
        except Exception:  # the version is informative: never fail a run over it
            version = ""
    return "unknown" if version in ("", "<none>") else version


def precision_text(shared_mod: Any) -> str:
    """The dtypes in use and the precision flags the WebUI was started with, as one line."""
    parts = []
    try:
        devices = importlib.import_module("modules.devices")
    except ImportError:
        devices = None
    for attr in ("dtype", "dtype_unet", "dtype_vae"):
        value = getattr(devices, attr, None) if devices is not None else None
        if value is not None:
            parts.append(f"{attr}={str(value).replace('torch.', '')}")
    cmd_opts = getattr(shared_mod, "cmd_opts", None)
    for flag in PRECISION_FLAGS:
        value = getattr(cmd_opts, flag, None)
        if value not in (None, False, ""):
            parts.append(f"--{flag.replace('_', '-')}" + ("" if value is True else f"={value}"))
    return ", ".join(parts) or "default"


# -- settings --------------------------------------------------------------------------------------


def setting(opts: Any, key: str, default: Any) -> Any:
    value = getattr(opts, key, None) if opts is not None else None
    if value is None:
        value = (getattr(opts, "data", None) or {}).get(key, default) if opts is not None else default
    return default if value is None else value


def metric_options(opts: Any) -> dict[str, dict[str, str]]:
    """Keyword options per metric from the settings (empty settings = the metric's own defaults)."""
    clip: dict[str, str] = {}
    model = str(setting(opts, "cfgsim_clip_model", "") or "").strip()
    pretrained = str(setting(opts, "cfgsim_clip_pretrained", "") or "").strip()
    if model:
        clip["model"] = model
    if pretrained:
        clip["pretrained"] = pretrained
    return {"clip": clip} if clip else {}


def default_metric_labels(opts: Any) -> list[str]:
    value = setting(opts, "cfgsim_default_metrics", None)
    labels = [controls.METRIC_LABELS.get(str(v).lower(), str(v)) for v in (value or [])]
    labels = [label for label in labels if label in controls.METRIC_LABELS.values()]
    return labels or list(controls.control("metrics").default)


def on_ui_settings() -> None:
    """The "CFG similarity" section of the WebUI's Settings (keys prefixed ``cfgsim_``)."""
    opts, option = shared.opts, shared.OptionInfo
    section = SETTINGS_SECTION
    opts.add_option(
        "cfgsim_default_metrics",
        option(
            list(controls.control("metrics").default),
            "Default similarity metrics",
            gr.CheckboxGroup,
            {"choices": list(controls.METRIC_LABELS.values())},
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_clip_model",
        option(
            "",
            f"CLIP metric: open_clip model name (empty = {CLIP_DEFAULT_MODEL})",
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_clip_pretrained",
        option(
            "",
            "CLIP metric: open_clip pretrained tag (e.g. openai) or the path of a local weights file "
            f"(empty = {CLIP_DEFAULT_PRETRAINED}, downloaded once by open_clip)",
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_overlay_style",
        option(
            OVERLAY_STYLES[0],
            "Grid overlays show",
            gr.Radio,
            {"choices": list(OVERLAY_STYLES)},
            section=section,
        ),
    )


script_callbacks.on_ui_settings(on_ui_settings)


# -- restoration -----------------------------------------------------------------------------------


class RestoreWebUI:
    """Puts back what a probe run may leave changed: options and the loaded checkpoint.

    ``process_images`` restores the options it overrode, but not the loaded model; and an error
    inside it may leave an option set. On exit (success, error or interrupt alike) every watched
    option is compared with its value at entry and restored, and the originally loaded checkpoint
    is loaded again if the run left another one loaded. An option the user never set (absent from
    ``opts.data``, so at its default) that an override put there is taken out again, so that the
    run leaves no trace in the WebUI's config.json.
    """

    def __init__(self, host: WebUIHost, keys: list[str]) -> None:
        self.host = host
        self.keys = keys
        self.saved: dict[str, Any] = {}
        self.absent: list[str] = []
        self.original_file: str | None = None

    def __enter__(self) -> RestoreWebUI:
        data = self.host.shared.opts.data
        self.saved = {k: copy(data[k]) for k in self.keys if k in data}
        self.absent = [k for k in self.keys if k not in data]
        info = self.host.loaded_info()
        self.original_file = getattr(info, "filename", None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.restore()
        except Exception:  # restoring must not hide the run's own error
            log.exception("cfgsim: could not restore the WebUI's settings and checkpoint")

    def restore(self) -> None:
        opts = self.host.shared.opts
        forget_failed_forge_load(self.host.sd_models)
        changed = [k for k, v in self.saved.items() if opts.data.get(k) != v]
        for key in changed:
            opts.data[key] = self.saved[key]
        labels = getattr(opts, "data_labels", None) or {}
        for key in self.absent:
            if key in opts.data and key in labels and opts.data[key] == getattr(labels[key], "default", None):
                del opts.data[key]
        if "sd_model_checkpoint" in changed:
            _refresh_forge_loading_parameters()
        if self.original_file is None:
            return  # nothing was loaded before (Forge loads lazily): nothing to put back
        loaded = self.host.loaded_info()
        if getattr(loaded, "filename", None) == self.original_file:
            return
        sd = self.host.sd_models
        forge_reload = getattr(sd, "forge_model_reload", None)
        if callable(forge_reload):
            forge_reload()  # Forge: reload_model_weights() is a no-op; this loads opts' checkpoint
        else:
            sd.reload_model_weights()  # A1111: loads the checkpoint opts names (restored above)


def forget_failed_forge_load(sd_models_mod: Any) -> None:
    """Work around Forge losing its model on a failed load.

    Forge unloads the current model, then fails to load the new one: ``model_data.sd_model`` is
    None but ``model_data.forge_hash`` still names the last good load, so the next generation that
    asks for that checkpoint (typically the user's own, restored after the probe) skips loading and
    fails on the missing model. Clearing the hash makes Forge load it again. A no-op elsewhere.
    """
    data = getattr(sd_models_mod, "model_data", None)
    if not callable(getattr(sd_models_mod, "forge_model_reload", None)) or data is None:
        return
    if getattr(data, "sd_model", None) is None and getattr(data, "forge_hash", ""):
        data.forge_hash = ""


def _refresh_forge_loading_parameters() -> None:
    """Forge keeps the checkpoint to load in its own state: point it back at the option's value."""
    try:
        main_entry = importlib.import_module("modules_forge.main_entry")
    except ImportError:
        return
    refresh = getattr(main_entry, "refresh_model_loading_parameters", None)
    if callable(refresh):
        refresh()


# -- the run ---------------------------------------------------------------------------------------


def build_reference(
    values: controls.ProbeArgs, checkpoints: list[Checkpoint], host: WebUIHost, choice: controls.SpecChoice
) -> Reference:
    if values.reference_mode == controls.REFERENCE_CHECKPOINT:
        wanted = values.reference_checkpoint
        if not wanted:
            index = 0
        else:
            info = host.find_info(wanted)
            matches = [
                i
                for i, c in enumerate(checkpoints)
                if wanted in (c.name, c.label) or (info is not None and c.name == info.name)
            ]
            if not matches:
                raise InputError(f"reference checkpoint {wanted!r} is not one of the selected checkpoints")
            index = matches[0]
        return Reference("item", index, checkpoints[index].label)
    if values.reference_mode == controls.REFERENCE_IMAGE:
        image = values.reference_image
        if image is None:
            raise InputError("reference image: choose an image to compare against, or another reference")
        label = "uploaded image"
        model_hash = _infotext_value(choice.reference_infotext, "Model hash")
        if model_hash:
            label = f"uploaded image (model hash {model_hash})"
        filename = getattr(image, "filename", None) or None
        return Reference("image", None, label, filename, image.convert("RGB"), choice.reference_infotext)
    return Reference()


def _infotext_value(text: str, key: str) -> str:
    return Infotext.parse(text).params.get(key, "") if text else ""


def render(result: ProbeResult, *, overlays: bool, style: str) -> list[tuple[str, Any]]:
    """Grid first, then the heatmaps (one per metric, for two checkpoints or more)."""
    if style == OVERLAY_STYLES[1] and result.scores:
        first = next(iter(result.scores))
        out = [("grid", grid.render_grid(result, metrics=[first], overlays=overlays))]
        if len(result.items) >= 2:
            out.extend((f"heatmap-{name}", grid.render_heatmap(result, name)) for name in result.scores)
        return out
    return grid.render_all(result, overlays=overlays)


def grid_infotext(result: ProbeResult, opts: Any) -> str:
    """The grid's ``parameters``: cfgsim's grid infotext plus the recorded options that differ from
    the WebUI's defaults and the WebUI's version, with the labels the WebUI itself writes them under
    (so the PNG Info tab reads them, and a cfg1 run on default settings reads back as the preset)."""
    info = Infotext.parse(metadata.grid_infotext(result))
    env = result.environment
    for label, key, default in RECORDED_OPTIONS:
        if label in env and env[label] != format_value(default) and key != "sd_vae":
            info.params[label] = env[label]
    if env.get("Version") and setting(opts, "add_version_to_infotext", True):
        info.params["Version"] = env["Version"]
    return str(info)


def save_grid(
    p: Any, image: Any, *, infotext: str, json_text: str, seed: int, opts: Any, images_mod: Any = None
) -> str | None:
    """Save the grid the way the WebUI saves its own grids; returns the file, None when not saved.

    PNG grids carry the JSON in a ``cfgsim`` text chunk beside ``parameters``; JPEG and WebP keep
    only the infotext (EXIF), so the JSON goes into a sidecar file beside them (also when the user
    turned PNG info off).
    """
    if not setting(opts, "grid_save", True) or getattr(p, "do_not_save_grid", False):
        return None
    images_mod = images_mod or images
    extension = str(setting(opts, "grid_format", "png") or "png").lstrip(".").lower()
    outdir = (
        getattr(p, "outpath_grids", None)
        or setting(opts, "outdir_txt2img_grids", "")
        or setting(opts, "outdir_grids", "")
        or "outputs/txt2img-grids"
    )
    fullfn, _ = images_mod.save_image(
        image,
        outdir,
        GRID_BASENAME,
        seed=seed,
        prompt="",
        extension=extension,
        info=infotext,
        short_filename=not setting(opts, "grid_extended_filename", False),
        p=p,
        grid=True,
        existing_info={metadata.PNG_JSON_KEY: json_text},
    )
    if fullfn and (not fullfn.lower().endswith(".png") or not setting(opts, "enable_pnginfo", True)):
        metadata.atomic_write_bytes(metadata.sidecar_path(fullfn), json_text.encode("utf-8"))
    return fullfn


def run_probe_script(
    p: Any,
    values: controls.ProbeArgs,
    *,
    shared_mod: Any = None,
    sd_models_mod: Any = None,
    processing_mod: Any = None,
    images_mod: Any = None,
) -> Any:
    """Everything ``Script.run`` does, with the WebUI modules as parameters (tests pass fakes)."""
    shared_mod = shared_mod or shared
    processing_mod = processing_mod or processing
    opts = shared_mod.opts
    host = WebUIHost(p, shared_mod=shared_mod, sd_models_mod=sd_models_mod, processing_mod=processing_mod)

    if not values.checkpoints:
        raise InputError("Checkpoints to probe: select at least one checkpoint")
    checkpoints = host.resolve(values.checkpoints)
    choice = controls.choose_spec(
        values.preset,
        values.seeds,
        values.preview_steps,
        reference_mode=values.reference_mode,
        reference_image=values.reference_image,
    )
    spec = choice.spec
    reference = build_reference(values, checkpoints, host, choice)
    metrics = build_metrics(values.metrics, metric_options(opts))

    watched = [
        "sd_model_checkpoint",
        "CLIP_stop_at_last_layers",
        *FORCED_OPTIONS,
        *(key for _, key, _ in RECORDED_OPTIONS),
    ]
    with RestoreWebUI(host, watched):
        result = run_probe(
            host,
            checkpoints,
            spec,
            metrics=metrics,
            reference=reference,
            preset=choice.preset,
            deviations=choice.deviations,
        )

    rendered = render(
        result, overlays=values.overlays, style=str(setting(opts, "cfgsim_overlay_style", OVERLAY_STYLES[0]))
    )
    infotext = grid_infotext(result, opts)
    json_text = metadata.to_json(result)
    grid_image = rendered[0][1]
    if setting(opts, "enable_pnginfo", True):
        grid_image.info["parameters"] = infotext  # what the gallery's download and "Send to" keep
    saved = save_grid(
        p,
        grid_image,
        infotext=infotext,
        json_text=json_text,
        seed=spec.seeds[0],
        opts=opts,
        images_mod=images_mod,
    )
    if saved:
        log.info("cfgsim: grid saved to %s", saved)
    return build_processed(
        p,
        result,
        rendered,
        infotext=infotext,
        json_text=json_text,
        include_images=values.include_images,
        processing_mod=processing_mod,
        saved=saved,
    )


def build_processed(
    p: Any,
    result: ProbeResult,
    rendered: list[tuple[str, Any]],
    *,
    infotext: str,
    json_text: str,
    include_images: bool,
    processing_mod: Any,
    saved: str | None,
) -> Any:
    """The ``Processed`` the WebUI shows: gallery, infotexts, the HTML report, the API's ``info``."""
    spec = result.spec
    gallery = [image for _, image in rendered]
    infotexts = [infotext] * len(gallery)
    seeds = [spec.seeds[0]] * len(gallery)
    n_grids = len(gallery)
    if include_images:
        for cell in result.cells:
            if cell.ok:
                gallery.append(cell.image)
                infotexts.append(cell.infotext)
                seeds.append(result.rows[cell.row])
    # Processed reads prompt, sampler, size... from the p it is given: give it the probe's.
    pr = probe_processing(p, spec, spec.seeds[0], None)
    pr.scripts = getattr(p, "scripts", None)
    data = json.loads(json_text)
    if saved:
        data["grid_file"] = os.path.abspath(saved)
    # processed.js() (the API's "info") serialises extra_generation_params: the matrix goes there.
    pr.extra_generation_params = {metadata.PNG_JSON_KEY: data}
    # The WebUI shows comments under the gallery; cfgsim.js turns this text into the table.
    pr.comments = {report.report_html(result): 1}
    return processing_mod.Processed(
        pr,
        gallery,
        seed=spec.seeds[0],
        info=infotext,
        subseed=-1,
        all_prompts=[spec.prompt] * len(gallery),
        all_negative_prompts=[spec.negative_prompt] * len(gallery),
        all_seeds=seeds,
        all_subseeds=[-1] * len(gallery),
        index_of_first_image=n_grids if include_images else 0,
        infotexts=infotexts,
    )


# -- the Script ------------------------------------------------------------------------------------


def _checkpoint_choices() -> list[str]:
    try:
        return list(sd_models.checkpoint_tiles())
    except Exception:  # an empty list beats a script that fails to show
        return [
            getattr(info, "title", str(info)) for info in getattr(sd_models, "checkpoints_list", {}).values()
        ]


def reference_info_html(preset: str, seeds: str, mode: Any, image: Any, preview_steps: Any = 0) -> str:
    """The box under the reference controls: how the probe will differ from the preset."""
    try:
        mode_index = controls.control("reference_mode").normalise(mode)
        steps = controls.control("preview_steps").normalise(preview_steps)
        choice = controls.choose_spec(
            preset,
            seeds or "",
            steps,
            reference_mode=mode_index,
            reference_image=controls.decode_image(image),
        )
    except InputError as exc:
        return f'<div class="cfgsim-deviations cfgsim-error">{report.esc(exc)}</div>'
    return report.deviations_html(choice.deviations, choice.notes, preset=choice.preset)


class Script(scripts.Script):
    """The selectable txt2img script. See the module docstring."""

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return not is_img2img

    def ui(self, is_img2img: bool) -> list[Any]:
        """Components in :data:`cfgsim.controls.CONTROLS` order. No side effects: the API calls this
        again to collect default arguments."""
        made: dict[str, Any] = {}

        def make(name: str, **extra: Any) -> Any:
            ctl = controls.control(name)
            common = {
                "label": ctl.label,
                "elem_id": ctl.elem_id,
                "elem_classes": [ctl.elem_class],
                "tooltip": ctl.hint,
            }
            common.update(extra)
            factory = {
                "checkpoints": lambda: gr.Dropdown(
                    choices=_checkpoint_choices(), value=[], multiselect=True, **common
                ),
                "choice": lambda: gr.Dropdown(choices=list(ctl.choices), value=ctl.default, **common),
                "index": lambda: gr.Dropdown(
                    choices=list(ctl.choices), value=ctl.default, type="index", **common
                ),
                "checkpoint": lambda: gr.Dropdown(choices=[], value=None, allow_custom_value=True, **common),
                "text": lambda: gr.Textbox(value=ctl.default, lines=1, **common),
                "image": lambda: gr.Image(type="pil", **common),
                "metrics": lambda: gr.CheckboxGroup(
                    choices=list(ctl.choices), value=default_metric_labels(shared.opts), **common
                ),
                "bool": lambda: gr.Checkbox(value=ctl.default, **common),
                "steps": lambda: gr.Slider(
                    minimum=ctl.minimum, maximum=ctl.maximum, step=1, value=ctl.default, **common
                ),
            }[ctl.kind]
            made[name] = factory()
            return made[name]

        with gr.Group(elem_id="cfgsim_panel", elem_classes=["cfgsim-panel"]):
            with gr.Row(elem_classes=["cfgsim-row"]):
                checkpoints = make("checkpoints")
                self._refresh_button(checkpoints)
            with gr.Row(elem_classes=["cfgsim-row"]):
                preset = make("preset")
                seeds = make("seeds")
            gr.HTML(value='<p class="cfgsim-axes">Grid: one column per checkpoint, one row per seed.</p>')
            with gr.Row(elem_classes=["cfgsim-row"]):
                mode = make("reference_mode")
                reference_checkpoint = make("reference_checkpoint", visible=False)
            image = make("reference_image", visible=False)
            info = gr.HTML(value="", elem_id="cfgsim_reference_info", elem_classes=["cfgsim-reference-info"])
            with gr.Row(elem_classes=["cfgsim-row"]):
                make("metrics")
                make("overlays")
                make("include_images")
            preview = make("preview_steps")
            gr.HTML(
                value=report.hints_html(controls.hints(), controls.hints_by_elem_id()),
                elem_id="cfgsim_hints",
                elem_classes=["cfgsim-hints-box"],
            )

        def selection_changed(selected: list[str] | None, current: str | None) -> Any:
            selected = list(selected or [])
            value = current if current in selected else (selected[0] if selected else None)
            return gr.update(choices=selected, value=value)

        def mode_changed(index: Any) -> list[Any]:
            try:
                index = controls.control("reference_mode").normalise(index)
            except InputError:
                index = controls.REFERENCE_NONE
            return [
                gr.update(visible=index == controls.REFERENCE_CHECKPOINT),
                gr.update(visible=index == controls.REFERENCE_IMAGE),
            ]

        def preset_changed(name: str) -> Any:
            return gr.update(value=format_seeds(get_preset(name).seeds))

        checkpoints.change(
            fn=selection_changed, inputs=[checkpoints, reference_checkpoint], outputs=[reference_checkpoint]
        )
        mode.change(fn=mode_changed, inputs=[mode], outputs=[reference_checkpoint, image])
        preset.change(fn=preset_changed, inputs=[preset], outputs=[seeds])
        for component in (preset, seeds, mode, image, preview):
            component.change(
                fn=reference_info_html, inputs=[preset, seeds, mode, image, preview], outputs=[info]
            )
        return [made[name] for name in controls.CONTROL_NAMES]

    def _refresh_button(self, checkpoints: Any) -> Any:
        """The WebUI's own refresh button (re-scans the model folder), or a plain one."""
        try:
            from modules import shared_items, ui_common

            return ui_common.create_refresh_button(
                checkpoints,
                shared_items.refresh_checkpoints,
                lambda: {"choices": _checkpoint_choices()},
                "cfgsim_checkpoints_refresh",
            )
        except (ImportError, AttributeError):
            button = gr.Button(
                value="\U0001f504", elem_id="cfgsim_checkpoints_refresh", elem_classes=["cfgsim-refresh"]
            )

            def refresh() -> Any:
                sd_models.list_models()
                return gr.update(choices=_checkpoint_choices())

            button.click(fn=refresh, inputs=[], outputs=[checkpoints])
            return button

    def run(self, p: Any, *args: Any) -> Any:
        """The probe for the checkpoints selected in ``args`` (positional, in ``ui()`` order)."""
        expected = getattr(self, "args_to", 0) - getattr(self, "args_from", 0)
        if expected and not args and len(getattr(p, "script_args", None) or ()) < getattr(self, "args_to", 0):
            # Forge computes the API's default arguments after its routes already answer: a call in
            # that window gets its script_args at the wrong positions and this script none.
            raise InputError(
                "the WebUI passed no arguments to the script (was the API called while the WebUI was "
                "still starting?); call it again"
            )
        values = controls.unpack(args, defaults={"metrics": default_metric_labels(shared.opts)})
        return run_probe_script(p, values)


__all__ = ["Script", "WebUIHost", "architecture_of", "probe_processing", "run_probe_script"]
