"""The probe's result as plain data: spec, items, cells, scores. Renderers and writers read it.

Nothing here computes a score or draws a pixel: :mod:`cfgsim.compare` fills ``scores``,
:mod:`cfgsim.render` draws, :mod:`cfgsim.metadata` writes and reads the JSON form.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cfgsim import __version__
from cfgsim.host import Checkpoint
from cfgsim.spec import ProbeSpec

if TYPE_CHECKING:
    from PIL import Image

    from cfgsim.lineage import Lineage

SCHEMA = "cfgsim.probe-result"
# 2: adds ``lineage`` (statistics over seeds, tree with support, nearest relatives). Version-1
# documents are still read (they simply have no lineage).
SCHEMA_VERSION = 2

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class Cell:
    """One grid cell: item (column) ``item`` under row value ``row`` (a seed, or another axis)."""

    item: int
    row: int
    status: str = OK
    reason: str = ""
    image: Image.Image | None = None
    infotext: str = ""
    file: str | None = None
    # "library": the image came from the probe library instead of being generated in this run.
    origin: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK and self.image is not None


@dataclass
class Reference:
    """What scores are measured against: one of the items, or an external image (or nothing)."""

    kind: str = "none"  # "none" | "item" | "image"
    index: int | None = None  # the item's column when kind == "item"
    label: str = ""
    file: str | None = None
    image: Image.Image | None = None
    infotext: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "index": self.index, "label": self.label, "file": self.file}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        return cls(data.get("kind", "none"), data.get("index"), data.get("label", ""), data.get("file"))


@dataclass
class MetricScores:
    """One metric's numbers. Matrices are N×N over items (NaN where a cell has no image).

    ``per_row[r]`` is row r's matrix; ``vs_reference[r]`` the items' scores against the reference
    in row r (NaN for missing cells and for the reference item itself when it is an item).
    ``mean``/``std`` are taken over rows, ignoring NaN.

    The statistics are computed once and cached (read-only arrays): renderers and tables read them
    inside loops over items. The cache holds the row arrays it was computed from and is recomputed
    when ``per_row``/``vs_reference`` is replaced, grown or given another array; an array changed
    in place needs :meth:`invalidate`.
    """

    metric: str
    label: str
    description: str = ""
    per_row: list[np.ndarray] = field(default_factory=list)
    vs_reference: list[np.ndarray] | None = None
    _cache: dict[str, tuple[list[np.ndarray], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def invalidate(self) -> None:
        """Forget the cached statistics (after changing a row's array in place)."""
        self._cache.clear()

    def _stat(self, key: str, fn, arrays: Sequence[np.ndarray]) -> np.ndarray:
        hit = self._cache.get(key)
        if hit is not None and len(hit[0]) == len(arrays) and all(map(operator.is_, hit[0], arrays)):
            return hit[1]
        value = _nan_stat(fn, arrays)
        value.setflags(write=False)
        self._cache[key] = (list(arrays), value)
        return value

    @property
    def mean(self) -> np.ndarray:
        return self._stat("mean", np.nanmean, self.per_row)

    @property
    def std(self) -> np.ndarray:
        return self._stat("std", np.nanstd, self.per_row)

    @property
    def reference_mean(self) -> np.ndarray | None:
        return None if self.vs_reference is None else self._stat("ref_mean", np.nanmean, self.vs_reference)

    @property
    def reference_std(self) -> np.ndarray | None:
        return None if self.vs_reference is None else self._stat("ref_std", np.nanstd, self.vs_reference)

    def ranks(self, row: int) -> list[int | None]:
        """1-based rank of each item by its score against the reference in ``row`` (1 = closest)."""
        if self.vs_reference is None:
            return [None] * (self.per_row[row].shape[0] if self.per_row else 0)
        return rank_scores(self.vs_reference[row])

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "metric": self.metric,
            "label": self.label,
            "description": self.description,
            "per_row": [_json_matrix(m) for m in self.per_row],
            "mean": _json_matrix(self.mean),
            "std": _json_matrix(self.std),
        }
        if self.vs_reference is not None:
            out["vs_reference"] = [_json_matrix(v) for v in self.vs_reference]
            out["reference_mean"] = _json_matrix(self.reference_mean)
            out["reference_std"] = _json_matrix(self.reference_std)
            out["ranks"] = [self.ranks(r) for r in range(len(self.vs_reference))]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricScores:
        vs = data.get("vs_reference")
        return cls(
            metric=data["metric"],
            label=data.get("label", data["metric"]),
            description=data.get("description", ""),
            per_row=[_array(m) for m in data.get("per_row", [])],
            vs_reference=None if vs is None else [_array(v) for v in vs],
        )


