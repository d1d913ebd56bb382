"""Managing a probe library: list, show, remove, export, clear, size.

Checkpoints are selected by label, name (the host's handle: a file path, a WebUI title) or a
prefix of their sha256 (at least 6 hex digits); a selector that matches none or several is an
error that says which exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cfgsim.library.store import CELLS_DIR, INDEX_NAME, LibraryError, ProbeLibrary, reason

MIN_PREFIX = 6


@dataclass(frozen=True)
class Held:
    """One checkpoint in the library with what it holds (all settings together)."""

    sha256: str
    name: str
    label: str
    model_hash: str | None
    architecture: str
    file: str | None
    seeds: int
    settings: int
    images: int
    bytes: int
    first_seen: float
    last_seen: float


def _read(library: ProbeLibrary, sql: str, args: tuple = ()) -> list[tuple]:
    try:
        with library.connect() as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise LibraryError(f"{library.index_path}: cannot be read ({reason(exc)})") from None


def held(library: ProbeLibrary) -> list[Held]:
    """Every checkpoint with at least one image, first seen first."""
    rows = _read(
        library,
        "SELECT k.sha256, k.name, k.label, k.model_hash, k.architecture, k.file, count(DISTINCT c.seed), "
        "count(DISTINCT c.key), count(*), sum(c.bytes), k.first_seen, k.last_seen FROM cells c "
        "JOIN checkpoints k ON k.sha256 = c.sha256 GROUP BY k.sha256 ORDER BY k.first_seen, k.label",
    )
    return [Held(*row) for row in rows]


def select(library: ProbeLibrary, selector: str) -> Held:
    """The one checkpoint ``selector`` names (label, name, or sha256 prefix)."""
    wanted = selector.strip()
    everything = held(library)
    for exact in (
        [h for h in everything if wanted in (h.label, h.name)],
        [h for h in everything if wanted.lower() == h.sha256],
    ):
        if len(exact) == 1:
            return exact[0]
    matches = [h for h in everything if wanted in (h.label, h.name)]
    if not matches and re.fullmatch(r"[0-9a-fA-F]+", wanted):
        if len(wanted) < MIN_PREFIX:
            raise LibraryError(f"{selector!r}: a sha256 prefix needs at least {MIN_PREFIX} hex digits")
        matches = [h for h in everything if h.sha256.startswith(wanted.lower())]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(f"{h.label} ({h.sha256[:10]})" for h in everything[:20]) or "it is empty"
        raise LibraryError(f"{selector!r}: no such checkpoint in the library {library.root} ({known})")
    names = ", ".join(f"{h.label} ({h.sha256[:10]})" for h in matches)
    raise LibraryError(f"{selector!r} matches {len(matches)} checkpoints: {names}; give a sha256 prefix")


def cells_of(library: ProbeLibrary, sha256: str | None = None) -> list[dict]:
    """The cells of one checkpoint (None: of all), with their settings JSON, by settings and seed."""
    where, args = ("WHERE c.sha256 = ?", (sha256,)) if sha256 else ("", ())
    rows = _read(
        library,
        "SELECT c.sha256, c.key, c.seed, c.png, c.bytes, c.infotext, c.created, s.host, s.json, "
        "k.label, k.name "
        f"FROM cells c LEFT JOIN settings s ON s.key = c.key LEFT JOIN checkpoints k ON k.sha256 = c.sha256 "
        f"{where} ORDER BY k.first_seen, c.sha256, s.first_seen, c.key, c.seed",
        args,
    )
    names = [
        "sha256",
        "key",
        "seed",
        "png",
        "bytes",
        "infotext",
        "created",
        "host",
        "settings",
        "label",
        "name",
    ]
    return [dict(zip(names, row, strict=True)) for row in rows]


def show(library: ProbeLibrary, selector: str) -> str:
    """One checkpoint as text: identity, its cells per settings key, and each settings JSON."""
    h = select(library, selector)
    lines = [
        f"{h.label}",
        f"  sha256        {h.sha256}",
        f"  name          {h.name}",
        f"  model hash    {h.model_hash or 'unknown'}",
        f"  architecture  {h.architecture}",
        f"  file          {h.file or 'unknown'}",
        f"  images        {h.images} ({format_size(h.bytes)}), {h.seeds} seed(s) under "
        f"{h.settings} setting(s)",
    ]
    by_key: dict[str, list[dict]] = {}
    for cell in cells_of(library, h.sha256):
        by_key.setdefault(cell["key"], []).append(cell)
    for key, cells in by_key.items():
        seeds = ", ".join(str(c["seed"]) for c in cells)
        lines.append(f"  settings {key[:16]} ({cells[0]['host'] or 'host unknown'}): seeds {seeds}")
        text = cells[0]["settings"]
        if text:
            lines.extend("    " + line for line in json.dumps(json.loads(text), indent=2).splitlines())
    return "\n".join(lines)


def _unlink_unreferenced(library: ProbeLibrary, con: sqlite3.Connection, pngs: set[str]) -> None:
    for png in pngs:
        if con.execute("SELECT 1 FROM cells WHERE png=? LIMIT 1", (png,)).fetchone() is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(library.png_path(png))


def remove(library: ProbeLibrary, selector: str) -> tuple[Held, int]:
    """Delete one checkpoint's images and rows; returns it and the number of images removed."""
    h = select(library, selector)
    try:
        with library.transaction() as con:
            pngs = {r[0] for r in con.execute("SELECT png FROM cells WHERE sha256=?", (h.sha256,))}
            count = con.execute("DELETE FROM cells WHERE sha256=?", (h.sha256,)).rowcount
            con.execute("DELETE FROM checkpoints WHERE sha256=?", (h.sha256,))
            _unlink_unreferenced(library, con, pngs)
    except (OSError, sqlite3.Error) as exc:
        raise LibraryError(f"{library.index_path}: cannot remove {h.label} ({reason(exc)})") from None
    return h, count


