"""The lineage verdict: statistics over seeds, a family tree with support, nearest relatives.

Seeds are the replicates. Every statistic is computed per seed first and summarised over seeds,
the way sites are the replicates in phylogenetics:

* **pairs** — mean similarity over seeds and its bootstrap confidence interval
  (:func:`scipy.stats.bootstrap`, percentile method, resampling seeds);
* **nearest relative** of each item A, with a paired sign-flip permutation test
  (:func:`scipy.stats.permutation_test`, ``permutation_type="samples"``; exact when the seed count
  allows) between the nearest B and the runner-up C. Seeds replicate the *pictures*, not the
  models: two fine-tunes of one base made with the same recipe still differ in how near they are,
  and a plain test of s(A, B) − s(A, C) finds that difference with enough seeds. So the test asks
  whether C is *materially* farther: one-sided, on the per-seed d(A, C) − m·d(A, B) with
  d = 1 − similarity and the margin m = :data:`DEFAULT_MARGIN`, calibrated on random families so
  that equally related relatives are called different at most ``alpha`` of the time. Not
  significant → "undecided between B and C";
* **family tree** — average linkage (UPGMA, :func:`scipy.cluster.hierarchy.linkage`) on
  1 − similarity, with Felsenstein's bootstrap support for every clade (seeds resampled with
  replacement, a fixed RNG seed so the numbers are reproducible), written as Newick;
* **verdict bands** — per metric, thresholds on the nearest relative's similarity (its CI's lower
  bound when there are several seeds). They are guides from measured data (README), not proof.

A same-seed vs cross-seed contrast is deliberately absent: unrelated models on one seed still share
the noise's layout, so such a test says "same seed", never "related".

Nothing here draws; :mod:`cfgsim.render.dendrogram` draws the tree from the :class:`Lineage`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cfgsim.result import ProbeResult

DEFAULT_ALPHA = 0.05
#: The nearest relative B is "decided" over the runner-up C when C is at least this many times as
#: far from A as B is (distance = 1 − similarity), with significance over the seeds. Calibrated on
#: random demo families (benchmarks/bench_lineage.py, README "Lineage verdict"): two fine-tunes of
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


# --------------------------------------------------------------------------------------------
# Analysis


def analyse(
    result: ProbeResult,
    metric: str | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    replicates: int = DEFAULT_REPLICATES,
    rng_seed: int = DEFAULT_RNG_SEED,
    margin: float = DEFAULT_MARGIN,
) -> Lineage | None:
    """The lineage section for ``result`` from one metric's per-seed matrices (default: the first).

    Items with no image on any row are left out; rows (seeds) where any remaining item has no image
    are left out and named in ``notes``. None when fewer than two items have images.
    """
    if not result.scores:
        return None
    name = metric or next(iter(result.scores))
    scores = result.scores[name]
    if not scores.per_row:
        return None
    stack = np.stack([np.asarray(m, dtype=float) for m in scores.per_row])  # R × N × N
    n_all = stack.shape[1]
    present = ~np.isnan(stack[:, np.arange(n_all), np.arange(n_all)])  # R × N: item has an image
    items = [i for i in range(n_all) if present[:, i].any()]
    notes: list[str] = []
    if len(items) < 2:
        return None
    rows = [r for r in range(stack.shape[0]) if present[r, items].all()]
    left_out = [r for r in range(stack.shape[0]) if r not in rows]
    if not rows:
        # No seed has every item: keep the items of the most complete seed.
        best = int(np.argmax(present[:, items].sum(axis=1)))
        items = [i for i in items if present[best, i]]
        rows = [r for r in range(stack.shape[0]) if present[r, items].all()]
        left_out = [r for r in range(stack.shape[0]) if r not in rows]
        if len(items) < 2:
            return None
    dropped = [i for i in range(n_all) if i not in items]
    if dropped:
        notes.append(
            "left out (no image on the seeds used): " + ", ".join(result.items[i].label for i in dropped)
        )
    if left_out:
        notes.append(
            "seeds left out (an item has no image there): " + ", ".join(str(result.rows[r]) for r in left_out)
        )
    labels = [result.items[i].label for i in items]
    sims = stack[np.ix_(rows, items, items)]
    sims = (sims + np.swapaxes(sims, 1, 2)) / 2.0  # metrics are symmetric; rounding may not be

    lineage = analyse_matrices(
        sims, labels, metric=name, alpha=alpha, replicates=replicates, rng_seed=rng_seed, margin=margin
    )
    # Indices in the result's numbering.
    lineage.items = items
    lineage.rows_used = [result.rows[r] for r in rows]
    lineage.rows_left_out = [result.rows[r] for r in left_out]
    lineage.notes = notes + lineage.notes
    remap = dict(enumerate(items))
    lineage.order = [remap[k] for k in lineage.order]
    for clade in lineage.clades:
        clade.members = tuple(remap[k] for k in clade.members)
    for rel in lineage.relatives:
        rel.item = remap[rel.item]
        rel.nearest = None if rel.nearest is None else remap[rel.nearest]
        rel.runner_up = None if rel.runner_up is None else remap[rel.runner_up]
    return lineage


def analyse_matrices(
    sims: np.ndarray,
    labels: Sequence[str],
    *,
    metric: str = "ssim",
    alpha: float = DEFAULT_ALPHA,
    replicates: int = DEFAULT_REPLICATES,
    rng_seed: int = DEFAULT_RNG_SEED,
    margin: float = DEFAULT_MARGIN,
) -> Lineage:
    """The analysis on an R × N × N stack of complete, symmetric per-seed similarity matrices."""
    sims = np.asarray(sims, dtype=float)
    if sims.ndim != 3 or sims.shape[1] != sims.shape[2]:
        raise ValueError(f"similarities: expected R × N × N, got shape {sims.shape}")
    n_rows, n = sims.shape[0], sims.shape[1]
    if n != len(labels):
        raise ValueError(f"labels: {len(labels)} labels for {n} items")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
    if not margin >= 1:
        raise ValueError(f"margin must be 1 or more, not {margin!r}")
    if np.isnan(sims).any():
        raise ValueError("similarities: NaN present (leave out incomplete seeds first)")
    notes: list[str] = []
    mean = sims.mean(axis=0)
    low, high = pair_intervals(sims, rng_seed=rng_seed)
    if n_rows == 1:
        notes.append("one seed: no confidence intervals, no p-values and no clade support")
        replicates = 0
    elif 1 / 2**n_rows >= alpha:
        notes.append(
            f"{n_rows} seeds: the smallest p-value a sign-flip test over {n_rows} seeds can give is "
            f"{1 / 2**n_rows:.3f}, so no nearest relative can be decided at {alpha:g}; use more seeds "
            "(8 or more to tell relatives apart reliably)"
        )

    z, order = _tree(mean)
    clades = _clades(z, n)
    if n >= 3 and replicates > 0:
        supports = clade_support(sims, clades, replicates=replicates, rng_seed=rng_seed)
        for clade, support in zip(clades, supports, strict=True):
            clade.support = support
    if n == 2:
        notes.append("two items: no tree to speak of (one pair), and no runner-up to test against")
    newick = to_newick(clades, labels, n)
    bands = BANDS.get(metric)
    if bands is None:
        notes.append(f"verdict bands are calibrated for SSIM only; {metric} gets nearest relatives only")
    relatives = [
        _relative(
            a,
            sims,
            mean,
            low,
            high,
            labels,
            clades,
            alpha=alpha,
            margin=margin,
            bands=bands,
            rng_seed=rng_seed,
        )
        for a in range(n)
    ]
    if n >= BACKGROUND_MIN_ITEMS:
        _background(relatives, mean)
    return Lineage(
        metric=metric,
        items=list(range(n)),
        labels=list(labels),
        rows_used=list(range(n_rows)),
        alpha=alpha,
        margin=margin,
        replicates=replicates if n >= 3 else 0,
        rng_seed=rng_seed,
        mean=mean,
        ci_low=low,
        ci_high=high,
        clades=clades,
        order=order,
        newick=newick,
        relatives=relatives,
        bands=bands,
        notes=notes,
    )


def _rng_kwargs(fn: Any, rng: np.random.Generator) -> dict[str, Any]:
    # scipy >= 1.15 takes ``rng``; older releases (the WebUI's environments) only ``random_state``.
    params = inspect.signature(fn).parameters
    return {"rng": rng} if "rng" in params else {"random_state": rng}


def pair_intervals(
    sims: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    rng_seed: int = DEFAULT_RNG_SEED,
    resamples: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap CI of the mean similarity over seeds, for every pair (NaN with one seed).

    The percentile method, because BCa is undefined where every seed gives the same value (a copy
    of a model scores 1.0 on every seed) and unstable with a handful of seeds.
    """
    from scipy import stats

    n_rows, n = sims.shape[0], sims.shape[1]
    low = np.full((n, n), np.nan)
    high = np.full((n, n), np.nan)
    if n_rows < 2:
        return low, high
    iu = np.triu_indices(n, 1)
    data = sims[:, iu[0], iu[1]]  # R × pairs
    rng = np.random.default_rng(rng_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate (constant) pairs give a zero-width interval
        res = stats.bootstrap(
            (data,),
            np.mean,
            axis=0,
            vectorized=True,
            n_resamples=resamples,
            batch=max(1, min(resamples, 4_000_000 // max(1, data.size))),
            confidence_level=confidence,
            method="percentile",
            **_rng_kwargs(stats.bootstrap, rng),
        )
    lo, hi = np.asarray(res.confidence_interval.low), np.asarray(res.confidence_interval.high)
    # A constant pair: scipy may answer NaN; the interval is then the value itself.
    const = np.ptp(data, axis=0) == 0
    lo = np.where(const, data[0], lo)
    hi = np.where(const, data[0], hi)
    low[iu] = lo
    high[iu] = hi
    low.T[iu] = lo
    high.T[iu] = hi
    np.fill_diagonal(low, 1.0)
    np.fill_diagonal(high, 1.0)
    return low, high


def sign_flip_test(
    differences: Sequence[float] | np.ndarray,
    *,
    alternative: str = "two-sided",
    rng_seed: int = DEFAULT_RNG_SEED,
) -> float:
    """p-value of a paired sign-flip permutation test that the mean difference is 0
    (``alternative``: "two-sided", "greater" or "less", as :func:`scipy.stats.permutation_test`).

    Exact (all 2^R sign patterns) up to 13 seeds, Monte Carlo with 9,999 resamples beyond.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        raise ValueError("a paired test needs at least two seeds")
    if not np.any(d):
        return 1.0
    res = stats.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        alternative=alternative,
        vectorized=True,
        n_resamples=9999,
        **_rng_kwargs(stats.permutation_test, np.random.default_rng(rng_seed)),
    )
    return float(min(1.0, res.pvalue))


def _tree(mean: np.ndarray, *, ordered: bool = True) -> tuple[np.ndarray, list[int]]:
    """UPGMA linkage on 1 − similarity (leaves in optimal order unless ``ordered`` is False)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    n = mean.shape[0]
    if n < 2:
        return np.zeros((0, 4)), list(range(n))
    y = squareform(_distance(mean), checks=False)
    z = hierarchy.linkage(y, method="average")
    if n >= 3 and ordered:
        z = hierarchy.optimal_leaf_ordering(z, y)
    return z, [int(i) for i in hierarchy.leaves_list(z)]


def _distance(mean: np.ndarray) -> np.ndarray:
    d = 1.0 - (mean + mean.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def _clades(z: np.ndarray, n: int) -> list[Clade]:
    members: list[tuple[int, ...]] = []
    clades: list[Clade] = []
    for left, right, dist, _count in z:
        a, b = int(left), int(right)
        m = tuple(sorted(_members(a, n, members) + _members(b, n, members)))
        members.append(m)
        # UPGMA is ultrametric: a node sits at half the average distance between its two sides.
        clades.append(Clade(members=m, height=float(dist) / 2.0, support=None, children=(a, b)))
    return clades


def _members(node: int, n: int, members: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (node,) if node < n else members[node - n]


def clade_support(
    sims: np.ndarray, clades: Sequence[Clade], *, replicates: int, rng_seed: int
) -> list[float]:
    """Fraction of seed-bootstrap trees that contain each clade (Felsenstein's bootstrap)."""
    n_rows, n = sims.shape[0], sims.shape[1]
    rng = np.random.default_rng(rng_seed)
    wanted = [frozenset(c.members) for c in clades]
    counts = np.zeros(len(clades))
    for _ in range(replicates):
        idx = rng.integers(0, n_rows, size=n_rows)
        z, _order = _tree(sims[idx].mean(axis=0), ordered=False)  # clades do not depend on order
        found = {frozenset(c.members) for c in _clades(z, n)}
        counts += [w in found for w in wanted]
    return [float(c) / replicates for c in counts]


def _smallest_clade(clades: Sequence[Clade], a: int, b: int) -> Clade | None:
    best = None
    for clade in clades:
        if (
            a in clade.members
            and b in clade.members
            and (best is None or len(clade.members) < len(best.members))
        ):
            best = clade
    return best


def _relative(  # noqa: PLR0917 (the arrays of one analysis, passed through)
    a: int,
    sims: np.ndarray,
    mean: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    labels: Sequence[str],
    clades: Sequence[Clade],
    *,
    alpha: float,
    margin: float,
    bands: Bands | None,
    rng_seed: int,
) -> Relative:
    n_rows, n = sims.shape[0], sims.shape[1]
    rel = Relative(item=a, label=labels[a], seeds=n_rows)
    others = sorted((j for j in range(n) if j != a), key=lambda j: (-mean[a, j], j))
    if not others:
        return rel
    b = others[0]
    rel.nearest, rel.nearest_label = b, labels[b]
    rel.similarity = float(mean[a, b])
    rel.ci = (float(low[a, b]), float(high[a, b]))
    clade = _smallest_clade(clades, a, b)
    rel.support = None if clade is None else clade.support
    # Copies of B (the same model under another name: fp16, pruned, renamed) are not B's rivals:
    # the runner-up is the best candidate that is not a copy of B.
    copies = [j for j in others[1:] if bands is not None and mean[b, j] >= bands.copy]
    rel.copies = [labels[j] for j in copies]
    rivals = [j for j in others[1:] if j not in copies]
    if rivals:
        c = rivals[0]
        rel.runner_up, rel.runner_up_label = c, labels[c]
        rel.runner_up_similarity = float(mean[a, c])
        d = sims[:, a, b] - sims[:, a, c]
        rel.effect = float(d.mean())
        rel.seeds_won = int((d > 0).sum())
        dist_b, dist_c = 1.0 - sims[:, a, b], 1.0 - sims[:, a, c]
        mean_b = float(dist_b.mean())
        rel.distance_ratio = float(dist_c.mean()) / mean_b if mean_b > 0 else math.inf
        if n_rows >= 2:
            sd = float(d.std(ddof=1))
            rel.effect_size = rel.effect / sd if sd > 0 else (math.inf if rel.effect > 0 else 0.0)
            # Is C at least ``margin`` times as far as B? One-sided: the claim is that direction.
            rel.p_value = sign_flip_test(
                dist_c - margin * dist_b, alternative="greater", rng_seed=rng_seed + a
            )
            rel.decided = rel.p_value < alpha
    else:
        rel.decided = True  # only one candidate (or only copies of it): nearest by construction
    # The band uses the CI's lower bound where there is one: uncertainty counts against the claim.
    value = rel.ci[0] if not math.isnan(rel.ci[0]) else rel.similarity
    proper = clade is not None and len(clade.members) < n
    if bands is not None:
        rel.band = bands.band(value, decided=rel.decided and rel.runner_up is not None,
                              clade_support=rel.support if proper else None)  # fmt: skip
    else:
        rel.band = UNRELATED
    rel.verdict = _verdict_text(rel, margin, calibrated=bands is not None)
    return rel


def _verdict_text(rel: Relative, margin: float, *, calibrated: bool) -> str:
    if rel.nearest is None:
        return "no other item"
    name = rel.nearest_label + (f" (or its copy {', '.join(rel.copies)})" if rel.copies else "")
    if rel.runner_up is None:
        only = "the only other model" if rel.copies else "the only other item"
        who = f"nearest: {name} ({only})"
    elif rel.p_value is None:
        who = f"nearest: {name} (one seed: not tested against {rel.runner_up_label})"
    elif rel.decided:
        ratio = f"{rel.runner_up_label} is {rel.distance_ratio:.2f}x as far"
        who = f"nearest: {name} ({ratio}, p = {rel.p_value:.3g})"
    else:
        who = (
            f"undecided between {rel.nearest_label} and {rel.runner_up_label} "
            f"({rel.distance_ratio:.2f}x as far; not clearly beyond {margin:g}x, p = {rel.p_value:.3g})"
        )
    if not calibrated:
        return who
    if rel.band == SAME:
        return f"same model as {name}" + ("" if rel.decided else f"; {who}")
    if rel.band == UNRELATED:
        return f"unrelated or undecided; {who}"
    if rel.band == BASE and not rel.decided and rel.support is not None:
        return f"shares a base with {name} (in one clade, support {round(rel.support * 100)}%); {who}"
    return f"{rel.band}; {who}"


def _background(relatives: list[Relative], mean: np.ndarray) -> None:
    """Empirical p of each nearest pair among all pairs of the set, Benjamini–Hochberg adjusted."""
    from scipy import stats

    n = mean.shape[0]
    iu = np.triu_indices(n, 1)
    pairs = np.sort(mean[iu])
    with_pair = [r for r in relatives if r.nearest is not None]
    raw = [(len(pairs) - np.searchsorted(pairs, r.similarity, side="left")) / len(pairs) for r in with_pair]
    adjusted = stats.false_discovery_control(np.asarray(raw, dtype=float), method="bh")
    for rel, p in zip(with_pair, adjusted, strict=True):
        rel.background_p = float(p)


# --------------------------------------------------------------------------------------------
# Newick


def to_newick(clades: Sequence[Clade], labels: Sequence[str], n: int) -> str:
    """The tree as Newick: branch lengths in 1 − similarity units, supports as internal labels (%).

    Leaves sit at height 0 and each clade at half its UPGMA merge distance (an ultrametric tree).
    """
    if n == 0:
        return ";"
    if n == 1:
        return f"{_newick_label(labels[0])};"

    def height(node: int) -> float:
        return 0.0 if node < n else clades[node - n].height

    def write(node: int, parent_height: float | None) -> str:
        if node < n:
            text = _newick_label(labels[node])
        else:
            clade = clades[node - n]
            inner = ",".join(write(child, clade.height) for child in clade.children)
            text = f"({inner})"
            if parent_height is not None and clade.support is not None:
                text += str(round(clade.support * 100))
        if parent_height is not None:
            text += f":{max(0.0, parent_height - height(node)):.6f}"
        return text

    return write(n + len(clades) - 1, None) + ";"


_NEWICK_SPECIAL = set(" \t\n()[]':;,")


def _newick_label(label: str) -> str:
    if label and not (set(label) & _NEWICK_SPECIAL):
        return label
    return "'" + label.replace("'", "''") + "'"


# --------------------------------------------------------------------------------------------


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
