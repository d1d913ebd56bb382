"""The statistics behind :mod:`cfgsim.metrics.ssim`: each image's local sums, computed once, and
the cross term of a pair, in exact integer-valued float32 window sums over the interior.

:class:`SsimStats` holds one image's (or one band's) prepared statistics; :func:`_prepare` makes
them, :func:`_pair_sums` adds a pair's per-position SSIM sums block by block, :func:`_pair_map`
gives the SSIM map. The budget constants size the bands and scratch of
:class:`cfgsim.metrics.ssim.SsimMetric` (see that module's notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cfgsim.errors import InputError

_CENTRE = 128  # uint8 pixels are stored minus 128, as int16: products are at most 2**14 in magnitude

# Output positions per block in a pair's computation: large enough that numpy's per-call overhead
# stays small, small enough that the block's dozen temporaries (about 6 MB) stay in the CPU cache
# and each image's statistics are streamed from memory once per pair.
_BLOCK = 1 << 16
# Images per tile of the matrix (see SsimMetric.matrix): their blocks are kept in cache together.
_GROUP = 4
#: Bytes the banded statistics and the workers' scratch may take together (see SsimMetric.matrix).
MEMORY_BUDGET = 768 * 2**20
# Bytes per band element: the statistics kept for each image (int16 pixels, four float32 arrays),
# and one worker's scratch while preparing (the doubling sums of pixels and of squares).
_STATS_BYTES = 2 + 4 * 4
_SCRATCH_BYTES = 64
_MIN_BAND_ROWS = 16


class _Scratch:
    """Reusable work arrays for one thread: fresh multi-megabyte temporaries for every block of every
    pair would spend as much time in page faults as in the arithmetic."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, np.dtype], np.ndarray] = {}

    def get(self, tag: str, size: int, dtype: np.dtype) -> np.ndarray:
        key = (tag, np.dtype(dtype))
        arr = self._arrays.get(key)
        if arr is None or arr.size < size:
            arr = self._arrays[key] = np.empty(size, dtype=dtype)
        return arr[:size]


@dataclass(frozen=True, eq=False)
class SsimStats:
    """One image's SSIM statistics, for :func:`_pair_sums`.

    The arrays are flat, over the channels-first stack (C, H, W): element ``i`` belongs to the
    win×win window whose top-left pixel is flat position ``i`` (see :func:`_window_sums`). With
    n = win² and sums S over one window, and the folded constants c1, c2 of :func:`_pair_sums`:

    * ``centred``: the pixels minus a constant (int16 for uint8 images, else float64), (C·H·W,);
    * ``s``: ``S_x / win``, so that ``s_x * s_y == S_x * S_y / n`` (window sums of ``centred``);
    * ``m``: the window sums of the pixels themselves (n × the local mean);
    * ``q``: ``(m² + c1) / 2``, this image's half of the luminance denominator;
    * ``r``: ``(S_xx − (s² − c2)) / 2``, its half of the contrast-structure denominator.

    ``q`` and ``r`` are +inf where the window runs off the image, so those positions score 0 and
    a plain sum over the first ``size`` positions is the sum over the interior.
    """

    centred: np.ndarray
    s: np.ndarray
    m: np.ndarray
    q: np.ndarray
    r: np.ndarray
    shape: tuple[int, int, int]
    params: tuple
    size: int  # positions [0, size) have window sums; the arrays run on to C·H·W

    @property
    def interior_size(self) -> int:
        channels, height, width = self.shape
        win = self.params[1]
        return channels * (height - win + 1) * (width - win + 1)


def _shifted_sums(x: np.ndarray, win: int, step: int, scratch: _Scratch, tag: str) -> np.ndarray:
    """``out[i] = x[i] + x[i + step] + ... + x[i + (win - 1) * step]`` wherever all terms exist.

    Sums of 1, 2, 4, ... terms are built by doubling and those in the binary expansion of ``win``
    are added up: 4 array additions for win = 7, all on contiguous memory. (numpy is several times
    slower on strided views, and a cumulative sum loses exactness.) The result lives in ``scratch``.
    """
    n_out = x.size - (win - 1) * step
    parts: list[np.ndarray] = []
    power, size, offset, remaining, level = x, 1, 0, win, 0
    while remaining:
        if remaining & 1:
            parts.append(power[offset * step : offset * step + n_out])
            offset += size
        remaining >>= 1
        if remaining:
            length = power.size - size * step
            doubled = scratch.get(f"{tag}{level}", length, x.dtype)
            np.add(power[:length], power[size * step :], out=doubled)
            power, size, level = doubled, size * 2, level + 1
    out = scratch.get(tag, n_out, x.dtype)
    np.add(parts[0], parts[1], out=out)  # win is odd and >= 3: there are at least two parts
    for part in parts[2:]:
        out += part
    return out


