"""The probe library's SQLite index: schema, opening (and rebuilding a damaged one), re-indexing.

The index is a cache of what the images say about themselves: each stored PNG carries its row in a
``cfgsim-library`` text chunk, so a damaged index (not a database, failed integrity check) is moved
aside and rebuilt from the images. An index written by a newer cfgsim is refused with a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING

from PIL import Image

from cfgsim.library.store import INDEX_NAME, PNG_KEY, SCHEMA_VERSION, LibraryError, reason

if TYPE_CHECKING:
    from cfgsim.library.store import ProbeLibrary

log = logging.getLogger("cfgsim.library")

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, label TEXT NOT NULL, model_hash TEXT,
    architecture TEXT NOT NULL, file TEXT, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY, host TEXT NOT NULL, json TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    sha256 TEXT NOT NULL, key TEXT NOT NULL, seed INTEGER NOT NULL, png TEXT NOT NULL,
    bytes INTEGER NOT NULL, infotext TEXT NOT NULL, generated TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (sha256, key, seed));
CREATE INDEX IF NOT EXISTS cells_by_key ON cells (key, sha256);
CREATE INDEX IF NOT EXISTS cells_by_png ON cells (png);
"""


def upsert_checkpoint(con: sqlite3.Connection, identity: str, ck: dict, now: float) -> None:
    con.execute(
        "INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET "
        "name=excluded.name, label=excluded.label, model_hash=coalesce(excluded.model_hash, model_hash), "
        "architecture=excluded.architecture, file=coalesce(excluded.file, file), "
        "first_seen=min(first_seen, excluded.first_seen), last_seen=max(last_seen, excluded.last_seen)",
        (identity, str(ck.get("name") or identity[:10]), str(ck.get("label") or ck.get("name") or ""),
         ck.get("model_hash"), str(ck.get("architecture") or "unknown"), ck.get("file"), now, now),
    )  # fmt: skip


def open_index(library: ProbeLibrary) -> None:
    """Create the index, or check an existing one (a damaged one is rebuilt)."""
    try:
        _check_index(library)
    except sqlite3.OperationalError as exc:
        raise LibraryError(f"{library.index_path}: cannot open the index ({reason(exc)})") from None
    except sqlite3.DatabaseError as exc:  # not a database, malformed: rebuild from the images
        _rebuild(library, reason(exc))


def _check_index(library: ProbeLibrary) -> None:
    with library.connect() as con:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LibraryError(
                f"{library.index_path}: written by a newer cfgsim (index version {version}; this one "
                f"reads version {SCHEMA_VERSION}): use another library folder or upgrade cfgsim"
            )
        if version == 0:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        else:
            check = con.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")


def _rebuild(library: ProbeLibrary, why: str) -> None:
    """Move a damaged index aside and index the stored images again (their ``cfgsim-library``
    chunk holds the row)."""
    aside = library.index_path.with_name(f"{INDEX_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(library.index_path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{library.index_path}{suffix}")
        _check_index(library)
        count = reindex(library)
    except (OSError, sqlite3.Error) as exc:
        raise LibraryError(
            f"{library.index_path}: the index is damaged ({why}) and could not be rebuilt ({reason(exc)})"
        ) from None
    note = (
        f"{library.index_path}: the index was damaged ({why}); moved to {aside.name}, "
        f"rebuilt from {count} image(s)"
    )
    library.notes.append(note)
    log.warning("cfgsim: probe library: %s", note)


def reindex(library: ProbeLibrary) -> int:
    """Add every stored image whose own chunk names its cell to the index; returns the count."""
    count = 0
    for path in sorted(library.cells_dir.glob("*/*.png")):
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != path.stem:
                continue
            with Image.open(io.BytesIO(data)) as image:
                text = getattr(image, "text", {}) or {}
                row = json.loads(text[PNG_KEY])
                infotext = text.get("parameters", "")
            _insert(library, row, path.stem, len(data), infotext)
            count += 1
        except (OSError, KeyError, ValueError, TypeError, SyntaxError, sqlite3.IntegrityError):
            continue
    return count


def _insert(library: ProbeLibrary, row: dict, png: str, size: int, infotext: str) -> None:
    ck, now = row["checkpoint"], float(row.get("created") or time.time())
    with library.transaction() as con:
        con.execute(
            "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?)",
            (row["sha256"], row["key"], int(row["seed"]), png, size, infotext,
             json.dumps(row.get("generated") or {}), now),
        )  # fmt: skip
        upsert_checkpoint(con, row["sha256"], ck, now)
        if row.get("settings"):
            con.execute(
                "INSERT OR IGNORE INTO settings VALUES (?,?,?,?)",
                (row["key"], str(row.get("host") or ""), row["settings"], now),
            )


# -- what the run loop calls -----------------------------------------------------------------
