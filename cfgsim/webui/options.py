"""The WebUI options the probe touches: one table drives enforcement, recording and restoration.

Every option that changes the pixels of a probe image is in :data:`HOST_OPTIONS`, with the label
the WebUI writes it under in infotext and the WebUI's default. An option is either *forced* (the
probe defines its value: clip skip, token merging, A1111 1.8's k-diffusion schedule override) —
it goes into every cell's ``override_settings`` — or *recorded* (the user's environment: the RNG
source, the VAE, precision...) — it goes into the metadata. Options a WebUI version lacks are
simply absent: only keys the running WebUI knows are forced or recorded.

Restoration uses the same table: :class:`OptionsSnapshot` remembers, for every key of the table,
the checkpoint option and the request's own ``override_settings``, either the value in
``opts.data`` or that the key was absent, and puts back exactly that. The WebUI's own
``process_images`` restores only keys that already had an entry in ``opts.data`` (A1111 1.8-1.10
and Forge alike), so without this an install where nobody pressed "Apply settings" keeps the
probe's clip skip 2 for every later generation, and an API caller's per-request override stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from cfgsim.infotext import format_value
from cfgsim.spec import ProbeSpec

CHECKPOINT_OPTION = "sd_model_checkpoint"


@dataclass(frozen=True)
class HostOption:
    """One WebUI option that changes pixels.

    ``force`` is None for a recorded option; for a forced one it gives the value from the spec.
    ``label`` is the infotext label the WebUI itself writes the option under (where it has one).
    """

    key: str
    label: str
    default: Any
    force: Callable[[ProbeSpec], Any] | None = None

    @property
    def forced(self) -> bool:
        return self.force is not None


def _const(value: Any) -> Callable[[ProbeSpec], Any]:
    return lambda spec: value


# Sources read: A1111 1.8 (commit 45b8a499) and Forge HEAD (1.10.1 core) modules/shared_options.py,
# sd_samplers_kdiffusion.py, sd_models.py, processing.py.
HOST_OPTIONS: tuple[HostOption, ...] = (
    # -- forced: the probe defines these -----------------------------------------------------------
    HostOption("CLIP_stop_at_last_layers", "Clip skip", 1, lambda spec: int(spec.clip_skip)),
    # Token merging changes pixels; the three ratios cover txt2img, hires and img2img.
    HostOption("token_merging_ratio", "Token merging ratio", 0.0, _const(0.0)),
    HostOption("token_merging_ratio_hr", "Token merging ratio hr", 0.0, _const(0.0)),
    HostOption("token_merging_ratio_img2img", "Token merging ratio img2img", 0.0, _const(0.0)),
    # A1111 1.8 only (1.9+ moved it to p.scheduler): a global override of every k-diffusion
    # sampler's sigmas (Karras, exponential...). The probe's Euler uses the discrete schedule.
    HostOption("k_sched_type", "Schedule type", "Automatic", _const("Automatic")),
    # -- recorded: the user's environment ---------------------------------------------------------
    HostOption("randn_source", "RNG", "GPU"),
    HostOption("emphasis", "Emphasis", "Original"),
    HostOption("sd_noise_schedule", "Noise Schedule", "Default"),
    HostOption("sgm_noise_multiplier", "SGM noise multiplier", False),
    HostOption("always_discard_next_to_last_sigma", "Discard penultimate sigma", False),
    HostOption("s_min_uncond", "NGMS", 0.0),
    HostOption("s_min_uncond_all", "NGMS all steps", False),
    HostOption("skip_early_cond", "Skip Early CFG", 0.0),
    HostOption("pad_cond_uncond", "Pad conds", False),
    HostOption("use_old_emphasis_implementation", "Old emphasis implementation", False),
    # Rounds k-diffusion's sigmas to the model's discrete ones (changes seeds, says the WebUI).
    HostOption("enable_quantization", "Quantization in K samplers", False),
    HostOption("use_downcasted_alpha_bar", "Downcast alphas_cumprod", False),
    HostOption("fp8_storage", "FP8 weight", "Disable"),
    HostOption("sd_unet", "SD UNet", "Automatic"),
    HostOption("sd_vae_decode_method", "VAE Decoder", "Full"),
    HostOption("sd_vae", "SD VAE setting", "Automatic"),
    HostOption("cross_attention_optimization", "Cross attention optimization", "Automatic"),
    HostOption("upcast_attn", "Upcast cross attention", False),
    HostOption("forge_unet_storage_dtype", "Forge UNet storage", "Automatic"),
)

FORCED_OPTIONS = tuple(o for o in HOST_OPTIONS if o.forced)
RECORDED_OPTIONS = tuple(o for o in HOST_OPTIONS if not o.forced)
# Recorded in the JSON but not written into the grid's infotext (the VAE has its own keys there).
NOT_IN_INFOTEXT = frozenset({"sd_vae"})

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


def setting(opts: Any, key: str, default: Any) -> Any:
    """An option's value: attribute access (the WebUI's own, with its defaults), else ``opts.data``,
    else ``default``."""
    if opts is None:
        return default
    try:
        value = getattr(opts, key, None)
    except Exception:  # a WebUI Options object raises its own errors for unknown keys
        value = None
    if value is None:
        value = (getattr(opts, "data", None) or {}).get(key, default)
    return default if value is None else value


def known(opts: Any, key: str) -> bool:
    """True when the running WebUI has the option (its Options knows a label or a value for it)."""
    labels = getattr(opts, "data_labels", None)
    if labels is not None:
        return key in labels or key in (getattr(opts, "data", None) or {})
    return True  # no label table to ask: assume it does (opts.set() is not used without one)


def forced_overrides(spec: ProbeSpec, opts: Any) -> dict[str, Any]:
    """``override_settings`` entries for the forced options this WebUI has."""
    return {o.key: o.force(spec) for o in FORCED_OPTIONS if known(opts, o.key)}  # type: ignore[misc]


def recorded_values(opts: Any, requested: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{infotext label: value} of the recorded options this WebUI has. The request's own
    ``override_settings`` (API callers set e.g. ``randn_source`` there) apply to every cell, so
    their values are what is recorded."""
    requested = requested or {}
    out: dict[str, str] = {}
    for option in RECORDED_OPTIONS:
        if option.key in requested:
            out[option.label] = format_value(requested[option.key])
        elif known(opts, option.key):
            out[option.label] = format_value(setting(opts, option.key, option.default))
    return out