def rank_scores(scores: Sequence[float] | np.ndarray) -> list[int | None]:
    """1-based ranks, highest score first; None for NaN (no image, or the reference itself).

    Tied scores share the best rank of their group ("1, 2, 2, 4", competition ranking): four
    items at pHash 0.500 are all #2, not #2…#5 in an arbitrary order.
    """
    from scipy.stats import rankdata

    values = np.asarray(scores, dtype=float)
    ranks: list[int | None] = [None] * len(values)
    valid = [i for i in range(len(values)) if not math.isnan(values[i])]
    if valid:
        for i, rank in zip(valid, rankdata(-values[valid], method="min"), strict=True):
            ranks[i] = int(rank)
    return ranks


def _nan_stat(fn, arrays: Sequence[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros((0,))
    # An item missing from every row has an all-NaN column: its statistic is NaN, not a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(np.stack(arrays), axis=0)


def _json_matrix(a: np.ndarray | None) -> object:
    """A JSON-safe nested list: floats rounded to 6 places, NaN written as null."""
    if a is None:
        return None
    return [_json_matrix(x) for x in a] if np.ndim(a) else (None if math.isnan(a) else round(float(a), 6))


def _array(data: object) -> np.ndarray:
    return np.array(data, dtype=float) if data is not None else np.zeros((0,))


@dataclass
class ProbeResult:
    """Everything one probe run (or one ``compare``) produced. See the module docstring."""

    spec: ProbeSpec
    items: list[Checkpoint]
    rows: list[int]  # row values: the seeds (or 0.. for a plain comparison)
    row_axis: str = "Seed"
    cells: list[Cell] = field(default_factory=list)
    reference: Reference = field(default_factory=Reference)
    scores: dict[str, MetricScores] = field(default_factory=dict)
    size_policy: dict[str, object] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    host: str = ""
    interrupted: bool = False
    # The preset the run started from and how the spec differs from it: (label, preset, used).
    preset: str = ""
    deviations: list[tuple[str, str, str]] = field(default_factory=list)
    lineage: Lineage | None = None
    # Settings that differ between the compared images (``compare`` of images made under different
    # settings): {infotext key: {value: [labels]}}. Non-empty → not a like-for-like probe.
    mixed_settings: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # Where the grid's cells are, recorded by cfgsim.render.render_grid so that split-grid can cut
    # a cfgsim grid exactly: {"rows", "cols", "image_size": [w, h], "boxes": [[x0, y0, x1, y1], ...]}.
    grid_layout: dict[str, Any] | None = None
    version: str = __version__
    # What produced it: "probe" (images; also a plain ``compare``) or "weights" (cfgsim.weights: no
    # images, so never a probe). Absent in older documents = "probe".
    kind: str = "probe"

    def cell(self, item: int, row: int) -> Cell | None:
        for cell in self.cells:
            if cell.item == item and cell.row == row:
                return cell
        return None

    @property
    def labels(self) -> list[str]:
        return [item.label for item in self.items]

    @property
    def failures(self) -> list[Cell]:
        return [cell for cell in self.cells if cell.status != OK]

    def row_label(self, row: int) -> str:
        """ "Seed 1337" for a probe row; empty for the single row of a plain comparison."""
        return f"{self.row_axis} {self.rows[row]}" if self.row_axis else ""

    def to_dict(self) -> dict[str, object]:
        """The versioned JSON document stored in the grid PNG's ``cfgsim`` chunk."""
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "cfgsim_version": self.version,
            "host": self.host,
            "spec": spec_to_dict(self.spec),
            "kind": self.kind,
            "is_probe": self.kind == "probe" and self.spec.is_probe and not self.mixed_settings,
            "like_for_like": not self.mixed_settings,
            "mixed_settings": self.mixed_settings,
            "infotext": str(self.spec.to_infotext()),
            "items": [item.to_dict() for item in self.items],
            "row_axis": self.row_axis,
            "rows": list(self.rows),
            "reference": self.reference.to_dict(),
            "cells": [
                {
                    "item": c.item,
                    "row": c.row,
                    "status": c.status,
                    "reason": c.reason,
                    "file": c.file,
                    "infotext": c.infotext,
                    **({"origin": c.origin} if c.origin else {}),
                }
                for c in self.cells
            ],
            "metrics": list(self.scores),
            "scores": {name: s.to_dict() for name, s in self.scores.items()},
            "size_policy": self.size_policy,
            "environment": self.environment,
            "interrupted": self.interrupted,
            "preset": self.preset,
            "deviations": [list(d) for d in self.deviations],
            "lineage": None if self.lineage is None else self.lineage.to_dict(),
            "grid_layout": self.grid_layout,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        """Inverse of :meth:`to_dict` (without images). Schema checks live in cfgsim.metadata."""
        cells = [
            Cell(
                item=c["item"],
                row=c["row"],
                status=c.get("status", OK),
                reason=c.get("reason", ""),
                infotext=c.get("infotext", ""),
                file=c.get("file"),
                origin=c.get("origin", ""),
            )
            for c in data.get("cells", [])
        ]
        return cls(
            spec=spec_from_dict(data.get("spec", {})),
            items=[Checkpoint.from_dict(i) for i in data.get("items", [])],
            rows=list(data.get("rows", [])),
            row_axis=data.get("row_axis", "Seed"),
            cells=cells,
            reference=Reference.from_dict(data.get("reference", {})),
            scores={k: MetricScores.from_dict(v) for k, v in data.get("scores", {}).items()},
            size_policy=dict(data.get("size_policy", {})),
            environment=dict(data.get("environment", {})),
            host=data.get("host", ""),
            interrupted=bool(data.get("interrupted", False)),
            preset=data.get("preset", ""),
            deviations=[tuple(d) for d in data.get("deviations", [])],
            lineage=_lineage_from(data.get("lineage")),
            mixed_settings={k: dict(v) for k, v in (data.get("mixed_settings") or {}).items()},
            grid_layout=data.get("grid_layout") if isinstance(data.get("grid_layout"), dict) else None,
            version=data.get("cfgsim_version", ""),
            kind=str(data.get("kind") or "probe"),
        )

    def tree_order(self) -> list[int]:
        """Item indices in the family tree's leaf order (items outside the tree last); else 0..N-1."""
        if self.lineage is None or not self.lineage.order:
            return list(range(len(self.items)))
        order = [i for i in self.lineage.order if 0 <= i < len(self.items)]
        return order + [i for i in range(len(self.items)) if i not in order]

    def reordered(self, order: Sequence[int]) -> ProbeResult:
        """A copy with the items (columns) in ``order``: cells, matrices, reference and lineage follow.

        Renderers draw what they are given; this is how the grid, the heatmap and the table come out
        in tree order without any of them knowing about trees.
        """
        import copy

        order = list(order)
        if sorted(order) != list(range(len(self.items))):
            raise ValueError(f"order {order} is not a permutation of {len(self.items)} items")
        new_of = {old: new for new, old in enumerate(order)}
        out = copy.copy(self)
        out.items = [self.items[i] for i in order]
        out.cells = sorted(
            (copy.copy(c) for c in self.cells), key=lambda c: (c.row, new_of.get(c.item, c.item))
        )
        for cell in out.cells:
            cell.item = new_of[cell.item]
        ix = np.ix_(order, order)
        out.scores = {
            name: MetricScores(
                metric=s.metric,
                label=s.label,
                description=s.description,
                per_row=[np.asarray(m)[ix] for m in s.per_row],
                vs_reference=None
                if s.vs_reference is None
                else [np.asarray(v)[order] for v in s.vs_reference],
            )
            for name, s in self.scores.items()
        }
        out.reference = copy.copy(self.reference)
        if out.reference.kind == "item" and out.reference.index is not None:
            out.reference.index = new_of[out.reference.index]
        if self.lineage is not None:
            out.lineage = self.lineage.renumbered(new_of)
        return out


def _lineage_from(data: object) -> Lineage | None:
    if not data:
        return None
    from cfgsim.lineage import Lineage

    return Lineage.from_dict(data)  # type: ignore[arg-type]


def spec_to_dict(spec: ProbeSpec) -> dict[str, object]:
    out = {name: getattr(spec, name) for name in spec.__dataclass_fields__ if name not in ("extra", "seeds")}
    out["seeds"] = list(spec.seeds)
    out["extra"] = dict(spec.extra)
    return out


def spec_from_dict(data: Mapping[str, Any]) -> ProbeSpec:
    known = {k: v for k, v in data.items() if k in ProbeSpec.__dataclass_fields__}
    if "seeds" in known:
        known["seeds"] = tuple(known["seeds"])
    if "extra" in known:
        known["extra"] = tuple(dict(known["extra"]).items())
    return ProbeSpec(**known)
