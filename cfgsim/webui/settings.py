"""The "CFG similarity" section of the WebUI's Settings, and reading it back.

Every key is prefixed ``cfgsim_``. Registration takes the WebUI's ``opts``, its ``OptionInfo``
class and the gradio module as parameters (called from the script's ``on_ui_settings`` callback).
"""

from __future__ import annotations

from typing import Any

from cfgsim import controls
from cfgsim.metrics.clip import DEFAULT_MODEL as CLIP_DEFAULT_MODEL
from cfgsim.metrics.clip import DEFAULT_PRETRAINED as CLIP_DEFAULT_PRETRAINED
from cfgsim.webui.options import setting

SETTINGS_SECTION = ("cfgsim", "CFG similarity")
OVERLAY_STYLES = ("All selected metrics", "First metric only")

SETTING_KEYS = (
    "cfgsim_default_metrics",
    "cfgsim_clip_model",
    "cfgsim_clip_pretrained",
    "cfgsim_clip_keep_loaded",
    "cfgsim_overlay_style",
    "cfgsim_skip_uncond",
    "cfgsim_library",
    "cfgsim_library_dir",
    "cfgsim_batch_size",
)


def register_settings(opts: Any, option_info: Any, gr: Any) -> None:
    """Add the section's options (``opts.add_option`` with ``OptionInfo``; ``gr`` for components)."""
    section = SETTINGS_SECTION
    opts.add_option(
        "cfgsim_default_metrics",
        option_info(
            list(controls.control("metrics").default),
            "Default similarity metrics",
            gr.CheckboxGroup,
            {"choices": list(controls.METRIC_LABELS.values())},
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_clip_model",
        option_info("", f"CLIP metric: open_clip model name (empty = {CLIP_DEFAULT_MODEL})", section=section),
    )
    opts.add_option(
        "cfgsim_clip_pretrained",
        option_info(
            "",
            "CLIP metric: open_clip pretrained tag (e.g. openai) or the path of a local weights file "
            f"(.safetensors, or a plain state dict; empty = {CLIP_DEFAULT_PRETRAINED}, downloaded "
            "once by open_clip)",
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_clip_keep_loaded",
        option_info(
            True,
            "CLIP metric: keep the model loaded between runs (off: free its memory after each run)",
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_overlay_style",
        option_info(
            OVERLAY_STYLES[0],
            "Grid overlays show",
            gr.Radio,
            {"choices": list(OVERLAY_STYLES)},
            section=section,
        ),
    )
    opts.add_option(
        "cfgsim_skip_uncond",
        option_info(
            True,
            "Skip the unconditional pass at CFG 1 during probes (A1111: half the UNet work, the same "
            "image up to float rounding; Forge always skips it)",
            section=section,
        ),
    )
    register_library_settings(opts, option_info)
    opts.add_option(
        "cfgsim_batch_size",
        option_info(
            0,
            "Seeds per batch during probes (0 = automatic: 1 on the CPU, what fits on a GPU)",
            gr.Slider,
            {"minimum": 0, "maximum": 64, "step": 1},
            section=section,
        ),
    )


def register_library_settings(opts: Any, option_info: Any) -> None:
    """The probe library's two settings (see :mod:`cfgsim.library`)."""
    opts.add_option(
        "cfgsim_library",
        option_info(
            True,
            "Probe library: keep every probe image and take images probed before from it (the same "
            "checkpoint content, settings and seed are not generated again)",
            section=SETTINGS_SECTION,
        ),
    )
    opts.add_option(
        "cfgsim_library_dir",
        option_info(
            "",
            "Probe library folder (empty = cfgsim-library in the WebUI's data folder)",
            section=SETTINGS_SECTION,
        ),
    )


def library_enabled(opts: Any, p: Any = None) -> bool:
    """The "probe library" setting; an API request's ``override_settings`` (``p``'s) decide for
    that request, as for :func:`skip_uncond`."""
    requested = getattr(p, "override_settings", None) or {}
    if "cfgsim_library" in requested:
        return _flag(requested["cfgsim_library"])
    return _flag(setting(opts, "cfgsim_library", True))


def library_dir(opts: Any, p: Any = None) -> str:
    requested = getattr(p, "override_settings", None) or {}
    value = requested.get("cfgsim_library_dir", setting(opts, "cfgsim_library_dir", ""))
    return str(value or "").strip()


def metric_options(opts: Any) -> dict[str, dict[str, Any]]:
    """Keyword options per metric from the settings (empty settings = the metric's own defaults).

    CLIP inside the WebUI is lazy (its weights load after the probe images are made, not on the
    GPU beside the diffusion model during generation) and cached between runs.
    """
    clip: dict[str, Any] = {"lazy": True, "cache": True}
    model = str(setting(opts, "cfgsim_clip_model", "") or "").strip()
    pretrained = str(setting(opts, "cfgsim_clip_pretrained", "") or "").strip()
    if model:
        clip["model"] = model
    if pretrained:
        clip["pretrained"] = pretrained
    return {"clip": clip}


def keep_clip_loaded(opts: Any) -> bool:
    return _flag(setting(opts, "cfgsim_clip_keep_loaded", True))


def skip_uncond(opts: Any, p: Any = None) -> bool:
    """The "skip the unconditional pass at CFG 1" setting (see :mod:`cfgsim.webui.condonly`); an
    API request's ``override_settings`` (``p``'s) decide for that request."""
    requested = getattr(p, "override_settings", None) or {}
    if "cfgsim_skip_uncond" in requested:
        return _flag(requested["cfgsim_skip_uncond"])
    return _flag(setting(opts, "cfgsim_skip_uncond", True))


def batch_size_setting(opts: Any, p: Any = None) -> int:
    """The "seeds per batch" setting, 0 = automatic (see :func:`cfgsim.webui.host.automatic_batch_size`);
    an API request's ``override_settings`` (``p``'s) decide for that request. Not a number: 0."""
    requested = getattr(p, "override_settings", None) or {}
    value = requested.get("cfgsim_batch_size", setting(opts, "cfgsim_batch_size", 0))
    try:
        return max(0, int(float(value)))
    except (TypeError, ValueError):
        return 0


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() not in ("false", "0", "no", "off")


def default_metric_labels(opts: Any) -> list[str]:
    value = setting(opts, "cfgsim_default_metrics", None)
    labels = [controls.METRIC_LABELS.get(str(v).lower(), str(v)) for v in (value or [])]
    labels = [label for label in labels if label in controls.METRIC_LABELS.values()]
    return labels or list(controls.control("metrics").default)


def overlay_style(opts: Any) -> str:
    return str(setting(opts, "cfgsim_overlay_style", OVERLAY_STYLES[0]))
