"""Statistics over seeds: pair confidence intervals (bootstrap), the paired sign-flip test, and the
background check (empirical p-values with Benjamini–Hochberg). All from scipy.stats."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cfgsim.lineage.model import CONFIDENCE, DEFAULT_RNG_SEED, Relative


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
