"""The layout search of :mod:`cfgsim.splitgrid`: the 1-D profiles along one axis (background share,
label ink, border edges) and the candidate layouts they allow, scored by the label placement the
WebUI uses (``modules.images.draw_grid_annotations`` centres labels in their margin)."""

from __future__ import annotations

import numpy as np

# A label margin is background when at least this share of its pixels is (label text is sparse:
# WebUI margins measure 0.87-0.97, JPEG and downscaled copies included); a gap between cells when
# this share is (a downscaled gap of 1-2 px is mostly blend of background and image).
MARGIN_SHARE = 0.75
BACKGROUND_SHARE = 0.55
MIN_CELL = 8  # px: smaller cells cannot be told apart from label text
LABEL_WEIGHT = 3.0  # grey levels of border edge strength that one pixel of label misplacement costs
# A margin without WebUI-placed labels must explain the borders this much better than none.
MARGIN_EVIDENCE = 1.25
MIN_EVIDENCE = 2.0  # ... and by at least this many grey levels (a blank image has no edges at all)


class _Axis:
    """The 1-D profiles of one axis (``axis=1``: columns, for the left margin; ``axis=0``: rows, for
    the top margin) and the tests and scores of candidate layouts along it."""

    def __init__(self, is_bg: np.ndarray, grey: np.ndarray, ink: np.ndarray, count: int, axis: int) -> None:
        other = 0 if axis == 1 else 1
        self.count = count
        self.length = length = is_bg.shape[axis]
        share = is_bg.mean(axis=other)  # per position: share of background pixels
        self.cumulative = np.concatenate([[0.0], np.cumsum(share)])
        self.positions = np.arange(length + 1, dtype=float)
        # Edge strength at the border between positions x-1 and x (index x). A border blurred over
        # two pixels by downscaling still counts mostly: the neighbours' differences count 3/4.
        diff = np.abs(np.diff(grey, axis=axis)).mean(axis=other)
        edge = np.zeros(length + 1)
        edge[1:length] = diff
        strength = np.maximum(edge, np.maximum(np.roll(edge, 1), np.roll(edge, -1)) * 0.75)
        strength[0] = strength[length] = 0.0
        self.strength = strength
        self.baseline = max(4.0, 2.0 * float(np.median(strength[1:length]))) if length > 2 else 4.0

        # A label margin is background with text in it, and the WebUI centres the labels in it:
        # the ink's extent along this axis is centred on the margin's middle, with blank space at
        # both ends (labels are wrapped to the margin). White image content passes the first test
        # but rarely the others.
        inked = ink.sum(axis=other) > 0
        self.margins = margins = np.arange(0, length // 2 + 1)
        first_ink = int(np.argmax(inked)) if inked.any() else length
        idx = np.where(inked, np.arange(length), -1)
        last_before = np.concatenate([[-1], np.maximum.accumulate(idx)])[margins]  # last ink < margin
        centre = (first_ink + last_before + 1) / 2
        clear = np.maximum(1, 0.02 * margins)
        centred = (
            (last_before >= first_ink)
            & (first_ink >= clear)
            & (margins - 1 - last_before >= clear)
            & (np.abs(centre - margins / 2) <= np.maximum(2.5, 0.04 * margins))
        )
        self.margin_ok = (margins == 0) | (
            (self.bg_share(np.zeros(margins.size), margins) >= MARGIN_SHARE) & centred
        )

    def at(self, pos: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(pos).astype(int), 0, self.length)

    def bg_share(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        a, b = self.at(start), self.at(stop)
        return (self.cumulative[b] - self.cumulative[a]) / np.maximum(b - a, 1)

    def bg_pixels(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        # Fractional: a gap of 7.5 px covers less background than one of 8 px.
        return np.interp(stop, self.positions, self.cumulative) - np.interp(
            start, self.positions, self.cumulative
        )

    def cell(self, margin: np.ndarray | float, gap: float) -> np.ndarray | float:
        return (self.length - margin - (self.count - 1) * gap) / self.count

    def scores(self, margins: np.ndarray, gap: float) -> np.ndarray:
        """Mean edge strength at the borders each margin predicts with ``gap`` (-1: impossible)."""
        margins = np.asarray(margins)
        cell = self.cell(margins, gap)
        ok = self.margin_ok[np.clip(margins, 0, self.margins.size - 1)] & (margins < self.margins.size)
        ok &= cell >= MIN_CELL
        total = np.where(margins > 0, self.strength[self.at(margins)], 0.0)
        n_borders = (margins > 0).astype(float)
        fit = np.zeros(margins.shape)
        for k in range(1, self.count):
            end = margins + k * cell + (k - 1) * gap  # where cell k-1 ends
            start = end + gap  # where cell k starts
            total += self.strength[self.at(start)]
            n_borders += 1
            if gap > 0:
                ok &= self.bg_share(end, start) >= BACKGROUND_SHARE
                total += self.strength[self.at(end)]
                n_borders += 1
                # Between gaps that round to the same borders: the one covering the most
                # background and the least content (far too small to outweigh an edge).
                fit += 2 * self.bg_pixels(end, start) - gap
        mean = (
            np.where(n_borders > 0, total / np.maximum(n_borders, 1), self.baseline) + 1e-4 * fit / self.count
        )
        return np.where(ok, mean, -1.0)

    def best(self, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per gap: the best score (-1: nothing fits) and the margin that gets it (ties: smaller)."""
        scores = np.full(gaps.size, -1.0)
        margins = np.zeros(gaps.size, dtype=int)
        for gi, gap in enumerate(gaps if self.count > 1 else gaps[:1]):
            mean = self.scores(self.margins, float(gap))
            i = int(np.argmax(mean))
            # Without the WebUI's label layout (see _labelled_layout) a margin must explain the
            # borders clearly better than none: white image edges look like an empty margin.
            if i and mean[0] >= 0 and mean[i] < MARGIN_EVIDENCE * mean[0] + MIN_EVIDENCE:
                i = 0
            scores[gi], margins[gi] = mean[i], self.margins[i]
        if self.count == 1:  # no gaps on this axis: every gap candidate is the same layout
            scores[:], margins[:] = scores[0], margins[0]
        return scores, margins

    def fixed(self, gaps: np.ndarray) -> np.ndarray:
        """Per gap: the score with no margin (-1: the gaps are not background)."""
        if self.count == 1:
            return np.full(gaps.size, float(self.scores(np.array([0]), 0.0)[0]))
        return np.array([float(self.scores(np.array([0]), float(g))[0]) for g in gaps])


def _labelled_layout(
    is_bg: np.ndarray, grey: np.ndarray, ink: np.ndarray, *, rows: int, cols: int, gaps: np.ndarray
) -> tuple[int, int, float] | None:
    """The layout of a grid whose labels show it, or None when no candidate has WebUI labels.

    The WebUI makes the left margin 3/4 of a cell wide, centres each row's label in its row and
    each column's label over its column. A layout whose margins hold text laid out exactly so is
    taken even when the cell borders are invisible (white image backgrounds meeting white).
    """
    width = is_bg.shape[1]
    x_axis = _Axis(is_bg, grey, ink, cols, axis=1)
    y_axis = _Axis(is_bg, grey, ink, rows, axis=0)
    tops = np.nonzero(y_axis.margin_ok)[0]
    best: tuple[float, int, int, float] | None = None
    for gap in (gaps if cols > 1 or rows > 1 else gaps[:1]).tolist():
        gx, gy = (gap if cols > 1 else 0.0), (gap if rows > 1 else 0.0)
        # left = 3/4 of a cell: left = 0.75 * (width - left - (cols - 1) * gap) / cols.
        prior = 0.75 * (width - (cols - 1) * gx) / (cols + 0.75)
        lefts = [0] + [x for x in range(int(prior) - 1, int(prior) + 3) if 0 < x < x_axis.margins.size]
        top_scores = list(zip(tops.tolist(), y_axis.scores(tops, gy).tolist(), strict=True))
        for left in lefts:
            x_score = float(x_axis.scores(np.array([left]), gx)[0])
            if x_score < 0 or not x_axis.margin_ok[left]:
                continue  # the margin or the gaps are not background
            cw = x_axis.cell(left, gx)
            for top, y_score in top_scores:
                if (left == 0 and top == 0) or y_score < 0:
                    continue
                ch = y_axis.cell(top, gy)
                off_cols = (
                    _column_labels(ink, left=left, top=top, cw=cw, gap=gx, cols=cols) if top > 0 else 0.0
                )
                if off_cols is None:
                    continue
                off_rows = _row_labels(ink, left=left, top=top, ch=ch, gap=gy, rows=rows) if left > 0 else 0.0
                if off_rows is None:
                    continue
                # Visible borders decide; where they are not (white meets white), the labels'
                # placement does: every pixel off centre costs LABEL_WEIGHT grey levels of edge.
                score = x_score + y_score - LABEL_WEIGHT * (off_cols + off_rows)
                if best is None or score > best[0] + 1e-9:
                    best = (score, left, top, gap)
    return None if best is None else (best[1], best[2], best[3])


def _offset(mask: np.ndarray, axis: int, centre: float, tolerance: float) -> float | None:
    """How far the extent of the ink in ``mask`` along ``axis`` (0: y, 1: x) is from ``centre``
    (px), or None when there is no ink or it is off by more than ``tolerance``."""
    present = np.nonzero(mask.any(axis=1 - axis))[0]
    if present.size == 0:
        return None
    off = abs((present[0] + present[-1] + 1) / 2 - centre)
    return off if off <= tolerance else None


def _column_labels(ink: np.ndarray, *, left: int, top: int, cw: float, gap: float, cols: int) -> float | None:
    """Mean offset (px) of the column labels from where the WebUI centres them: over each column,
    in the middle of the top margin; None when a column has no label there."""
    total = 0.0
    for c in range(cols):
        x0 = left + c * (cw + gap)
        band = ink[:top, round(x0) : round(x0 + cw)]
        dx = _offset(band, 1, (round(x0 + cw) - round(x0)) / 2, max(3.0, 0.06 * cw))
        dy = _offset(band, 0, top / 2, max(3.0, 0.15 * top)) if dx is not None else None
        if dx is None or dy is None:
            return None
        total += dx + dy
    return total / cols


def _row_labels(ink: np.ndarray, *, left: int, top: int, ch: float, gap: float, rows: int) -> float | None:
    """Mean offset (px) of the row labels from where the WebUI centres them: beside each row, in the
    middle of the left margin; None when a row has no label there."""
    total = 0.0
    for r in range(rows):
        y0 = top + r * (ch + gap)
        band = ink[round(y0) : round(y0 + ch), :left]
        dy = _offset(band, 0, (round(y0 + ch) - round(y0)) / 2, max(3.0, 0.08 * ch))
        dx = _offset(band, 1, left / 2, max(3.0, 0.06 * left)) if dy is not None else None
        if dx is None or dy is None:
            return None
        total += dx + dy
    return total / rows