def clear(library: ProbeLibrary) -> tuple[int, int]:
    """Delete every image and row; returns (images, bytes) removed."""
    try:
        with library.transaction() as con:
            images, size = con.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM cells").fetchone()
            for table in ("cells", "checkpoints", "settings"):
                con.execute(f"DELETE FROM {table}")  # fixed table names
            shutil.rmtree(library.cells_dir, ignore_errors=True)
            library.cells_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, sqlite3.Error) as exc:
        raise LibraryError(f"{library.index_path}: cannot clear the library ({reason(exc)})") from None
    return int(images), int(size)


def export(library: ProbeLibrary, out_dir: str | os.PathLike[str], selector: str | None = None) -> Path:
    """Copy the PNGs (each with its infotext) into ``out_dir`` with a ``manifest.json``; returns it.

    Files are named ``<label>-<settings key[:8]>-<seed>.png``; the manifest lists each file with its
    checkpoint (sha256, name, label), settings key and settings, seed and the PNG's sha256.
    """
    sha = select(library, selector).sha256 if selector else None
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LibraryError(f"{out}: cannot create the export folder ({reason(exc)})") from None
    entries = []
    for cell in cells_of(library, sha):
        label = re.sub(r"[^\w.+-]+", "_", cell["label"] or cell["sha256"][:10]).strip("_") or "checkpoint"
        name = f"{label}-{cell['sha256'][:8]}-{cell['key'][:8]}-{cell['seed']}.png"
        source = library.png_path(cell["png"])
        try:
            shutil.copyfile(source, out / name)
        except FileNotFoundError:
            continue  # a cell whose file is gone: the next probe regenerates it
        except OSError as exc:
            raise LibraryError(f"{out / name}: cannot write ({reason(exc)})") from None
        settings = json.loads(cell["settings"]) if cell["settings"] else None
        entries.append(
            {"file": name, "sha256": cell["sha256"], "label": cell["label"], "name": cell["name"],
             "settings_key": cell["key"], "host": cell["host"], "settings": settings,
             "seed": cell["seed"], "png_sha256": cell["png"], "infotext": cell["infotext"]}
        )  # fmt: skip
    manifest = out / "manifest.json"
    document = {"library": str(library.root), "images": entries}
    try:
        manifest.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise LibraryError(f"{manifest}: cannot write ({reason(exc)})") from None
    return manifest


def total_size(root: str | os.PathLike[str]) -> int:
    """Bytes the library folder takes (index and images), without opening or creating anything."""
    root = Path(root)
    size = 0
    for name in (INDEX_NAME, f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm"):
        with contextlib.suppress(OSError):
            size += (root / name).stat().st_size
    for folder, _dirs, files in os.walk(root / CELLS_DIR):
        for file in files:
            with contextlib.suppress(OSError):
                size += os.stat(os.path.join(folder, file)).st_size
    return size


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def listing(library: ProbeLibrary) -> str:
    """``cfgsim library list``: one line per checkpoint, then the totals."""
    rows = held(library)
    lines = [f"probe library {library.root}"]
    if rows:
        width = max([len("checkpoint")] + [len(h.label) for h in rows])
        lines.append(f"  {'checkpoint':<{width}}  sha256      seeds  settings  images  size")
        for h in rows:
            lines.append(
                f"  {h.label:<{width}}  {h.sha256[:10]}  {h.seeds:>5}  {h.settings:>8}  {h.images:>6}  "
                f"{format_size(h.bytes)}"
            )
    images = sum(h.images for h in rows)
    lines.append(
        f"{len(rows)} checkpoint(s), {images} image(s), {format_size(total_size(library.root))} on disk"
    )
    return "\n".join(lines)
