"""Where the items of a large comparison come from: one image at a time, never all at once.

The scale routes (:mod:`cfgsim.scale.chunked`, :mod:`cfgsim.scale.prefilter`) take an *item source*:
anything with ``len()``, ``identity(i)`` (a string that names the item's content for the resume key,
stable across runs) and ``load(i)`` (the item as a uint8 (H, W, 3) array). Two are provided:

* :class:`PathSource`: image files, loaded with :func:`cfgsim.imageio.load_image` (so every rule of
  :mod:`cfgsim.imageio` applies: transparency on white, greyscale repeated, 16-bit scaled); the
  identity is the resolved path with the file's size and modification time, so an edited file is a
  new item.
* :class:`LoaderSource`: a callable ``loader(i)`` with identities you give (default ``item-<i>``).

Every image must have the first one's size: SSIM compares pixel by pixel. :func:`check_sizes` reads
only the file headers, so a folder of thousands is checked in a second, before the long work starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cfgsim.errors import InputError
from cfgsim.imageio import image_size, load_image, to_array
from cfgsim.inputs import IMAGE_SUFFIXES

__all__ = [
    "ItemSource",
    "LoaderSource",
    "PathSource",
    "check_sizes",
    "find_images",
    "load_checked",
]


class ItemSource(Protocol):
    """What the scale routes read items from (see the module docstring)."""

    def __len__(self) -> int: ...

    def identity(self, index: int) -> str: ...

    def load(self, index: int) -> np.ndarray: ...

    def name(self, index: int) -> str: ...


class PathSource:
    """Image files as items; ``name(i)`` is the path as given."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        self.paths = [Path(p) for p in paths]
        self._identities: list[str | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return str(self.paths[index])

    def identity(self, index: int) -> str:
        cached = self._identities[index]
        if cached is None:
            path = self.paths[index]
            try:
                st = path.stat()
            except OSError as exc:
                raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
            cached = self._identities[index] = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return cached

    def load(self, index: int) -> np.ndarray:
        return to_array(load_image(self.paths[index]))


class LoaderSource:
    """``n`` items loaded by ``loader(i)`` (a uint8 (H, W, 3) array or a PIL image).

    ``identities`` name the items' content for the resume key of a state file; without them the
    items are ``item-0``, ``item-1``, … and a state file cannot tell two different sets of ``n``
    items apart, so give them whenever a state file is used.
    """

    def __init__(
        self,
        n: int,
        loader: Callable[[int], Any],
        identities: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if n < 0:
            raise InputError(f"the number of items must be 0 or more, not {n}")
        if identities is not None and len(identities) != n:
            raise InputError(f"{len(identities)} identities given for {n} items")
        if names is not None and len(names) != n:
            raise InputError(f"{len(names)} names given for {n} items")
        self.n, self.loader = n, loader
        self.identities = list(identities) if identities is not None else None
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"item-{index}"

    def identity(self, index: int) -> str:
        return self.identities[index] if self.identities is not None else f"item-{index}"

    def load(self, index: int) -> np.ndarray:
        try:
            return to_array(self.loader(index))
        except InputError as exc:
            raise InputError(f"{self.name(index)}: {exc}") from None


def load_checked(source: ItemSource, index: int, shape: tuple[int, ...] | None) -> np.ndarray:
    """``source.load(index)``, refused with both names when its shape is not ``shape``."""
    arr = source.load(index)
    if shape is not None and arr.shape != shape:
        raise InputError(
            f"{source.name(index)}: is {arr.shape[1]}x{arr.shape[0]}, the other images are "
            f"{shape[1]}x{shape[0]} (SSIM compares pixel by pixel: bring them to one size first)"
        )
    return arr


def find_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files (``.png``, ``.jpg``, ``.jpeg``, ``.webp``) under ``folder``, recursively,
    sorted; hidden files and folders are skipped. Refuses a missing folder, a file, or no images."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: is a file, not a folder of images")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath) / f
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES)
        ]
    if not found:
        raise InputError(f"{root}: no images found (looked recursively for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def _header_size(path: Path) -> tuple[int, int]:
    return image_size(path)


def check_sizes(paths: Sequence[Path]) -> tuple[int, int]:
    """(width, height) shared by all ``paths``, read from the headers only (no pixels decoded).

    An unreadable file or a size that differs from the first file's is refused, naming both."""
    if not paths:
        raise InputError("no images given")
    first = _header_size(paths[0])
    for path in paths[1:]:
        size = _header_size(path)
        if size != first:
            raise InputError(
                f"{path}: is {size[0]}x{size[1]}, but {paths[0]} is {first[0]}x{first[1]} "
                "(SSIM compares pixel by pixel: all images must have one size)"
            )
    return first
