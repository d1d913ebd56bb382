"""MetricScores' statistics (cfgsim.result) and the summary table that reads them: computed once,
recomputed when the rows change, and linear in the size of the matrices."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_result

from cfgsim import result as result_module
from cfgsim.output import summary_table
from cfgsim.result import MetricScores, Reference


def _rows(rng: np.random.Generator, n: int, k: int) -> list[np.ndarray]:
    rows = []
    for _ in range(k):
        m = rng.uniform(0.2, 0.9, (n, n))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        rows.append(m)
    return rows


def test_statistics_are_computed_once_and_read_only():
    scores = MetricScores("ssim", "SSIM", per_row=_rows(np.random.default_rng(0), 4, 3))
    assert scores.mean is scores.mean
    assert scores.std is scores.std
    np.testing.assert_allclose(scores.mean, np.mean(np.stack(scores.per_row), axis=0))
    with pytest.raises(ValueError):
        scores.mean[0, 0] = 0.0


def test_statistics_follow_changes_to_the_rows():
    rng = np.random.default_rng(1)
    rows = _rows(rng, 3, 2)
    scores = MetricScores("ssim", "SSIM", per_row=list(rows))
    before = scores.mean.copy()
    extra = _rows(rng, 3, 1)[0]
    scores.per_row.append(extra)
    np.testing.assert_allclose(scores.mean, np.mean(np.stack([*rows, extra]), axis=0))
    scores.per_row[0] = np.full((3, 3), 0.5)
    np.testing.assert_allclose(scores.mean, np.mean(np.stack([scores.per_row[0], rows[1], extra]), axis=0))
    scores.per_row = list(rows)
    np.testing.assert_allclose(scores.mean, before)
    # A change in place is not seen until invalidate().
    scores.per_row[1][0, 1] = 0.0
    scores.invalidate()
    np.testing.assert_allclose(scores.mean[0, 1], (rows[0][0, 1] + 0.0) / 2)
    scores.vs_reference = [np.array([np.nan, 0.4, 0.6]), np.array([np.nan, 0.2, np.nan])]
    np.testing.assert_allclose(scores.reference_mean, [np.nan, 0.3, 0.6])
    scores.vs_reference[1] = np.array([np.nan, 0.6, 0.8])
    np.testing.assert_allclose(scores.reference_mean, [np.nan, 0.5, 0.7])


@pytest.mark.parametrize("reference", [True, False])
def test_summary_table_computes_each_statistic_once(monkeypatch, reference):
    """The old table recomputed the mean over rows for every (item, other item) pair: N²·(N²·R)."""
    n, k = 30, 4
    rng = np.random.default_rng(2)
    result = make_result(n_items=n, seeds=tuple(range(k)), with_failure=False, size=(64, 64))
    rows = _rows(rng, n, k)
    vs_ref = [r[0].copy() for r in rows] if reference else None
    if vs_ref:
        for v in vs_ref:
            v[0] = np.nan
    result.scores = {"ssim": MetricScores("ssim", "SSIM", per_row=rows, vs_reference=vs_ref)}
    if not reference:
        result.reference = Reference()
    calls = []
    real = result_module._nan_stat
    monkeypatch.setattr(result_module, "_nan_stat", lambda fn, arrays: calls.append(fn) or real(fn, arrays))
    text = summary_table(result)
    assert len(calls) <= 1
    # The values, computed here independently: mean over rows, then over the other items.
    mean = np.mean(np.stack(rows), axis=0)
    lines = text.splitlines()[1:]
    for i in range(n):
        shown = lines[i].split()[-1]
        if reference:
            expected = "ref" if i == 0 else f"{mean[0, i]:.4f}"
        else:
            expected = f"{(mean[i].sum() - mean[i, i]) / (n - 1):.4f}"
        assert shown == expected, (i, shown, expected)


def test_summary_table_without_other_images_shows_a_dash():
    result = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64))
    result.reference = Reference()
    result.scores = {"ssim": MetricScores("ssim", "SSIM", per_row=[np.array([[1.0, np.nan], [np.nan, 1.0]])])}
    lines = summary_table(result).splitlines()[1:]
    assert [line.split()[-1] for line in lines] == ["-", "-"]