def _window_sums(x: np.ndarray, win: int, width: int, scratch: _Scratch, tag: str) -> np.ndarray:
    """Sums over the win×win windows of a flat channels-first stack ``x`` of rows ``width`` long.

    In the flat array a window's rows are ``win`` consecutive elements and its columns lie ``width``
    elements apart. Windows that would wrap past a row's end or a channel's last row give
    meaningless sums; they are exactly the positions outside the interior and are masked by the
    statistics. The result is shorter than ``x`` by the halo (win − 1)(width + 1).
    """
    rows = _shifted_sums(x, win, 1, scratch, tag + "-rows")
    return _shifted_sums(rows, win, width, scratch, tag + "-cols")


def _constants(data_range: float, win: int, k1: float, k2: float, sample_cov: bool) -> tuple[float, float]:
    """The folded constants c1, c2 (see :func:`_pair_sums`)."""
    n = win * win
    cov_norm = n / (n - 1) if sample_cov else 1.0
    c1 = (k1 * data_range) ** 2 * n * n / 2
    c2 = (k2 * data_range) ** 2 * n / (2 * cov_norm)
    return c1, c2


def _prepare(channels: np.ndarray, params: tuple, scratch: _Scratch | None = None) -> SsimStats:
    """Statistics of one image given channels first, (C, H, W)."""
    data_range, win, k1, k2, sample_cov = params
    c1, c2 = _constants(data_range, win, k1, k2, sample_cov)
    shape = channels.shape
    _, height, width = shape
    scratch = scratch or _Scratch()
    if channels.dtype == np.uint8 and win * win * 2**14 < 2**24:
        # Centred pixels, their products and every window sum of those are integers below 2**24,
        # exact in float32; the centred pixels and their products also fit int16.
        dtype: type = np.float32
        offset = float(_CENTRE)
        centred = channels.astype(np.int16).reshape(-1)
        centred -= _CENTRE
        values = scratch.get("values", centred.size, np.float32)
        np.copyto(values, centred)
    else:
        # Centring on the image's own mean keeps the float64 sums small; any constant works,
        # because covariances do not depend on it and ``m`` adds it back.
        dtype = np.float64
        offset = float(channels.mean(dtype=np.float64))
        centred = values = channels.astype(np.float64).reshape(-1) - offset
    full = centred.size
    size = full - (win - 1) * (width + 1)  # positions whose window sums exist (see _window_sums)
    s, m = np.zeros(full, dtype), np.zeros(full, dtype)
    q, r = np.empty(full, dtype), np.empty(full, dtype)
    s_, m_, q_, r_ = s[:size], m[:size], q[:size], r[:size]

    sums = _window_sums(values, win, width, scratch, "sums")
    np.divide(sums, dtype(win), out=s_)
    np.add(sums, dtype(offset * win * win), out=m_)
    np.multiply(m_, m_, out=q_)
    q_ += dtype(c1)
    q_ *= dtype(0.5)
    squared = scratch.get("squared", full, dtype)
    np.multiply(values, values, out=squared)
    squares = _window_sums(squared, win, width, scratch, "squares")
    # The per-pair numerator is S_xy - (s_x s_y - c2); computing r by the very same steps makes
    # numerator and denominator bit-identical for identical images, so they score exactly 1.0.
    np.multiply(s_, s_, out=r_)
    r_ -= dtype(c2)
    np.subtract(squares, r_, out=r_)
    r_ *= dtype(0.5)
    # Windows that run off the image: the last win - 1 rows and columns of every channel (this also
    # covers the tail beyond ``size``).
    for arr in (q, r):
        grid = arr.reshape(shape)
        grid[:, height - win + 1 :, :] = np.inf
        grid[:, :, width - win + 1 :] = np.inf
    return SsimStats(centred=centred, s=s, m=m, q=q, r=r, shape=shape, params=params, size=size)


