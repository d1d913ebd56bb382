"""Pixel metrics: root-mean-square error and peak signal-to-noise ratio, and their similarities.

The raw values have no upper bound (PSNR) or the wrong direction (RMSE), so the metrics report a
similarity in 0..1 where 1.0 means identical, by a fixed and stated mapping:

* ``rmse`` similarity = 1 − RMSE / 255  (RMSE over all pixels and channels, in 8-bit levels);
* ``psnr`` similarity = min(PSNR, 60 dB) / 60  (identical images have infinite PSNR and score 1.0;
  from 60 dB on — an RMSE below 0.26 levels — images count as identical).

The raw values are available from :func:`rmse` and :func:`psnr`. On 8-bit images all the sums are
exact integers, so the batched :meth:`matrix` gives the same numbers as pair-by-pair :meth:`score`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cfgsim.metrics.base import Metric, check_images

__all__ = [
    "PSNR_CEILING_DB",
    "PsnrMetric",
    "RmseMetric",
    "psnr",
    "psnr_similarity",
    "rmse",
    "rmse_similarity",
]

#: PSNR (dB) that maps to similarity 1.0; higher values are clipped to it.
PSNR_CEILING_DB = 60.0


def _check_pair(im1: np.ndarray, im2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    im1, im2 = np.asarray(im1), np.asarray(im2)
    if im1.shape != im2.shape:
        raise ValueError(f"input images must have the same shape, not {im1.shape} and {im2.shape}")
    if im1.size == 0:
        raise ValueError("input images are empty")
    return im1, im2


def _mean_squared_error(im1: np.ndarray, im2: np.ndarray) -> float:
    diff = im1.astype(np.float64) - im2.astype(np.float64)
    flat = diff.reshape(-1)
    return float(np.dot(flat, flat)) / flat.size


def rmse(im1: np.ndarray, im2: np.ndarray) -> float:
    """Root-mean-square difference over all pixels and channels, in the images' own units.

    0.0 means identical; for uint8 images the maximum is 255.
    """
    return math.sqrt(_mean_squared_error(*_check_pair(im1, im2)))


def psnr(im1: np.ndarray, im2: np.ndarray, *, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``; ``inf`` for identical images.

    Higher is more similar. ``data_range`` is the value range of the pixels (255 for uint8).
    """
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, not {data_range!r}")
    mse = _mean_squared_error(*_check_pair(im1, im2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def psnr_similarity(value_db: float) -> float:
    """PSNR (dB) → similarity: ``min(PSNR, 60) / 60``, so identical (infinite PSNR) → 1.0."""
    return min(value_db, PSNR_CEILING_DB) / PSNR_CEILING_DB


def rmse_similarity(value: float) -> float:
    """RMSE (8-bit levels) → similarity: ``1 − RMSE / 255``, so identical → 1.0."""
    return 1.0 - value / 255.0


class _PixelMetric(Metric):
    """Shared work of the pixel metrics: per pair only the sum of squared differences is needed."""

    same_size = True

    def prepare(self, images: Sequence[Any]) -> list[np.ndarray]:
        arrays = check_images(images, metric=self.name, same_size=True)
        # float64 holds 8-bit products and their sums exactly (far below 2**53).
        return [arr.astype(np.float64).reshape(-1) for arr in arrays]

    def _from_mse(self, mse: float) -> float:
        raise NotImplementedError

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        if a.shape != b.shape:
            raise ValueError(f"{self.name}: prepared images differ in size ({a.size} and {b.size} values)")
        diff = a - b
        return self._from_mse(float(np.dot(diff, diff)) / diff.size)

    def matrix(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        n = len(prepared)
        out = np.eye(n, dtype=np.float64)
        if n < 2:
            return out
        stack = np.stack(prepared)
        # ‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b in one matrix product: exact on 8-bit data, as every term
        # is an integer below 2**53.
        gram = stack @ stack.T
        norms = np.diag(gram)
        squared = norms[:, None] + norms[None, :] - 2.0 * gram
        size = stack.shape[1]
        for i in range(n):
            for j in range(i + 1, n):
                out[i, j] = out[j, i] = self._from_mse(float(squared[i, j]) / size)
        return out


class RmseMetric(_PixelMetric):
    """Root-mean-square error as a similarity: ``1 − RMSE / 255`` (1.0 identical, 0.0 black vs white)."""

    name = "rmse"
    label = "RMSE"
    description = "1 - RMSE/255 over all pixels and channels: higher is more similar, 0..1, 1 = identical"

    def _from_mse(self, mse: float) -> float:
        return rmse_similarity(math.sqrt(mse))


class PsnrMetric(_PixelMetric):
    """Peak signal-to-noise ratio as a similarity: ``min(PSNR, 60 dB) / 60`` (1.0 identical)."""

    name = "psnr"
    label = "PSNR"
    description = "min(PSNR, 60 dB)/60: higher is more similar, 0..1, 1 = identical (60 dB or more)"

    def _from_mse(self, mse: float) -> float:
        if mse == 0:
            return 1.0
        return psnr_similarity(10.0 * math.log10(255.0 * 255.0 / mse))
