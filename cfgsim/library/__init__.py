"""The probe library: every probe image ever made, kept once, shared by every host.

A probe cell is fully determined by the checkpoint's *content* (its full sha256), everything that
changes pixels (the spec without its seeds, the host, the host's environment: VAE, RNG source,
precision, host version, cond-only) and the seed. The library keeps each cell under exactly that
key, so a re-run of the same probe loads no checkpoint and generates nothing, adding a checkpoint
to a probed set generates only its cells, and "compare with everything probed before" is one query.

- :func:`settings_key` — the hex digest of the canonical settings JSON (seeds left out).
- :class:`ProbeLibrary` — the store (:mod:`cfgsim.library.store`): ``identity``, ``lookup``,
  ``store``, ``checkpoints``; management in :mod:`cfgsim.library.manage`.
- :func:`open_library` — the library a command or the WebUI uses, or None (with a warning) when
  its folder cannot be used: the probe then runs uncached.

Where: ``--library DIR``, else ``$CFGSIM_LIBRARY``, else the cfgsim cache folder
(``$CFGSIM_CACHE_DIR/library``, ``$XDG_CACHE_HOME/cfgsim/library`` or ``~/.cache/cfgsim/library``)
for the command line, and ``<WebUI data dir>/cfgsim-library`` for the extension.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfgsim.host import cache_folder
from cfgsim.library.store import KNOWN_SETTINGS, Entry, LibraryError, ProbeLibrary

if TYPE_CHECKING:
    from cfgsim.spec import ProbeSpec

__all__ = [
    "Entry",
    "LibraryError",
    "ProbeLibrary",
    "default_library_dir",
    "open_library",
    "settings_document",
    "settings_key",
]

log = logging.getLogger("cfgsim.library")

ENV_VAR = "CFGSIM_LIBRARY"
WEBUI_FOLDER = "cfgsim-library"
KEY_VERSION = 1


def settings_document(spec: ProbeSpec, host_name: str, environment: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that changes a probe image's pixels but the seed, as plain JSON data.

    The spec's fields (the quick-preview override only when it differs from ``steps``), the host's
    name and its environment (values as text, keys sorted when serialised).
    """
    fields = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "sampler": spec.sampler,
        "scheduler": spec.scheduler,
        "steps": int(spec.steps),
        "steps_override": None if spec.is_probe else int(spec.effective_steps),
        "cfg_scale": float(spec.cfg_scale),
        "width": int(spec.width),
        "height": int(spec.height),
        "clip_skip": int(spec.clip_skip),
        "extra": [[str(k), str(v)] for k, v in spec.extra],
    }
    return {
        "version": KEY_VERSION,
        "spec": fields,
        "host": str(host_name),
        "environment": {str(k): str(v) for k, v in environment.items()},
    }


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def settings_key(spec: ProbeSpec, host_name: str, environment: Mapping[str, Any]) -> str:
    """The sha256 hex digest of :func:`settings_document`'s canonical JSON (the JSON is kept for the
    index, so ``cfgsim library show`` can print it)."""
    text = canonical_json(settings_document(spec, host_name, environment))
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    KNOWN_SETTINGS[key] = (str(host_name), text)
    return key


def default_library_dir(
    *, kind: str = "cli", webui_data_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """``$CFGSIM_LIBRARY``, else for the command line ``<cache folder>/library``, for the WebUI
    extension ``<data dir>/cfgsim-library`` (None when the WebUI's data dir is not known)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    if kind == "webui":
        return Path(webui_data_dir) / WEBUI_FOLDER if webui_data_dir else None
    return Path(cache_folder()) / "library"


def open_library(
    path: str | os.PathLike[str] | None = None,
    *,
    kind: str = "cli",
    webui_data_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> ProbeLibrary | None:
    """The library at ``path`` (default: :func:`default_library_dir`), created if needed.

    None, with a warning naming the folder and the reason, when it cannot be used (an unwritable
    folder, an index of a newer cfgsim, a locked index that cannot be created): the probe then runs
    uncached. A damaged index is rebuilt from the images (noted in the library's ``notes``).
    """
    if kind not in ("cli", "webui"):
        raise ValueError(f"kind {kind!r}: use 'cli' or 'webui'")
    root = Path(path).expanduser() if path else default_library_dir(kind=kind, webui_data_dir=webui_data_dir)
    if root is None:
        log.info("cfgsim: probe library: the WebUI's data folder is not known; running uncached")
        return None
    try:
        return ProbeLibrary(root, **({"timeout": timeout} if timeout is not None else {}))
    except LibraryError as exc:
        log.warning("cfgsim: probe library not used, the probe runs uncached: %s", exc)
        return None