def _pair_sums(
    pairs: Sequence[tuple[SsimStats, SsimStats]], scratch: _Scratch, smap: np.ndarray | None = None
) -> list[float]:
    """Sums of the SSIM maps of each pair over the interior (all pairs of one shape and options).

    With n = win², window sums S and the sample covariance factor k = n / (n − 1), scikit-image's
    ``(2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` is, after multiplying the
    luminance fraction by n²/2 and the contrast-structure fraction by n / (2k) (both cancel):

        (m_x m_y + c1)(S_xy − (s_x s_y − c2)) / ((q_x + q_y)(r_x + r_y))

    with c1 = C1 n² / 2 and c2 = C2 n / (2k). Only S_xy needs both images' pixels.

    The work runs in blocks of output positions (a block's window sums need a halo of pixels beyond
    it), and block by block for all the pairs, so that an image that occurs in several pairs has its
    part of the block read from memory once and then found in the CPU cache. With ``smap`` (one
    pair only) the flat map is also written there.
    """
    first = pairs[0][0]
    c1, c2 = _constants(*first.params)
    win, width = first.params[1], first.shape[2]
    dtype = first.s.dtype.type
    halo = (win - 1) * (width + 1)
    size = first.size
    totals = [0.0] * len(pairs)
    for start in range(0, size, _BLOCK):
        stop = min(start + _BLOCK, size)
        count = stop - start
        pixels, block = slice(start, stop + halo), slice(start, stop)
        product = scratch.get("product", count + halo, dtype)
        exact = scratch.get("product16", count + halo, np.int16) if first.centred.dtype == np.int16 else None
        t = scratch.get("t", count, dtype)
        den = scratch.get("den", count, dtype)
        for index, (a, b) in enumerate(pairs):
            if exact is not None:
                # int16 × int16 is exact here (|x·y| <= 2**14) and, with a plain copy to float32,
                # several times faster than letting numpy cast inside the multiplication.
                np.multiply(a.centred[pixels], b.centred[pixels], out=exact)
                np.copyto(product, exact)
            else:
                np.multiply(a.centred[pixels], b.centred[pixels], out=product)
            num = _window_sums(product, win, width, scratch, "cross")
            np.multiply(a.s[block], b.s[block], out=t)
            t -= dtype(c2)
            num -= t
            np.multiply(a.m[block], b.m[block], out=t)
            t += dtype(c1)
            num *= t
            np.add(a.q[block], b.q[block], out=t)
            np.add(a.r[block], b.r[block], out=den)
            den *= t
            num /= den
            # Pairwise summation (numpy's default on a contiguous array) keeps float32 within ~1e-6;
            # blocks add up in float64. (Summing each block in float64 would cost ~8 % more.)
            totals[index] += float(np.add.reduce(num, dtype=num.dtype))
            if smap is not None:
                smap[start:stop] = num
    return totals


def _check_pair(a: SsimStats, b: SsimStats) -> None:
    if a.shape != b.shape or a.params != b.params:
        raise InputError(
            f"ssim: cannot compare images of shapes {a.shape} and {b.shape} (channels first) "
            "or prepared with different options"
        )


def _pair_score(a: SsimStats, b: SsimStats, scratch: _Scratch | None = None) -> float:
    _check_pair(a, b)
    return _pair_sums([(a, b)], scratch or _Scratch())[0] / a.interior_size


def _pair_map(a: SsimStats, b: SsimStats) -> np.ndarray:
    """The SSIM map over the interior, (C, H − win + 1, W − win + 1), float64."""
    _check_pair(a, b)
    channels, height, width = a.shape
    win = a.params[1]
    flat = np.zeros(channels * height * width, dtype=np.float64)
    _pair_sums([(a, b)], _Scratch(), smap=flat[: a.size])
    return flat.reshape(a.shape)[:, : height - win + 1, : width - win + 1].copy()


def _default_range(im: np.ndarray) -> float:
    if np.issubdtype(im.dtype, np.bool_):
        return 1.0
    if np.issubdtype(im.dtype, np.integer):
        info = np.iinfo(im.dtype)
        return float(info.max) - float(info.min)
    raise ValueError("data_range is required for floating-point images (e.g. 1.0 or 255.0)")