def infotext_values(environment: Mapping[str, str]) -> dict[str, str]:
    """The recorded options worth writing into a grid's infotext: those that differ from the
    WebUI's default, as the WebUI writes its own (so a default run reads back as the preset)."""
    out = {}
    for option in RECORDED_OPTIONS:
        value = environment.get(option.label)
        if value is not None and option.key not in NOT_IN_INFOTEXT and value != format_value(option.default):
            out[option.label] = value
    return out


def touched_keys(requested: Iterable[str] = ()) -> list[str]:
    """Every option a probe run may change: the table, the checkpoint, the request's overrides."""
    keys = [CHECKPOINT_OPTION, *(o.key for o in HOST_OPTIONS)]
    keys += [k for k in requested if k not in keys]
    return keys


_ABSENT = object()


class OptionsSnapshot:
    """The state of some options in ``opts.data``: each key's value, or that it was absent."""

    def __init__(self, opts: Any, keys: Iterable[str]) -> None:
        data = opts.data
        self.opts = opts
        self.values: dict[str, Any] = {k: deepcopy(data[k]) if k in data else _ABSENT for k in keys}

    def was_absent(self, key: str) -> bool:
        return self.values.get(key, _ABSENT) is _ABSENT

    def changed(self) -> list[str]:
        """Keys whose state differs from the snapshot now."""
        data = self.opts.data
        out = []
        for key, value in self.values.items():
            if value is _ABSENT:
                if key in data:
                    out.append(key)
            elif key not in data or data[key] != value:
                out.append(key)
        return out

    def restore(self) -> list[str]:
        """Put every key back to its state at the snapshot; returns the keys that changed.

        Written into ``opts.data`` directly, as the WebUI's own restore does, so no option's
        onchange callback runs (they would reload models or rebuild the UI).
        """
        changed = self.changed()
        data = self.opts.data
        for key in changed:
            value = self.values[key]
            if value is _ABSENT:
                data.pop(key, None)
            else:
                data[key] = deepcopy(value)
        return changed
