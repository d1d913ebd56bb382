"""The lineage section's data: constants, verdict bands, and the per-item and per-clade records
(with their JSON form). Nothing here computes a statistic."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_ALPHA = 0.05
#: The nearest relative B is "decided" over the runner-up C when C is at least this many times as
#: far from A as B is (distance = 1 − similarity), with significance over the seeds. Calibrated on
#: random demo families (benchmarks/bench_lineage.py, README "The lineage verdict"): two fine-tunes of
#: one base made with the same recipe are never exactly as near, their realised distance ratio
#: reaching 1.46 — a plain test of "B nearer than C" calls that difference 30-57 % of the time.
DEFAULT_MARGIN = 1.5
DEFAULT_REPLICATES = 1000  # tree bootstrap; the issue asks for at least 200
DEFAULT_RNG_SEED = 20260
CONFIDENCE = 0.95
#: The background check (how A–B ranks among all pairs of the set) is stated only from this many
#: items: with fewer, there are too few pairs for an empirical p-value to mean anything.
BACKGROUND_MIN_ITEMS = 8

SAME, CLOSE, BASE, UNRELATED = (
    "same model",
    "close relative (fine-tune or merge)",
    "shares a base",
    "unrelated or undecided",
)
BANDS_ORDER = (SAME, CLOSE, BASE, UNRELATED)


@dataclass(frozen=True)
class Bands:
    """How a nearest relative's similarity and the evidence around it become a verdict band.

    ``same`` and ``close`` are lower bounds on the similarity (its CI's lower bound when there are
    several seeds). Below ``close`` absolute similarity does not transfer between model families
    (unrelated real SD models score higher than related tiny ones): "shares a base" then rests on
    relative evidence instead — the nearest relative is decided (clearly nearer than the runner-up)
    or the two sit in a proper clade of the tree with bootstrap support of at least ``support``.
    """

    same: float
    close: float
    support: float = 0.95
    source: str = ""
    #: Mean similarity from which two items are copies of one model (fp16, pruned, renamed):
    #: such a copy of the nearest relative is not counted as its rival (the runner-up).
    copy: float = 0.99

    def band(self, value: float, *, decided: bool = False, clade_support: float | None = None) -> str:
        """``clade_support``: the support of the smallest clade holding both, None when that clade
        is the whole set (or there is no support: one seed)."""
        if value >= self.same:
            return SAME
        if value >= self.close:
            return CLOSE
        if decided or (clade_support is not None and clade_support >= self.support):
            return BASE
        return UNRELATED


#: Calibrated bands per metric. See the README's "The lineage verdict" for the measurements.
BANDS: dict[str, Bands] = {
    "ssim": Bands(
        same=0.99,
        close=0.80,
        source=(
            "same model: copies in one host (fp16/pruned demo copies >= 0.999; one checkpoint in A1111 "
            "and the standalone runner 1.000000); close relative: demo fine-tunes 0.94-0.99, and above "
            "the published unrelated real model (<= 0.75 against the NovelAI ground truth, which its "
            "own outputs match at 0.90-0.94 on other hardware)"
        ),
    ),
}


@dataclass
class Relative:
    """One item's nearest relative and the verdict on it (indices refer to ``result.items``)."""

    item: int
    label: str
    nearest: int | None = None
    nearest_label: str = ""
    similarity: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    runner_up: int | None = None
    runner_up_label: str = ""
    runner_up_similarity: float = math.nan
    p_value: float | None = None
    seeds_won: int = 0
    seeds: int = 0
    effect: float = math.nan  # mean of s(A,B) − s(A,C) over seeds
    effect_size: float = math.nan  # that mean over the differences' standard deviation (d_z)
    distance_ratio: float = math.nan  # mean d(A,C) / mean d(A,B), d = 1 − similarity
    support: float | None = None  # bootstrap support of the smallest clade holding A and B
    band: str = UNRELATED
    decided: bool = False
    verdict: str = ""
    background_p: float | None = None  # BH-adjusted empirical p of A–B among all pairs
    copies: list[str] = field(default_factory=list)  # other items that are the same model as B

    def to_dict(self) -> dict[str, object]:
        return {
            "item": self.item,
            "label": self.label,
            "nearest": self.nearest_label or None,
            "nearest_index": self.nearest,
            "similarity": _num(self.similarity),
            "ci": [_num(self.ci[0]), _num(self.ci[1])],
            "runner_up": self.runner_up_label or None,
            "runner_up_index": self.runner_up,
            "runner_up_similarity": _num(self.runner_up_similarity),
            "p_value": _num(self.p_value),
            "seeds_won": self.seeds_won,
            "seeds": self.seeds,
            "effect": _num(self.effect),
            "effect_size": _num(self.effect_size),
            "distance_ratio": _num(self.distance_ratio),
            "support": _num(self.support),
            "band": self.band,
            "decided": self.decided,
            "verdict": self.verdict,
            "background_p": _num(self.background_p),
            "copies": list(self.copies),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Relative:
        ci = data.get("ci") or [None, None]
        return cls(
            item=int(data.get("item", 0)),
            label=str(data.get("label", "")),
            nearest=data.get("nearest_index"),
            nearest_label=data.get("nearest") or "",
            similarity=_float(data.get("similarity")),
            ci=(_float(ci[0]), _float(ci[1])),
            runner_up=data.get("runner_up_index"),
            runner_up_label=data.get("runner_up") or "",
            runner_up_similarity=_float(data.get("runner_up_similarity")),
            p_value=data.get("p_value"),
            seeds_won=int(data.get("seeds_won") or 0),
            seeds=int(data.get("seeds") or 0),
            effect=_float(data.get("effect")),
            effect_size=_float(data.get("effect_size")),
            distance_ratio=_float(data.get("distance_ratio")),
            support=data.get("support"),
            band=str(data.get("band", UNRELATED)),
            decided=bool(data.get("decided", False)),
            verdict=str(data.get("verdict", "")),
            background_p=data.get("background_p"),
            copies=[str(c) for c in data.get("copies", [])],
        )


@dataclass
class Clade:
    """An internal node of the tree: its leaves (item indices), height (1 − similarity) and support."""

    members: tuple[int, ...]
    height: float
    support: float | None
    children: tuple[int, int]  # node ids: < n are leaves (items), >= n are clades (n + index)


@dataclass
class Lineage:
    """The lineage section of a result. Items are indices into ``result.items``."""

    metric: str
    items: list[int]  # the items that took part (those with images on the rows used)
    labels: list[str]
    rows_used: list[int]
    rows_left_out: list[int] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN
    replicates: int = 0
    rng_seed: int = DEFAULT_RNG_SEED
    confidence: float = CONFIDENCE
    mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ci_low: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    ci_high: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    clades: list[Clade] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # item indices in tree (leaf) order
    newick: str = ""
    relatives: list[Relative] = field(default_factory=list)
    bands: Bands | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_support(self) -> bool:
        return self.replicates > 0

    @property
    def has_tree(self) -> bool:
        return len(self.items) >= 3

    def renumbered(self, new_of: Mapping[int, int]) -> Lineage:
        """A copy with item indices mapped through ``new_of`` (old index → new index)."""
        import copy

        out = copy.deepcopy(self)
        out.items = [new_of[i] for i in self.items]
        out.order = [new_of[i] for i in self.order]
        for clade in out.clades:
            clade.members = tuple(sorted(new_of[i] for i in clade.members))
        for rel in out.relatives:
            rel.item = new_of[rel.item]
            rel.nearest = None if rel.nearest is None else new_of[rel.nearest]
            rel.runner_up = None if rel.runner_up is None else new_of[rel.runner_up]
        return out

    def relative_of(self, item: int) -> Relative | None:
        return next((r for r in self.relatives if r.item == item), None)

    def summary(self) -> str:
        """One line for the infotext (PNG Info): each item's nearest relative and band."""
        parts = []
        for rel in self.relatives:
            if rel.nearest is None:
                continue
            head = rel.nearest_label if rel.decided else f"{rel.nearest_label}?"
            parts.append(f"{rel.label}→{head} {rel.similarity:.3f} ({_short_band(rel.band)})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        from cfgsim.result import _json_matrix

        return {
            "metric": self.metric,
            "items": list(self.items),
            "labels": list(self.labels),
            "rows_used": list(self.rows_used),
            "rows_left_out": list(self.rows_left_out),
            "alpha": self.alpha,
            "margin": self.margin,
            "replicates": self.replicates,
            "rng_seed": self.rng_seed,
            "confidence": self.confidence,
            "mean": _json_matrix(self.mean),
            "ci_low": _json_matrix(self.ci_low),
            "ci_high": _json_matrix(self.ci_high),
            "tree": self.newick,
            "order": list(self.order),
            "clades": [
                {
                    "members": list(c.members),
                    "height": round(float(c.height), 6),
                    "support": _num(c.support),
                    "children": list(c.children),
                }
                for c in self.clades
            ],
            "bands": None
            if self.bands is None
            else {
                "same": self.bands.same,
                "close": self.bands.close,
                "support": self.bands.support,
                "copy": self.bands.copy,
                "source": self.bands.source,
            },
            "relatives": [r.to_dict() for r in self.relatives],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lineage:
        bands = data.get("bands")
        return cls(
            metric=str(data.get("metric", "")),
            items=[int(i) for i in data.get("items", [])],
            labels=[str(x) for x in data.get("labels", [])],
            rows_used=[int(i) for i in data.get("rows_used", [])],
            rows_left_out=[int(i) for i in data.get("rows_left_out", [])],
            alpha=float(data.get("alpha", DEFAULT_ALPHA)),
            margin=float(data.get("margin", DEFAULT_MARGIN)),
            replicates=int(data.get("replicates", 0)),
            rng_seed=int(data.get("rng_seed", DEFAULT_RNG_SEED)),
            confidence=float(data.get("confidence", CONFIDENCE)),
            mean=_matrix(data.get("mean")),
            ci_low=_matrix(data.get("ci_low")),
            ci_high=_matrix(data.get("ci_high")),
            clades=[
                Clade(
                    members=tuple(int(m) for m in c.get("members", [])),
                    height=float(c.get("height", 0.0)),
                    support=c.get("support"),
                    children=tuple(int(x) for x in c.get("children", (0, 0))),  # type: ignore[arg-type]
                )
                for c in data.get("clades", [])
            ],
            order=[int(i) for i in data.get("order", [])],
            newick=str(data.get("tree", "")),
            relatives=[Relative.from_dict(r) for r in data.get("relatives", [])],
            bands=None
            if not bands
            else Bands(
                same=float(bands["same"]),
                close=float(bands["close"]),
                support=float(bands.get("support", 0.95)),
                source=str(bands.get("source", "")),
                copy=float(bands.get("copy", 0.99)),
            ),
            notes=[str(n) for n in data.get("notes", [])],
        )


def _short_band(band: str) -> str:
    return {SAME: "same", CLOSE: "close", BASE: "base", UNRELATED: "unrelated?"}.get(band, band)


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return None
    return round(value, 6)


def _float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _matrix(data: object) -> np.ndarray:
    if data is None:
        return np.zeros((0, 0))
    return np.array([[math.nan if v is None else v for v in row] for row in data], dtype=float)  # type: ignore[union-attr]
