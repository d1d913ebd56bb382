"""The WebUI objects the adapter works with, handed in by ``scripts/cfgsim_probe.py``.

cfgsim never imports the WebUI: the script imports ``modules`` (and Forge's ``modules_forge``)
and passes them here, so every function of :mod:`cfgsim.webui` runs against small fakes in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class WebUI:
    """The WebUI's modules, as far as the probe uses them. Optional ones are None where a WebUI
    version lacks them.

    ``shared``: ``opts``, ``state``, ``cmd_opts``, ``sd_model``. ``sd_models``: the checkpoint list,
    aliases, ``model_data``, loading. ``processing``: ``process_images``, ``Processed``,
    ``program_version``. ``images``: ``save_image``. ``hashes``: the WebUI's sha256 cache
    (``sha256_from_cache``). ``devices``: dtypes. ``launch_utils``: ``git_tag`` (older WebUIs
    without ``program_version``). ``forge_main_entry``: Forge's model-loading state
    (``refresh_model_loading_parameters``); None in A1111. ``forge_version``: Forge's version module.
    """

    shared: Any
    sd_models: Any
    processing: Any
    images: Any = None
    hashes: Any = None
    devices: Any = None
    launch_utils: Any = None
    forge_main_entry: Any = None
    forge_version: Any = None

    @property
    def opts(self) -> Any:
        return self.shared.opts

    @property
    def state(self) -> Any:
        return self.shared.state

    @property
    def is_forge(self) -> bool:
        return self.forge_main_entry is not None or self.forge_version is not None

    @property
    def name(self) -> str:
        return "Forge" if self.is_forge else "AUTOMATIC1111"

    def version(self) -> str:
        """The version string the WebUI itself writes into its images' infotext (``Version:``).

        Both WebUIs write ``processing.program_version()`` — A1111 its git tag (``v1.8.0``), Forge
        ``f<forge version>-<A1111 tag>`` (``f2.0.1v1.10.1-1.10.1``) — so the grid says what the
        host's own images say. Older layouts: ``launch_utils.git_tag()``, then Forge's version file.
        """
        for get in (
            getattr(self.processing, "program_version", None),
            getattr(self.launch_utils, "git_tag", None),
        ):
            if callable(get):
                try:
                    value = get()
                except Exception:  # the version is informative: never fail a run over it
                    value = None
                if value and str(value) != "<none>":
                    return str(value)
        forge = str(getattr(self.forge_version, "version", "") or "")
        return f"f{forge}" if forge else "unknown"

    def precision(self) -> str:
        """The dtypes in use and the precision flags the WebUI was started with, as one line."""
        from cfgsim.webui.options import PRECISION_FLAGS

        parts = []
        for attr in ("dtype", "dtype_unet", "dtype_vae"):
            value = getattr(self.devices, attr, None) if self.devices is not None else None
            if value is not None:
                parts.append(f"{attr}={str(value).replace('torch.', '')}")
        cmd_opts = getattr(self.shared, "cmd_opts", None)
        for flag in PRECISION_FLAGS:
            value = getattr(cmd_opts, flag, None)
            if value not in (None, False, ""):
                parts.append(f"--{flag.replace('_', '-')}" + ("" if value is True else f"={value}"))
        return ", ".join(parts) or "default"
