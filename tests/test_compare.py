"""Comparison matrices: properties that hold for every metric and every set of images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cfgsim.compare import build_metrics, compare, parse_metric_names
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint
from cfgsim.result import Cell, ProbeResult, Reference
from cfgsim.spec import ProbeSpec

PIXEL_METRICS = ["ssim", "phash", "psnr", "rmse"]


def result_of(arrays, reference=None, rows=1):
    n = len(arrays) // rows
    return ProbeResult(
        spec=ProbeSpec(),
        items=[Checkpoint(f"m{i}") for i in range(n)],
        rows=list(range(rows)),
        cells=[Cell(item=k % n, row=k // n, image=Image.fromarray(a)) for k, a in enumerate(arrays)],
        reference=reference or Reference(),
    )


image_sets = st.integers(2, 5).flatmap(
    lambda n: st.lists(st.integers(0, 2**31 - 1), min_size=n, max_size=n).map(
        lambda seeds: [
            np.kron(
                np.random.default_rng(s).integers(0, 256, (6, 6, 3), dtype=np.uint8),
                np.ones((8, 8, 1), np.uint8),
            )
            for s in seeds
        ]
    )
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=image_sets, perm_seed=st.integers(0, 1000))
@pytest.mark.parametrize("name", PIXEL_METRICS)
def test_matrix_properties(name, arrays, perm_seed):
    metric = build_metrics([name])
    matrix = compare(result_of(arrays), metric).scores[name].per_row[0]
    n = len(arrays)
    assert matrix.shape == (n, n)
    assert np.array_equal(matrix, matrix.T)  # symmetric
    assert np.all(np.diag(matrix) == 1.0)  # self-similarity is exactly 1
    assert np.all(matrix <= 1.0) and np.all(matrix >= -1.0)  # documented range
    # Permutation equivariance: reordering the images reorders the matrix, nothing else.
    perm = np.random.default_rng(perm_seed).permutation(n)
    permuted = compare(result_of([arrays[i] for i in perm]), metric).scores[name].per_row[0]
    assert np.allclose(permuted, matrix[np.ix_(perm, perm)], atol=1e-12)


@pytest.mark.parametrize("name", PIXEL_METRICS)
def test_identical_images_score_one_everywhere(name):
    a = np.kron(
        np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)
    )
    matrix = compare(result_of([a, a.copy(), a.copy()]), build_metrics([name])).scores[name].per_row[0]
    assert np.all(matrix == 1.0)


def test_rows_are_seeds_and_mean_std_are_over_rows():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    scores = compare(result_of(arrays, Reference("item", 0, "m0"), rows=2), build_metrics(["rmse"])).scores[
        "rmse"
    ]
    assert len(scores.per_row) == 2
    assert np.allclose(scores.mean, (scores.per_row[0] + scores.per_row[1]) / 2)
    assert np.allclose(scores.std, np.abs(scores.per_row[0] - scores.per_row[1]) / 2)
    assert math.isnan(scores.reference_mean[0]) and not math.isnan(scores.reference_mean[1])


def test_missing_cells_are_nan_and_ignored_in_the_mean():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    result = result_of(arrays, rows=2)
    result.cells[3].image = None  # item 1, row 1 failed
    result.cells[3].status = "failed"
    scores = compare(result, build_metrics(["rmse"])).scores["rmse"]
    assert np.isnan(scores.per_row[1][1]).all()
    assert scores.mean[0, 1] == pytest.approx(scores.per_row[0][0, 1])


def test_metric_names():
    assert parse_metric_names("SSIM, clip,ssim") == ["ssim", "clip"]
    with pytest.raises(InputError, match="at least one metric"):
        parse_metric_names(" , ")
    with pytest.raises(InputError, match="'lpips' is unknown"):
        parse_metric_names(["lpips"])
