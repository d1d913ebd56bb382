"""Output paths checked before anything is written, so a late failure never leaves half a result."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from cfgsim.errors import InputError


def check_output_paths(paths: Iterable[Path | str | None]) -> list[str]:
    """Check that every output path can be written; returns notes (folders that will be created).

    Refused, with the path and the reason: a path that is an existing folder, a path inside a
    "folder" that is a file, a folder that cannot be written or created. Nothing is created here;
    :func:`make_output_folders` does that once every path has passed.
    """
    notes: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw)
        if path.is_dir():
            raise InputError(f"{path}: is a folder; give a file name for this output")
        parent = path.parent if str(path.parent) else Path(".")
        if parent in seen:
            continue
        seen.add(parent)
        existing = parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"{path}: cannot be written ({existing} is a file, not a folder)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{path}: cannot be written ({existing}: permission denied)")
        if existing != parent:
            notes.append(f"creating output folder {parent}")
    return notes


def make_output_folders(paths: Iterable[Path | str | None]) -> None:
    for raw in paths:
        if raw is not None:
            try:
                Path(raw).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"{raw}: cannot create its folder ({exc.strerror or exc})") from exc
