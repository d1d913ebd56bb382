"""One running WebUI server as a probe host, over its HTTP API.

What a txt2img request carries (:func:`txt2img_payload`) mirrors
:func:`cfgsim.webui.host.probe_processing` field by field — prompt, negative, sampler (+ schedule
where the server has ``/sdapi/v1/schedulers``), steps, CFG, seed without variation or resize, size,
batch 1 × 1, no hires fix, refiner, face restoration, tiling, styles, s_churn/eta 0 — and the forced
options of :data:`cfgsim.webui.options.HOST_OPTIONS` go into ``override_settings`` (only the keys the
server knows), with the checkpoint's title as ``sd_model_checkpoint``.

Switching checkpoints (read in A1111 1.8 ``processing.process_images`` / ``options.py`` and Forge's
``process_images`` / ``sysinfo.set_config``): with ``override_settings_restore_afterwards`` the
option ``sd_model_checkpoint`` is put back after every image *without* its on-change callback, so the
model stays loaded — the next image of the same checkpoint does not load it again (A1111:
``reload_model_weights`` sees the same file; Forge: the same loading-parameter hash). So a checkpoint
is loaded once per server, the server's selected checkpoint (the option, config.json) never changes,
and the server's next own generation loads the user's checkpoint again. Nothing is POSTed to
``/sdapi/v1/options`` except to repair an option the server failed to put back (a key that had no
entry in its ``opts.data``: the WebUI restores only keys it had) — see :meth:`RemoteHost.restore`.

The HTTP API cannot detach always-on scripts: they run with their default arguments (off for the
usual ones); that is recorded. A1111 evaluates the uncond rows at CFG 1 over the API (the
extension's cond-only hook only runs inside its own script); Forge skips them itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cfgsim import __version__ as cfgsim_version
from cfgsim.controls import decode_image
from cfgsim.host import (
    LEGACY_HASH_LENGTH,
    LEGACY_HASH_OFFSET,
    Checkpoint,
    CheckpointLoadError,
    Generated,
    ProbeInterrupted,
)
from cfgsim.remote.client import NoApi, RemoteError, ServerError, WebUIClient
from cfgsim.remote.request import RemoteOptions, txt2img_payload
from cfgsim.spec import ProbeSpec
from cfgsim.webui.options import CHECKPOINT_OPTION, PRECISION_FLAGS, forced_overrides, recorded_values

log = logging.getLogger("cfgsim.remote")

PROBE_SCRIPT_TITLE = "cfg 1.0 similarity probe"
COND_ONLY_KEY = "Cond-only"  # the key cfgsim.webui.condonly records (the in-process script's)
ALWAYS_ON = "the server's, with their default arguments (HTTP API)"
_HEX = re.compile(r"^\[?([0-9a-fA-F]{8,64})\]?$")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


@dataclass(frozen=True)
class ServerModel:
    """One entry of ``GET /sdapi/v1/sd-models``."""

    title: str
    model_name: str
    hash: str | None = None  # the WebUI's shorthash: sha256[:10], once the server has hashed it
    sha256: str | None = None
    filename: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerModel:
        def opt(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value else None

        title = str(data.get("title") or data.get("model_name") or "")
        return cls(title, str(data.get("model_name") or title), opt("hash"), opt("sha256"), opt("filename"))

    def names(self) -> set[str]:
        out = {self.title, self.model_name, _TITLE_HASH.sub("", self.title)}
        if self.filename:
            base = os.path.basename(self.filename.replace("\\", "/"))
            out |= {base, os.path.splitext(base)[0]}
        return {n.lower() for n in out if n}

    def legacy_hash(self) -> str | None:
        """The WebUI's legacy 8-hex ``Model hash`` — only when the server's file is readable here."""
        if not self.filename or not os.path.isfile(self.filename):
            return None
        import hashlib

        try:
            with open(self.filename, "rb") as file:
                file.seek(LEGACY_HASH_OFFSET)
                return hashlib.sha256(file.read(LEGACY_HASH_LENGTH)).hexdigest()[:8]
        except OSError:
            return None

    def matches_hash(self, text: str) -> bool:
        m = _HEX.match(text.strip())
        if not m:
            return False
        h = m.group(1).lower()
        if self.sha256 and self.sha256.lower().startswith(h):
            return True
        if self.hash and (self.hash.lower() == h or (len(h) >= 10 and self.hash.lower().startswith(h))):
            return True
        return len(h) == 8 and self.legacy_hash() == h

    def matches(self, text: str) -> bool:
        return text.strip().lower() in self.names() or self.matches_hash(text)

    def checkpoint(self, label: str | None = None) -> Checkpoint:
        return Checkpoint(
            name=self.title,
            label=label or self.model_name,
            model_hash=self.hash,
            sha256=self.sha256,
            architecture="unknown",  # the API does not say; the SD1 probe runs ("unknown" is probed)
        )


class RemoteHost:
    """One WebUI server (see the module docstring); implements :class:`cfgsim.host.Host`."""

    name = "webui"

    def __init__(self, client: WebUIClient) -> None:
        self.client = client
        self.url = client.url
        self.options_before: dict[str, Any] | None = None
        self.options = RemoteOptions({})
        self.models: list[ServerModel] = []
        self.flags: dict[str, Any] = {}
        self.version: str | None = None
        self.has_scheduler = False
        self.has_probe_script = False
        self.loaded: str | None = None  # the title this host last generated with
        self._interrupted = threading.Event()

    def __repr__(self) -> str:
        return f"RemoteHost({self.url!r})"

    @property
    def is_forge(self) -> bool:
        return any(k.startswith("forge_") for k in self.options.data)

    @property
    def webui_name(self) -> str:
        return "Forge" if self.is_forge else "AUTOMATIC1111"

    # -- connecting --------------------------------------------------------------------------------

    def connect(self) -> RemoteHost:
        """Read the server's checkpoints, options (kept: restore() compares with them), flags,
        version and scripts. Raises :class:`RemoteError` with the reason."""
        options = self.client.get("/sdapi/v1/options")
        if not isinstance(options, dict):
            raise _bad(self.url, "/sdapi/v1/options", options)
        self.options_before = options
        self.options = RemoteOptions(options)
        self.refresh_models()
        self.flags = self._optional("/sdapi/v1/cmd-flags") or {}
        self.has_scheduler = self._optional("/sdapi/v1/schedulers") is not None
        scripts = self._optional("/sdapi/v1/scripts") or {}
        names = [str(s).lower() for s in (scripts.get("txt2img") or [])] if isinstance(scripts, dict) else []
        self.has_probe_script = PROBE_SCRIPT_TITLE in names
        self.version = self._sysinfo_version()
        return self

    def refresh_models(self) -> list[ServerModel]:
        models = self.client.get("/sdapi/v1/sd-models")
        if not isinstance(models, list):
            raise _bad(self.url, "/sdapi/v1/sd-models", models)
        self.models = [ServerModel.from_json(m) for m in models if isinstance(m, dict)]
        return self.models

    def _optional(self, path: str) -> Any:
        try:
            return self.client.get(path)
        except (NoApi, ServerError):
            return None

    def _sysinfo_version(self) -> str | None:
        # A1111 1.8 has no version endpoint; /internal/sysinfo (A1111 1.8+, Forge) says it. The
        # images' own infotext ("Version") is what the in-process script records: it replaces this
        # after the first image (see Generated.settings).
        try:
            info = self.client.get("/internal/sysinfo")
        except RemoteError:
            return None
        if isinstance(info, str):
            try:
                info = json.loads(info)
            except ValueError:
                return None
        version = info.get("Version") if isinstance(info, dict) else None
        return str(version) if version and str(version) != "<none>" else None

    # -- checkpoints -------------------------------------------------------------------------------

    def find(self, text: str) -> list[ServerModel]:
        """Every checkpoint ``text`` names: title, name, file name, or hash (sha256 prefix, shorthash,
        legacy hash when the file is readable here). Exact names first: a name never falls back to
        a hash."""
        wanted = text.strip().lower()
        exact = [m for m in self.models if wanted in m.names()]
        return exact or [m for m in self.models if m.matches_hash(text)]

    def checkpoints(self) -> list[Checkpoint]:
        return [m.checkpoint() for m in self.models]

    def model_for(self, checkpoint: Checkpoint | str) -> ServerModel | None:
        name = checkpoint if isinstance(checkpoint, str) else checkpoint.name
        for model in self.models:
            if model.title == name:
                return model
        found = self.find(name)
        return found[0] if len(found) == 1 else None

    def current_checkpoint(self) -> str | None:
        title = (self.options_before or {}).get(CHECKPOINT_OPTION)
        model = self.model_for(str(title)) if title else None
        return model.title if model else None

    def file_of(self, checkpoint: Checkpoint) -> str | None:
        model = self.model_for(checkpoint)
        filename = model.filename if model else None
        return filename if filename and os.path.isfile(filename) else None

    # -- generation --------------------------------------------------------------------------------

    def payload(self, spec: ProbeSpec, seed: int, title: str | None) -> dict[str, Any]:
        return txt2img_payload(spec, seed, title, self.options, scheduler=self.has_scheduler)

    def generate(self, checkpoint: Checkpoint, spec: ProbeSpec, seed: int) -> Generated:
        model = self.model_for(checkpoint)
        if model is None:
            raise CheckpointLoadError(f"{checkpoint.name!r} is not among the checkpoints of {self.url}")
        first = self.loaded != model.title
        try:
            response = self.client.post(
                "/sdapi/v1/txt2img", self.payload(spec, seed, model.title), timeout=self.client.timeout
            )
        except ServerError as exc:
            if self._interrupted.is_set():
                raise ProbeInterrupted() from exc
            if first:  # the first image of a checkpoint is where loading happens
                raise CheckpointLoadError(f"{self.url} could not use it: {exc.reason}") from exc
            raise
        if self._interrupted.is_set():
            raise ProbeInterrupted()  # we stopped it: the image is cut short, not a probe image
        self.loaded = model.title
        return self.parse(response, model)

    def parse(self, response: Any, model: ServerModel) -> Generated:
        if not isinstance(response, dict) or not response.get("images"):
            raise _bad(self.url, "/sdapi/v1/txt2img", response, "no image in the answer")
        info = response.get("info")
        try:
            info = json.loads(info) if isinstance(info, str) else (info or {})
        except ValueError:
            info = {}
        state = self._server_state()
        if state.get("interrupted") or state.get("skipped"):
            # Someone pressed Interrupt/Skip on the server: the image is incomplete.
            raise ProbeInterrupted(f"{self.url}: the image was interrupted on the server")
        used_name, used_hash = info.get("sd_model_name"), info.get("sd_model_hash")
        wrong_name = used_name and str(used_name).lower() not in model.names()
        if wrong_name or (used_hash and model.hash and str(used_hash) != model.hash):
            # A1111 renders with the loaded model when a checkpoint override cannot be used.
            raise CheckpointLoadError(
                f"{self.url} rendered with {used_name} [{used_hash}] instead of {model.title}: "
                "it did not load"
            )
        # The API's base64 PNG, read as the script reads an uploaded one (with the pixel limit).
        image = decode_image(str(response["images"][0]), what=f"{self.url} image")
        if image is None:
            raise _bad(self.url, "/sdapi/v1/txt2img", response, "an empty image in the answer")
        image = image.convert("RGB") if image.mode != "RGB" else image
        infotexts = info.get("infotexts") or [""]
        settings = {"VAE in use": str(info.get("sd_vae_name") or "from the checkpoint")}
        if info.get("version"):
            settings["Version"] = str(info["version"])
        if used_hash:
            settings["Model hash"] = str(used_hash)
        return Generated(image=image, infotext=str(infotexts[0] or ""), settings=settings)

    def _server_state(self) -> dict[str, Any]:
        try:
            answer = self.client.get("/sdapi/v1/progress?skip_current_image=true")
        except RemoteError:
            return {}
        state = answer.get("state") if isinstance(answer, dict) else None
        return state if isinstance(state, dict) else {}

    # -- the Host protocol's rest ------------------------------------------------------------------

    def progress(self, done: int, total: int, job: str) -> None:
        log.info("%s: %s (%d/%d)", self.url, job, done, total)

    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    def interrupt(self) -> None:
        """Stop the run: the server's current image is interrupted (and dropped here)."""
        self._interrupted.set()
        try:
            self.client.post("/sdapi/v1/interrupt", {}, timeout=min(10.0, self.client.query_timeout))
        except RemoteError as exc:
            log.warning("could not interrupt %s: %s", self.url, exc.reason)

    def precision(self) -> str:
        parts = []
        for flag in PRECISION_FLAGS:
            value = self.flags.get(flag)
            if value not in (None, False, ""):
                parts.append(f"--{flag.replace('_', '-')}" + ("" if value is True else f"={value}"))
        return ", ".join(parts) or "default"

    def environment(self) -> dict[str, str]:
        """What changes pixels and is recorded, not forced — as the in-process script records it."""
        env = {"WebUI": self.webui_name, "Version": self.version or "unknown"}
        env.update(recorded_values(self.options))
        env["Precision"] = self.precision()
        env["Always-on scripts"] = ALWAYS_ON
        env[COND_ONLY_KEY] = "Forge" if self.is_forge else "off"
        env["cfgsim"] = cfgsim_version
        return env

    # -- putting things back -----------------------------------------------------------------------

    def touched(self) -> list[str]:
        keys = [CHECKPOINT_OPTION, *forced_overrides(_ANY_SPEC, self.options)]
        return [k for k in keys if k in (self.options_before or {})]

    def restore(self) -> dict[str, Any]:
        """Put back every option this host overrode that the server did not put back itself; returns
        {key: value restored}. Only keys whose value differs from the one read at connect() are
        written: a server that restored everything is not touched."""
        before = self.options_before
        if before is None:
            return {}
        now = self.client.get("/sdapi/v1/options")
        if not isinstance(now, dict):
            raise _bad(self.url, "/sdapi/v1/options", now)
        fix = {k: before[k] for k in self.touched() if now.get(k) != before[k] and before[k] is not None}
        if fix:
            self.client.post("/sdapi/v1/options", fix)
            log.info("%s: put back %s", self.url, ", ".join(f"{k}={v!r}" for k, v in fix.items()))
        return fix


_ANY_SPEC = ProbeSpec()


def _bad(url: str, path: str, value: Any, what: str = "unexpected answer") -> RemoteError:
    from cfgsim.remote.client import BadResponse

    return BadResponse(url, f"{path}: {what}: {str(value)[:120]!r}")


def describe_models(models: Sequence[ServerModel], limit: int = 12) -> str:
    names = [m.model_name for m in models]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "no checkpoints"
