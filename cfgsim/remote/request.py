"""The probe as a ``POST /sdapi/v1/txt2img`` request, and the image in the answer.

:func:`txt2img_payload` is :func:`cfgsim.webui.host.probe_processing` as request fields: the same
fields pinned, the same forced options (:func:`cfgsim.webui.options.forced_overrides`, only the keys
the server knows) in ``override_settings``, with the checkpoint's title as ``sd_model_checkpoint``.
"""

from __future__ import annotations

from typing import Any

from cfgsim.spec import ProbeSpec
from cfgsim.webui.options import CHECKPOINT_OPTION, forced_overrides


class RemoteOptions:
    """The server's options as :mod:`cfgsim.webui.options` reads them: ``data`` and the known keys."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = dict(data)
        self.data_labels = dict.fromkeys(data)


def txt2img_payload(
    spec: ProbeSpec, seed: int, title: str | None, options: RemoteOptions, *, scheduler: bool
) -> dict[str, Any]:
    """The ``POST /sdapi/v1/txt2img`` body that makes the probe image: what
    :func:`cfgsim.webui.host.probe_processing` sets on ``p``, as request fields."""
    overrides = forced_overrides(spec, options)
    if title is not None:
        overrides[CHECKPOINT_OPTION] = title
    payload: dict[str, Any] = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "styles": [],
        "sampler_name": spec.sampler,
        "steps": spec.effective_steps,
        "cfg_scale": float(spec.cfg_scale),
        "seed": int(seed),
        "subseed": -1,
        "subseed_strength": 0.0,
        "seed_resize_from_w": 0,
        "seed_resize_from_h": 0,
        "width": spec.width,
        "height": spec.height,
        "batch_size": 1,
        "n_iter": 1,
        "enable_hr": False,
        "refiner_checkpoint": None,
        "refiner_switch_at": None,
        "restore_faces": False,
        "tiling": False,
        # Euler adds noise only with churn, DDIM only with eta. The API keeps 0.0 (None would mean
        # the server's option).
        "s_churn": 0.0,
        "eta": 0.0,
        "override_settings": overrides,
        "override_settings_restore_afterwards": True,
        "save_images": False,
        "send_images": True,
        "do_not_save_samples": True,
        "do_not_save_grid": True,
        "script_name": None,
        "script_args": [],
        "alwayson_scripts": {},
    }
    if scheduler:  # A1111 1.9+ and Forge: the schedule is a request field (1.8: k_sched_type above)
        payload["scheduler"] = spec.scheduler
    return payload
