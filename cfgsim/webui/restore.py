"""Putting the WebUI back as the probe found it: options and the loaded checkpoint.

``process_images`` restores only the overridden options that already had an entry in
``opts.data``, and never the loaded model. :class:`RestoreWebUI` snapshots every option a run may
touch (:func:`cfgsim.webui.options.touched_keys`: the table of forced and recorded options, the
checkpoint and the request's own ``override_settings``) and, on exit — success, error or
interrupt alike — puts each back to exactly its prior state: the value, or no entry when it had
none. Then the originally loaded checkpoint is loaded again if the run left another one loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from cfgsim.webui.host import WebUIHost, forget_failed_forge_load
from cfgsim.webui.options import CHECKPOINT_OPTION, OptionsSnapshot, touched_keys

log = logging.getLogger("cfgsim")


class RestoreWebUI:
    """Context manager around a probe run. See the module docstring."""

    def __init__(self, host: WebUIHost, requested: Any = ()) -> None:
        self.host = host
        self.keys = touched_keys(requested or ())
        self.snapshot: OptionsSnapshot | None = None
        self.original: Any = None

    def __enter__(self) -> RestoreWebUI:
        self.snapshot = OptionsSnapshot(self.host.webui.opts, self.keys)
        self.original = self.host.loaded_info()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.restore()
        except Exception:  # restoring must not hide the run's own error
            log.exception("cfgsim: could not restore the WebUI's settings and checkpoint")

    def restore(self) -> None:
        assert self.snapshot is not None
        webui = self.host.webui
        forget_failed_forge_load(webui.sd_models)
        changed = self.snapshot.restore()
        if CHECKPOINT_OPTION in changed:
            refresh_forge_loading_parameters(webui)
        if self.original is not None and getattr(self.host.loaded_info(), "filename", None) != getattr(
            self.original, "filename", None
        ):
            reload_checkpoint(webui, self.original)
            # Loading writes the checkpoint option itself (A1111: its title into opts.data): undo.
            if CHECKPOINT_OPTION in self.snapshot.restore():
                refresh_forge_loading_parameters(webui)


def refresh_forge_loading_parameters(webui: Any) -> None:
    """Forge keeps the checkpoint to load in its own state (``model_data.forge_loading_parameters``,
    compared with the last load by ``forge_model_reload``): point it back at the option's value."""
    refresh = getattr(webui.forge_main_entry, "refresh_model_loading_parameters", None)
    if callable(refresh):
        refresh()


def reload_checkpoint(webui: Any, info: Any) -> None:
    """Load ``info``'s checkpoint again. Forge: ``reload_model_weights()`` is a no-op; its own
    loader loads what the (restored) loading parameters name. A1111: by the info itself, so a
    checkpoint option that had no entry (and so names nothing) still brings the right model back."""
    sd = webui.sd_models
    forge_reload = getattr(sd, "forge_model_reload", None)
    if callable(forge_reload):
        forge_reload()
    else:
        sd.reload_model_weights(info=info)
