"""The resume file of a chunked comparison: finished blocks in an SQLite database (stdlib sqlite3).

One file can hold several runs. A run is keyed by a SHA-256 over what determines its numbers: the
metric and its settings, the block size, and the identities of the row items and the column items
in order (see :mod:`cfgsim.scale.sources`). A run with other items, other settings or another block
size therefore never reads a block it did not compute: it starts its own blocks.

Each finished block is written in its own transaction (``with conn:``), so an interruption — Ctrl-C,
a crash, a killed process — loses at most the block being computed; the next run with the same key
loads the finished ones and computes only the rest. Values are float64 in native byte order with
the block's shape beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cfgsim.errors import InputError

__all__ = ["BlockStore", "run_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT NOT NULL,
    bi INTEGER NOT NULL,
    bj INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (key, bi, bj)
);
"""


def run_key(settings: dict[str, Any], rows: Sequence[str], cols: Sequence[str] | None, block: int) -> str:
    """The run's key: SHA-256 (hex) of the settings, block size and item identities.

    ``cols`` None is the symmetric matrix of ``rows`` against themselves."""
    h = hashlib.sha256()
    head = {"schema": "cfgsim.scale.blocks/1", "settings": settings, "block": block}
    h.update(json.dumps(head, sort_keys=True).encode())
    for tag, items in (("rows", rows), ("cols", cols)):
        h.update(f"\0{tag}:{'symmetric' if items is None else len(items)}\0".encode())
        for identity in items or ():
            h.update(identity.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


class BlockStore:
    """Finished blocks of one run in an SQLite file; a context manager that closes it."""

    def __init__(self, path: str | os.PathLike[str], key: str, description: dict[str, Any]) -> None:
        self.path, self.key = Path(path), key
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a folder; the state must be a file")
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: its folder {self.path.parent} does not exist")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.executescript(_SCHEMA)
            with self.conn:
                self.conn.execute(
                    "INSERT OR IGNORE INTO runs (key, created, description) VALUES (?, ?, ?)",
                    (key, time.time(), json.dumps(description, sort_keys=True)),
                )
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: not a usable cfgsim state file (SQLite: {exc})") from None

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def done(self) -> set[tuple[int, int]]:
        """The (bi, bj) of the blocks already finished."""
        cur = self.conn.execute("SELECT bi, bj FROM blocks WHERE key = ?", (self.key,))
        return {(int(bi), int(bj)) for bi, bj in cur}

    def blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """The finished blocks, one at a time (the whole matrix is never read into memory)."""
        cur = self.conn.execute("SELECT bi, bj, rows, cols, data FROM blocks WHERE key = ?", (self.key,))
        for bi, bj, rows, cols, data in cur:
            values = np.frombuffer(data, dtype=np.float64)
            if values.size != rows * cols:
                raise InputError(f"{self.path}: block ({bi}, {bj}) is damaged ({values.size} values)")
            yield int(bi), int(bj), values.reshape(rows, cols)

    def put(self, bi: int, bj: int, values: np.ndarray) -> None:
        """Store one finished block, in its own transaction."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO blocks (key, bi, bj, rows, cols, data) VALUES (?, ?, ?, ?, ?, ?)",
                (self.key, bi, bj, values.shape[0], values.shape[1], values.tobytes()),
            )
