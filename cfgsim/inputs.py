"""Multi-seed inputs for ``compare``: a folder is one item whose images are that item's seeds.

Images are paired across items by, in this order of preference (one rule for the whole run, so
items are never paired by two different rules):

1. the ``Seed`` in each image's infotext (every image has one);
2. the number in each image's file name (every image has one; the last number, so the WebUI's
   default ``00012-1337.png`` pairs by its seed 1337, and split-grid's ``1337-base.png`` by 1337);
3. the sorted order of the file names (image 1, 2, ... of each folder).

Seeds that are not present for every item are reported and left out. A plain file given beside
folders is an item with one image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cfgsim.errors import InputError
from cfgsim.infotext import Infotext
from cfgsim.metadata import read_metadata

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BY_INFOTEXT, BY_FILENAME, BY_ORDER = "infotext Seed", "number in the file name", "sorted file order"
_NUMBER = re.compile(r"\d+")


@dataclass
class ItemInput:
    """One item of a comparison: its label, where it came from, and its images by seed."""

    label: str
    source: Path
    is_folder: bool
    files: list[Path] = field(default_factory=list)
    infos: list[Infotext | None] = field(default_factory=list)
    keys: list[int] = field(default_factory=list)  # the pairing key of each file (seed or position)


@dataclass
class Paired:
    """Items with their seeds paired: ``rows`` are the keys every item has, in ascending order."""

    items: list[ItemInput]
    rows: list[int]
    method: str
    left_out: dict[int, list[str]]  # key → labels of the items that have it (not all do)

    def file(self, item: int, row: int) -> tuple[Path, Infotext | None] | None:
        it = self.items[item]
        key = self.rows[row]
        for path, info, k in zip(it.files, it.infos, it.keys, strict=True):
            if k == key:
                return path, info
        return None

    def describe(self) -> list[str]:
        """Lines for the terminal: how images were paired and what was left out."""
        what = "seeds" if self.method != BY_ORDER else "images"
        lines = [f"paired {len(self.rows)} {what} across {len(self.items)} items by {self.method}"]
        for key, labels in sorted(self.left_out.items()):
            name = f"seed {key}" if self.method != BY_ORDER else f"image #{key}"
            lines.append(f"left out {name}: only in {', '.join(labels)}")
        return lines


def has_folder(paths: Sequence[Path]) -> bool:
    return any(p.is_dir() for p in paths)


def folder_images(folder: Path) -> list[Path]:
    """The images directly inside ``folder``, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )


def collect(paths: Sequence[Path]) -> list[ItemInput]:
    """One :class:`ItemInput` per path (a folder of images, or one image file), infotexts read."""
    items: list[ItemInput] = []
    for path in paths:
        if path.is_dir():
            files = folder_images(path)
            if not files:
                raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            label = path.resolve().name or str(path)
            items.append(ItemInput(label, path, True, files))
        elif path.exists():
            items.append(ItemInput(path.stem, path, False, [path]))
        else:
            raise InputError(f"{path}: no such file or folder")
    for item in items:
        for file in item.files:
            text, _ = read_metadata(file)
            item.infos.append(Infotext.parse(text) if text else None)
    return items


def pair(items: list[ItemInput]) -> Paired:
    """Choose the pairing rule, assign each image its key and keep the keys every item has."""
    method = _method(items)
    for item in items:
        item.keys = _keys(item, method)
        seen: dict[int, Path] = {}
        for file, key in zip(item.files, item.keys, strict=True):
            if key in seen:
                name = "seed" if method != BY_ORDER else "image"
                raise InputError(
                    f"{item.source}: {name} {key} is present twice ({seen[key].name} and {file.name}, "
                    f"paired by {method})"
                )
            seen[key] = file
    sets = [set(item.keys) for item in items]
    common = sorted(set.intersection(*sets))
    everything = sorted(set.union(*sets))
    left_out = {
        key: [item.label for item, keys in zip(items, sets, strict=True) if key in keys]
        for key in everything
        if key not in common
    }
    if not common:
        listed = "; ".join(
            f"{item.label}: {_short_list(sorted(keys))}" for item, keys in zip(items, sets, strict=True)
        )
        raise InputError(f"no seed is present in every item (paired by {method}): {listed}")
    return Paired(items, common, method, left_out)


def _method(items: Sequence[ItemInput]) -> str:
    infos = [info for item in items for info in item.infos]
    if all(info is not None and _seed(info) is not None for info in infos):
        return BY_INFOTEXT
    files = [file for item in items for file in item.files]
    if all(_NUMBER.search(file.stem) for file in files):
        return BY_FILENAME
    return BY_ORDER


def _keys(item: ItemInput, method: str) -> list[int]:
    if method == BY_INFOTEXT:
        return [int(_seed(info)) for info in item.infos]  # type: ignore[arg-type]
    if method == BY_FILENAME:
        return [int(_NUMBER.findall(file.stem)[-1]) for file in item.files]
    return list(range(1, len(item.files) + 1))


def _seed(info: Infotext | None) -> int | None:
    if info is None:
        return None
    value = info.params.get("Seed")
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _short_list(keys: Sequence[int], limit: int = 8) -> str:
    text = ", ".join(str(k) for k in keys[:limit])
    return text + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


#: Infotext keys whose values must agree between the images of one comparison (seeds: within a row).
LIKE_FOR_LIKE_KEYS = ("Steps", "Sampler", "Schedule type", "CFG scale", "Size", "Clip skip")


def settings_differences(
    items: Sequence[tuple[str, Sequence[Infotext | None]]],
    *,
    rows: Sequence[Sequence[tuple[str, Infotext | None]]] = (),
) -> dict[str, dict[str, list[str]]]:
    """Settings that differ between the inputs: ``{key: {value: [labels having it]}}``.

    ``items``: each item's label and its images' infotexts. ``rows``: (label, infotext) of the
    images compared with each other; their ``Seed`` must agree within a row. Images without an
    infotext are not counted (nothing is known about them).
    """
    out: dict[str, dict[str, list[str]]] = {}
    for key in LIKE_FOR_LIKE_KEYS:
        values: dict[str, list[str]] = {}
        for label, infos in items:
            for info in infos:
                if info is None:
                    continue
                value = _norm(info.params.get(key), key)
                if label not in values.setdefault(value, []):
                    values[value].append(label)
        if len(values) > 1:
            out[key] = values
    seeds: dict[str, list[str]] = {}
    for row in rows:
        found = {_norm(info.params.get("Seed"), "Seed") for _, info in row if info is not None}
        if len(found) > 1:
            for label, info in row:
                if info is not None:
                    holders = seeds.setdefault(_norm(info.params.get("Seed"), "Seed"), [])
                    if label not in holders:
                        holders.append(label)
    if seeds:
        out["Seed"] = seeds
    return out


def describe_differences(diff: dict[str, dict[str, list[str]]]) -> str:
    """``Steps: 256 (a, b) vs 8 (c); Seed: 1337 (a) vs 42 (b)``."""
    return "; ".join(
        f"{key}: " + " vs ".join(f"{value} ({', '.join(labels)})" for value, labels in values.items())
        for key, values in diff.items()
    )


def _norm(value: object, key: str) -> str:
    if value is None:
        return "(not given)" if key != "Clip skip" else "1"  # the WebUI writes no Clip skip when it is 1
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:g}"
