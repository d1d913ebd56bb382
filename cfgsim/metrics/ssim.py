"""Structural similarity (SSIM), batched for N×N comparison matrices.

The definition is exactly scikit-image's ``structural_similarity(a, b, channel_axis=2,
data_range=255)`` with its defaults: a 7×7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance
(N − 1 normalisation), the mean taken over the interior where the window fits entirely (a border of
(7 − 1) // 2 pixels is left out), and the channels averaged. The tests hold it to scikit-image
within 1e-4 on every pair.

What differs is the arithmetic, arranged for many pairs:

* The per-image window sums (local mean and variance) are computed once, in :meth:`SsimMetric.prepare`.
  Per pair only the cross term — the window sums of x·y — is new.
* Only the interior is computed: there every window lies inside the image, so the box filter needs no
  border handling, and the border scikit-image computes and then crops is skipped.
* For uint8 images every window sum is an exact integer: pixels are centred on 128, so a product is
  at most 2**14 in magnitude and a 7×7 sum of products stays below 2**24, exact in float32. Float32
  is then safe for the rest, because the one cancellation that needs float64 in scikit-image
  (E[x²] − E[x]², two numbers near 255²) is done on exact sums of centred values instead.
* Box sums are separable and computed by doubling (sums of 1, 2, 4 pixels, then 7 = 1 + 2 + 4) on the
  flat pixel array, so every numpy call works on contiguous memory.
* The constants are folded so that a pair costs about twenty array passes, and identical images
  come out as exactly 1.0.
* The matrix is computed in tiles (a few images against all later ones) and in blocks of pixels
  small enough for the CPU cache, so each image's statistics come from memory once per tile rather
  than once per pair. Tiles run in threads: numpy releases the GIL inside its loops.

* Memory is bounded: :meth:`SsimMetric.prepare` only checks and keeps the images; the statistics
  (18 bytes a pixel and channel) are computed in horizontal bands of rows, for all images at once,
  and each band's pair sums are added up before the next band is prepared. The band height is
  chosen so that the bands' statistics and the workers' scratch fit :data:`MEMORY_BUDGET` (and half
  the memory the system has available); a small image is one band. Every position's value is the
  same whatever the banding (exact integer window sums); only the order of the float32 block sums
  changes, which moves a score by about 1e-8.

``benchmarks/bench_ssim.py`` measures it against scikit-image's pair loop: for N = 32 images of
512×512 the matrix, preparation included, is well over 20 times faster, and agrees to about 3e-8;
it also measures the peak memory of N = 8 images of 2048×2048.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from cfgsim.errors import InputError
from cfgsim.metrics.base import Metric, check_images
from cfgsim.metrics.ssim_stats import (
    _BLOCK,
    _GROUP,
    _MIN_BAND_ROWS,
    _SCRATCH_BYTES,
    _STATS_BYTES,
    MEMORY_BUDGET,
    SsimStats,
    _default_range,
    _pair_map,
    _pair_sums,
    _prepare,
    _Scratch,
)

__all__ = ["MEMORY_BUDGET", "SsimImage", "SsimMetric", "SsimStats", "ssim"]


def ssim(
    im1: np.ndarray,
    im2: np.ndarray,
    *,
    data_range: float | None = None,
    win_size: int = 7,
    channel_axis: int | None = None,
    K1: float = 0.01,  # noqa: N803 - scikit-image's names
    K2: float = 0.03,  # noqa: N803
    use_sample_covariance: bool = True,
    full: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Mean structural similarity of two 2-D images (with channels if ``channel_axis`` is given).

    Same definition, options and defaults as ``skimage.metrics.structural_similarity`` with a uniform
    window (``gaussian_weights=False``); the value agrees with it to better than 1e-4 (uint8 input is
    computed in exact integer sums plus float32, anything else in float64).

    Parameters
    ----------
    im1, im2 : ndarray
        Images of the same shape: (H, W), or (H, W, C)-like with ``channel_axis`` naming the channels.
    data_range : float, optional
        Value range of the pixels (max possible − min possible). Defaults to the integer dtype's
        range (255 for uint8); required for floating-point images.
    win_size : int
        Side of the square uniform window; odd, at least 3 and at most the smaller image side.
    channel_axis : int, optional
        Axis of the channels; the result is the mean over channels. None means one channel.
    K1, K2, use_sample_covariance :
        As in scikit-image (0.01, 0.03, N − 1 normalisation).
    full : bool
        Also return the per-pixel SSIM map (shape of the input, float), with borders computed on a
        symmetrically reflected image as scikit-image does. The mean excludes that border. (The
        map is computed on whole images: it needs memory in proportion to them; the mean alone is
        computed in bands.)

    Returns
    -------
    mssim : float
        In [−1, 1]; 1.0 means identical, 0 no structural relation.
    S : ndarray
        Only with ``full=True``: the SSIM map.
    """
    im1 = np.asarray(im1)
    im2 = np.asarray(im2)
    if im1.shape != im2.shape:
        raise ValueError(f"input images must have the same shape, not {im1.shape} and {im2.shape}")
    if channel_axis is None:
        if im1.ndim != 2:
            raise ValueError(f"expected 2-D images (or pass channel_axis), got shape {im1.shape}")
        ch1, ch2 = im1[None], im2[None]
    else:
        if im1.ndim != 3:
            raise ValueError(f"expected 3-D images with channel_axis={channel_axis}, got shape {im1.shape}")
        axis = channel_axis % 3
        ch1, ch2 = np.moveaxis(im1, axis, 0), np.moveaxis(im2, axis, 0)
    if not isinstance(win_size, (int, np.integer)) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, not {win_size!r}")
    if min(ch1.shape[1:]) < win_size:
        raise ValueError(
            f"win_size {win_size} exceeds the image extent {ch1.shape[2]}x{ch1.shape[1]}; "
            "pass a smaller odd win_size"
        )
    if K1 < 0 or K2 < 0:
        raise ValueError("K1 and K2 must be non-negative")
    if data_range is None:
        data_range = _default_range(im1)
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, not {data_range!r}")
    params = (float(data_range), int(win_size), float(K1), float(K2), bool(use_sample_covariance))
    if im1.dtype != np.uint8 or im2.dtype != np.uint8:
        ch1, ch2 = ch1.astype(np.float64), ch2.astype(np.float64)
    if not full:
        # Band by band, as SsimMetric does: the memory stays bounded whatever the image size.
        metric = SsimMetric(win_size=int(win_size), workers=1)
        metric._params = params
        return metric.score(
            SsimImage(np.moveaxis(ch1, 0, 2), params), SsimImage(np.moveaxis(ch2, 0, 2), params)
        )

    pad = (win_size - 1) // 2
    widths = ((0, 0), (pad, pad), (pad, pad))
    # numpy's "symmetric" (edge sample repeated) is scipy.ndimage's "reflect", scikit-image's mode.
    padded1, padded2 = np.pad(ch1, widths, mode="symmetric"), np.pad(ch2, widths, mode="symmetric")
    smap = _pair_map(_prepare(padded1, params), _prepare(padded2, params))
    height, width = smap.shape[1:]
    mssim = float(smap[:, pad : height - pad, pad : width - pad].mean())
    if channel_axis is None:
        return mssim, smap[0]
    return mssim, np.moveaxis(smap, 0, channel_axis % 3)


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _available_memory() -> int | None:
    """Bytes the system can give without swapping (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True, eq=False)
class SsimImage:
    """A prepared image for :class:`SsimMetric`: the checked uint8 (H, W, C) pixels, not copied.

    The statistics are computed band by band when pairs are compared (see :meth:`SsimMetric.matrix`),
    so preparing any number of images costs no memory beyond the images themselves.
    """

    pixels: np.ndarray
    params: tuple

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W): channels first, as :class:`SsimStats` has it."""
        height, width, channels = self.pixels.shape
        return (channels, height, width)

    @property
    def interior_size(self) -> int:
        channels, height, width = self.shape
        win = self.params[1]
        return channels * (height - win + 1) * (width - win + 1)

    def band(self, top: int, bottom: int) -> np.ndarray:
        """Rows [top, bottom) channels first, contiguous: (C, bottom − top, W)."""
        return np.ascontiguousarray(self.pixels[top:bottom].transpose(2, 0, 1))


