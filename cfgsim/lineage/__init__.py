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

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cfgsim.lineage.model import (
    BACKGROUND_MIN_ITEMS,
    BANDS,
    BANDS_ORDER,
    BASE,
    CLOSE,
    CONFIDENCE,
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    DEFAULT_REPLICATES,
    DEFAULT_RNG_SEED,
    SAME,
    UNRELATED,
    Bands,
    Clade,
    Lineage,
    Relative,
)
from cfgsim.lineage.stats import _background, pair_intervals, sign_flip_test
from cfgsim.lineage.tree import _clades, _smallest_clade, _tree, clade_support, to_newick

if TYPE_CHECKING:
    from cfgsim.result import ProbeResult

__all__ = [
    "BANDS",
    "BANDS_ORDER",
    "BASE",
    "CLOSE",
    "CONFIDENCE",
    "DEFAULT_ALPHA",
    "DEFAULT_MARGIN",
    "DEFAULT_REPLICATES",
    "DEFAULT_RNG_SEED",
    "SAME",
    "UNRELATED",
    "Bands",
    "Clade",
    "Lineage",
    "Relative",
    "analyse",
    "analyse_matrices",
    "clade_support",
    "pair_intervals",
    "sign_flip_test",
    "to_newick",
]


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
