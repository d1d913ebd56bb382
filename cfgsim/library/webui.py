"""The probe library inside the WebUI extension, without the WebUI: where it is, its size, clearing.

The folder is the ``cfgsim_library_dir`` setting, else ``$CFGSIM_LIBRARY``, else
``<data dir>/cfgsim-library`` — the WebUI's data folder (``--data-dir``: ``shared.cmd_opts.data_dir``,
the same as ``modules.paths_internal.data_path``). The ``cfgsim_library`` setting turns it off.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

from cfgsim.library import default_library_dir, open_library
from cfgsim.library.store import INDEX_NAME, LibraryError, ProbeLibrary

log = logging.getLogger("cfgsim.library")


def data_dir(shared: Any, paths_internal: Any = None) -> str | None:
    """The WebUI's data folder: ``cmd_opts.data_dir``, else ``paths_internal.data_path``; None if neither."""
    value = getattr(getattr(shared, "cmd_opts", None), "data_dir", None)
    if not value and paths_internal is not None:
        value = getattr(paths_internal, "data_path", None)
    return str(value) if value else None


def library_root(folder: str, data: str | None) -> Path | None:
    """The library folder from the folder setting (empty: the default) and the data folder."""
    if folder:
        return Path(folder).expanduser()
    return default_library_dir(kind="webui", webui_data_dir=data)


def library_for_run(enabled: bool, folder: str, data: str | None) -> ProbeLibrary | None:
    """The library a probe run uses: None when it is off or cannot be used (with a warning)."""
    if not enabled:
        return None
    root = library_root(folder, data)
    if root is None:
        log.warning("cfgsim: probe library: the WebUI's data folder is not known: the probe runs uncached")
        return None
    return open_library(root, kind="webui")


def size_text(enabled: bool, folder: str, data: str | None) -> str:
    """One line for the script panel: where the library is and how large (reads, creates nothing)."""
    from cfgsim.library.manage import format_size, total_size

    if not enabled:
        return "Probe library: off (Settings → CFG similarity)"
    root = library_root(folder, data)
    if root is None:
        return "Probe library: the WebUI's data folder is not known"
    if not (root / INDEX_NAME).is_file():
        return f"Probe library: empty ({root})"
    images = sum(len(files) for _dir, _sub, files in os.walk(root / "cells"))
    return f"Probe library: {images} image(s), {format_size(total_size(root))} ({root})"


def size_html(enabled: bool, folder: str, data: str | None) -> str:
    text = size_text(enabled, folder, data)
    return f'<p class="cfgsim-library-size" id="cfgsim_library_size">{html.escape(text)}</p>'


def clear_library(enabled: bool, folder: str, data: str | None) -> str:
    """The "Clear library" button: empty the library; returns the new size line (or the error) as HTML."""
    from cfgsim.library.manage import clear, format_size

    root = library_root(folder, data)
    if root is None or not (root / INDEX_NAME).is_file():
        return size_html(enabled, folder, data)
    try:
        images, size = clear(ProbeLibrary(root, create=False))
    except LibraryError as exc:
        return f'<p class="cfgsim-library-size cfgsim-error">{html.escape(str(exc))}</p>'
    log.info("cfgsim: probe library %s cleared: %d image(s), %s", root, images, format_size(size))
    return size_html(enabled, folder, data)


def panel_html(shared: Any, paths_internal: Any = None, *, clear: bool = False) -> str:
    """The script panel's library line from the WebUI's settings and data folder (reads only, so
    ``ui()`` stays free of side effects); ``clear``: empty the library first (its button)."""
    from cfgsim.webui.settings import library_dir, library_enabled

    opts = getattr(shared, "opts", None)
    where = (library_enabled(opts), library_dir(opts), data_dir(shared, paths_internal))
    return clear_library(*where) if clear else size_html(*where)
