"""The probe library's store: an SQLite index (WAL) and content-addressed PNG cells.

Layout of a library folder::

    index.sqlite3        one row per cell (checkpoint sha256, settings key, seed → PNG sha256),
                         per checkpoint (name, label, legacy hash, architecture, file, first/last
                         seen) and per settings key (the canonical settings JSON)
    cells/ab/abcd….png   each image once, named by the sha256 of its bytes; it carries its own
                         infotext (``parameters``, as the WebUI writes it) and, in a
                         ``cfgsim-library`` text chunk, its index row (so a damaged index is rebuilt
                         from the images)
    hashes.json          full-file sha256 of checkpoints whose host did not know it (path+size+mtime)

Every lookup is verified (the file exists, its bytes hash to the name the index gives, it decodes);
a damaged cell is deleted, noted ("regenerated: …") and reported as a miss so the run makes it
again. Writes go to a temporary name, then ``os.replace``, inside one ``BEGIN IMMEDIATE``
transaction, so concurrent processes and threads never see half a cell. A store never raises for
a full disk, a read-only folder or a locked index: it warns once, stops storing for this run and
returns False.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, Generated, HashCache
from cfgsim.metadata.atomic import _new_file_mode

log = logging.getLogger("cfgsim.library")

SCHEMA_VERSION = 1
INDEX_NAME = "index.sqlite3"
CELLS_DIR = "cells"
HASHES_NAME = "hashes.json"
PNG_KEY = "cfgsim-library"
DEFAULT_TIMEOUT = 3.0  # seconds a locked index is waited for before a store gives up
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Canonical settings JSON by key, filled by cfgsim.library.settings_key: store() records it.
KNOWN_SETTINGS: dict[str, tuple[str, str]] = {}


class LibraryError(InputError):
    """The library folder or its index cannot be used; the message names the file and the reason."""


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Entry:
    """A checkpoint the library holds images of (under one settings key, or all of them)."""

    sha256: str
    name: str
    label: str
    model_hash: str | None
    architecture: str
    file: str | None = None
    seeds: tuple[int, ...] = ()
    first_seen: float = 0.0
    last_seen: float = 0.0


class ProbeLibrary:
    """A library folder (see the module docstring). ``create=False`` opens an existing one only.

    Raises :class:`LibraryError` when the folder cannot be created or written (``create=True``),
    or the index was written by a newer cfgsim. A damaged index is moved aside and rebuilt from
    the images. ``notes`` collects what was repaired; ``write_error`` says why storing stopped.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT, create: bool = True
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.timeout = timeout
        self.index_path = self.root / INDEX_NAME
        self.cells_dir = self.root / CELLS_DIR
        self.notes: list[str] = []
        self.write_error = ""
        self.stored = 0
        self._writable = True
        self._warned_read = False
        self._hash_lock = threading.Lock()
        self._hashes = HashCache(self.root / HASHES_NAME)
        if not create and not self.index_path.is_file():
            raise LibraryError(f"{self.root}: no probe library here (no {INDEX_NAME}; nothing was stored)")
        if create:
            try:
                self.cells_dir.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=self.root):
                    pass
            except OSError as exc:
                raise LibraryError(
                    f"{self.root}: cannot write the probe library there ({reason(exc)})"
                ) from None
        self._open_index()

    def __repr__(self) -> str:
        return f"ProbeLibrary({str(self.root)!r})"

    # -- the index -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own (autocommit; ``BEGIN IMMEDIATE`` for writes), closed afterwards."""
        con = sqlite3.connect(
            str(self.index_path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            con.execute("PRAGMA synchronous=NORMAL")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _open_index(self) -> None:
        from cfgsim.library.index import open_index

        open_index(self)

    def reindex(self) -> int:
        """Index every stored image again from its own chunk (see :func:`cfgsim.library.index.reindex`)."""
        from cfgsim.library.index import reindex

        return reindex(self)

    def identity(self, checkpoint: Checkpoint, file: str | None) -> str | None:
        """The checkpoint's full content sha256: the host's when it knows it, else the file's
        (hashed once, cached by path, size and mtime); None when there is no readable file."""
        known = (checkpoint.sha256 or "").strip().lower()
        if _SHA256.fullmatch(known):
            return known
        path = file or checkpoint.file
        if not path:
            return None
        try:
            with self._hash_lock:
                return self._hashes.hashes(path).sha256
        except OSError:
            return None

    def png_path(self, png: str) -> Path:
        return self.cells_dir / png[:2] / f"{png}.png"

    def lookup(self, identity: str, key: str, seed: int) -> Generated | None:
        """The stored image of (checkpoint, settings, seed), verified; None when there is none."""
        try:
            with self.connect() as con:
                row = con.execute(
                    "SELECT png, infotext, generated FROM cells WHERE sha256=? AND key=? AND seed=?",
                    (identity, key, int(seed)),
                ).fetchone()
        except sqlite3.Error as exc:
            if not self._warned_read:
                self._warned_read = True
                log.warning("cfgsim: probe library %s: cannot read the index (%s)", self.root, reason(exc))
            return None
        if row is None:
            return None
        png, infotext, generated = row
        path = self.png_path(png)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problem = "the image file is missing"
        except OSError as exc:
            log.warning("cfgsim: probe library: %s: cannot be read (%s)", path, reason(exc))
            return None
        else:
            if hashlib.sha256(data).hexdigest() != png:
                problem = "the image file is damaged (its sha256 does not match the index)"
            else:
                try:
                    image = Image.open(io.BytesIO(data))
                    image.load()
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                    problem = f"the image does not decode ({exc})"
                else:
                    image.info.pop(PNG_KEY, None)
                    image.info.pop("parameters", None)
                    try:
                        settings = {str(k): str(v) for k, v in json.loads(generated).items()}
                    except (ValueError, AttributeError):
                        settings = {}
                    return Generated(image=image, infotext=infotext, settings=settings)
        self._drop(identity, key, int(seed), png, f"{problem}: {path}")
        return None

    def _drop(self, identity: str, key: str, seed: int, png: str, problem: str) -> None:
        label = identity[:10]
        try:
            with self.transaction() as con:
                found = con.execute("SELECT label FROM checkpoints WHERE sha256=?", (identity,)).fetchone()
                label = found[0] if found else label
                con.execute(
                    "DELETE FROM cells WHERE sha256=? AND key=? AND seed=? AND png=?",
                    (identity, key, seed, png),
                )
                orphan = con.execute("SELECT 1 FROM cells WHERE png=? LIMIT 1", (png,)).fetchone() is None
                if orphan:
                    with contextlib.suppress(OSError):
                        os.unlink(self.png_path(png))
        except sqlite3.Error:
            pass  # a locked or read-only index: the damaged cell stays; it is regenerated anyway
        note = f"regenerated: {label} seed {seed}: {problem}"
        self.notes.append(note)
        log.warning("cfgsim: probe library: %s", note)

    def store(
        self, identity: str, key: str, seed: int, generated: Generated, *, checkpoint: Checkpoint
    ) -> bool:
        """Keep one image (atomic file, then its index row); False when nothing was stored."""
        if not self._writable:
            return False
        host, settings = KNOWN_SETTINGS.get(key, ("", ""))
        now = time.time()
        ck = {
            "name": checkpoint.name,
            "label": checkpoint.label,
            "model_hash": checkpoint.model_hash,
            "architecture": checkpoint.architecture,
            "file": checkpoint.file,
        }
        row = {"sha256": identity, "key": key, "seed": int(seed), "checkpoint": ck, "host": host,
               "settings": settings, "generated": dict(generated.settings), "created": now}  # fmt: skip
        try:
            info = PngImagePlugin.PngInfo()
            if generated.infotext:
                info.add_text("parameters", generated.infotext)
            info.add_text(PNG_KEY, json.dumps(row, sort_keys=True))
            buffer = io.BytesIO()
            generated.image.save(buffer, format="PNG", pnginfo=info)
            data = buffer.getvalue()
        except (OSError, ValueError, TypeError) as exc:
            log.warning(
                "cfgsim: probe library: %s seed %s not stored: %s", checkpoint.label, seed, reason(exc)
            )
            return False
        png = hashlib.sha256(data).hexdigest()
        from cfgsim.library import index

        try:
            with self.transaction() as con:
                old = con.execute(
                    "SELECT png FROM cells WHERE sha256=? AND key=? AND seed=?", (identity, key, int(seed))
                ).fetchone()
                _atomic_write(self.png_path(png), data)
                con.execute(
                    "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?)",
                    (identity, key, int(seed), png, len(data), generated.infotext,
                     json.dumps(dict(generated.settings), sort_keys=True), now),
                )  # fmt: skip
                index.upsert_checkpoint(con, identity, ck, now)
                if settings:
                    con.execute("INSERT OR IGNORE INTO settings VALUES (?,?,?,?)", (key, host, settings, now))
                stale = old[0] if old and old[0] != png else None
                if stale and con.execute("SELECT 1 FROM cells WHERE png=? LIMIT 1", (stale,)).fetchone():
                    stale = None
        except (OSError, sqlite3.Error) as exc:
            self._write_failed(exc)
            return False
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(self.png_path(stale))
        self.stored += 1
        return True

    def _write_failed(self, exc: BaseException) -> None:
        self._writable = False
        self.write_error = reason(exc)
        log.warning(
            "cfgsim: probe library %s: cannot store images (%s); the rest of this run is not cached",
            self.root,
            self.write_error,
        )

    def checkpoints(self, key: str | None = None) -> list[Entry]:
        """Every checkpoint with images under ``key`` (None: under any key), first seen first."""
        where, args = ("WHERE c.key = ?", (key,)) if key is not None else ("", ())
        try:
            with self.connect() as con:
                rows = con.execute(
                    "SELECT k.sha256, k.name, k.label, k.model_hash, k.architecture, k.file, "
                    "group_concat(DISTINCT c.seed), k.first_seen, k.last_seen FROM cells c "
                    f"JOIN checkpoints k ON k.sha256 = c.sha256 {where} "
                    "GROUP BY k.sha256 ORDER BY k.first_seen, k.label",
                    args,
                ).fetchall()
        except sqlite3.Error as exc:
            log.warning("cfgsim: probe library %s: cannot read the index (%s)", self.root, reason(exc))
            return []
        out = []
        for sha256, name, label, model_hash, architecture, file, held, first, last in rows:
            seeds = tuple(sorted(int(s) for s in str(held).split(",")))
            out.append(Entry(sha256, name, label, model_hash, architecture, file, seeds, first, last))
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    """``data`` into ``path`` under a temporary name in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cell-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        with contextlib.suppress(OSError):
            os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