def _check_images(a: SsimImage, b: SsimImage) -> None:
    if a.shape != b.shape or a.params != b.params:
        raise InputError(
            f"ssim: cannot compare images of shapes {a.shape} and {b.shape} (channels first) "
            "or prepared with different options"
        )


class SsimMetric(Metric):
    """SSIM as in scikit-image (7×7 uniform window, channels averaged), batched over many pairs.

    Options: ``win_size`` (odd, default 7) and ``workers`` (threads for :meth:`matrix`; default the
    number of usable cores, at most 8, fewer when memory is short). Memory stays within
    :data:`MEMORY_BUDGET` beyond the images themselves (see the module's notes), whatever their
    number and size.
    """

    name = "ssim"
    label = "SSIM"
    description = (
        "structural similarity (scikit-image definition, 7x7 window): higher is more similar, "
        "-1..1, 1 = identical"
    )
    same_size = True
    memory_budget = MEMORY_BUDGET

    def __init__(self, *, win_size: int = 7, workers: int | None = None) -> None:
        if not isinstance(win_size, (int, np.integer)) or win_size < 3 or win_size % 2 == 0:
            raise InputError(f"ssim: win_size must be an odd integer >= 3, not {win_size!r}")
        if workers is not None and workers < 1:
            raise InputError(f"ssim: workers must be at least 1, not {workers!r}")
        self.win_size = int(win_size)
        self.workers = workers
        self._params = (255.0, self.win_size, 0.01, 0.03, True)

    def settings(self) -> dict[str, Any]:
        return {"win_size": self.win_size, "data_range": 255, "K1": 0.01, "K2": 0.03}

    def prepare(self, images: Sequence[Any]) -> list[SsimImage]:
        arrays = check_images(images, metric=self.name, same_size=True)
        for arr in arrays:
            if min(arr.shape[:2]) < self.win_size:
                raise InputError(
                    f"ssim: images of {arr.shape[1]}x{arr.shape[0]} are smaller than the "
                    f"{self.win_size}x{self.win_size} window"
                )
        return [SsimImage(arr, self._params) for arr in arrays]

    def plan(self, n_images: int, shape: tuple[int, int, int]) -> tuple[int, int]:
        """(workers, band height in output rows) for ``n_images`` of ``shape`` (C, H, W).

        The bands' statistics for all images plus each worker's scratch fit the budget (the
        smaller of :attr:`memory_budget` and half the available memory): first the band shrinks,
        down to a few rows, then the workers. A band is never under :data:`_MIN_BAND_ROWS` rows
        (or the whole image), so a huge number of images can still exceed the budget, by their
        statistics alone.
        """
        channels, height, width = shape
        rows = height - self.win_size + 1
        budget = self.memory_budget
        available = _available_memory()
        if available is not None:
            budget = min(budget, available // 2)
        workers = max(1, min(self.workers or _default_workers(), max(1, n_images)))
        per_row = channels * width  # band elements per row of pixels
        halo = self.win_size - 1
        # Each worker's scratch for the pair sums: a dozen arrays of a block plus its halo.
        pair_scratch = 12 * 4 * (_BLOCK + halo * (width + 1))

        def cost(band: int, k: int) -> int:
            per_worker = (band + halo) * per_row * _SCRATCH_BYTES + pair_scratch
            return (band + halo) * per_row * n_images * _STATS_BYTES + k * per_worker

        room = budget - workers * pair_scratch
        band = room // max(1, per_row * (n_images * _STATS_BYTES + workers * _SCRATCH_BYTES)) - halo
        band = min(rows, max(min(rows, _MIN_BAND_ROWS), band))
        while workers > 1 and cost(band, workers) > budget:
            workers -= 1
        return workers, band

    def _map(self, func: Any, items: Sequence[Any], workers: int) -> list:
        """``[func(item, scratch) for item in items]`` on ``workers`` threads, one scratch per thread."""
        workers = min(workers, max(1, len(items)))
        if workers == 1:
            scratch = _Scratch()
            return [func(item, scratch) for item in items]
        local = threading.local()  # one set of work arrays per thread, freed with this call

        def run(item: Any) -> Any:
            scratch = getattr(local, "scratch", None)
            if scratch is None:
                scratch = local.scratch = _Scratch()
            return func(item, scratch)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cfgsim-ssim") as pool:
            return list(pool.map(run, items))

    def score(self, a: SsimImage, b: SsimImage) -> float:
        _check_images(a, b)
        if a is b:
            return 1.0
        return float(self._sums([a, b], [(0, 1)])[0]) / a.interior_size

    def matrix(self, prepared: Sequence[SsimImage]) -> np.ndarray:
        n = len(prepared)
        out = np.eye(n, dtype=np.float64)
        if n < 2:
            return out
        for image in prepared[1:]:
            _check_images(prepared[0], image)
        cells = [(i, j) for i in range(n) for j in range(i + 1, n)]
        sums = self._sums(prepared, cells)
        for (i, j), total in zip(cells, sums, strict=True):
            out[i, j] = out[j, i] = total / prepared[i].interior_size
        return out

    def _sums(self, images: Sequence[SsimImage], cells: Sequence[tuple[int, int]]) -> np.ndarray:
        """Sums of the SSIM maps over the interior for the pairs ``cells`` of ``images``.

        Band by band: the statistics of every image for the band (in threads), then the pairs in
        tiles (the rows of a group of _GROUP images against every later image, block by block, so
        each image's statistics are read from memory once per tile rather than once per pair).
        """
        n = len(images)
        first = images[0]
        win = first.params[1]
        rows = first.shape[1] - win + 1
        workers, band = self.plan(n, first.shape)
        used = sorted({k for cell in cells for k in cell})
        by_row: dict[int, list[int]] = {}
        for index, (i, _) in enumerate(cells):
            by_row.setdefault(i, []).append(index)
        size = _GROUP if len(by_row) >= 2 * _GROUP * workers else max(1, len(by_row) // (2 * workers))
        starts = sorted(by_row)
        groups = [starts[g : g + size] for g in range(0, len(starts), size)]
        totals = np.zeros(len(cells), dtype=np.float64)

        for top in range(0, rows, band):
            bottom = min(top + band, rows) + win - 1
            self._band_sums(
                images,
                (top, bottom),
                used=used,
                cells=cells,
                groups=groups,
                by_row=by_row,
                workers=workers,
                totals=totals,
            )
        return totals

    def _band_sums(
        self,
        images: Sequence[SsimImage],
        rows: tuple[int, int],
        *,
        used: list[int],
        cells: Sequence[tuple[int, int]],
        groups: list[list[int]],
        by_row: dict[int, list[int]],
        workers: int,
        totals: np.ndarray,
    ) -> None:
        """Add the pairs' sums over the output rows of the pixel rows ``rows`` to ``totals``."""
        params = images[0].params

        def prepare_one(k: int, scratch: _Scratch) -> SsimStats:
            return _prepare(images[k].band(*rows), params, scratch)

        stats = dict(zip(used, self._map(prepare_one, used, workers), strict=True))

        def tile(group: list[int], scratch: _Scratch) -> None:
            indices = [index for i in group for index in by_row[i]]
            pairs = [(stats[cells[index][0]], stats[cells[index][1]]) for index in indices]
            # Tiles add to disjoint cells: no lock needed.
            totals[indices] += _pair_sums(pairs, scratch)

        self._map(tile, groups, workers)
