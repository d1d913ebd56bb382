"""Cutting a WebUI X/Y plot grid into its cells.

People publish probe results as X/Y plot grids (often downscaled, often as JPEG). To compare those
cells with new images, the grid is cut back into cells. The WebUI lays a grid out as
(``modules.images.draw_grid_annotations``): a background-coloured (white) margin on the left for
the row labels and on top for the column labels, no margin right or bottom, ``rows × cols``
equal cells, optionally ``margin`` px of background between cells. Knowing ``rows`` and ``cols``,
the layout has three unknowns per axis side: where the cells start (the label margin) and the
gap between cells; the cell size follows from them and the image size.

They are found from 1-D profiles of the image along each axis:

- how much of each column (row) is background: margins and gaps are nearly all background (label
  text is sparse), cells are content;
- where the label text (dark ink) is: the WebUI centres the labels in their margin, so the ink
  in a true margin is centred on it, which white image content at the cells' edges is not;
- how strongly each column (row) differs from its neighbours: cell borders are edges across the
  whole grid.

Every candidate layout whose margins and gaps pass the first two tests is scored by the mean edge
strength at the cell borders it predicts; the best wins (the gap jointly for both axes, as the
WebUI draws one margin size). This works on grids without labels
(margin 0), with gaps, on downscaled copies (sizes are not whole numbers any more, the edges
spread over two pixels) and on JPEG copies (background is "near" the background colour).

The WebUI draws a margin only to hold labels, so without labels found where the WebUI puts them
there is no margin. What was found comes with a ``confidence`` (0-1) and the ``evidence`` for it:
labels placed as the WebUI places them, and how clearly the cell borders stand out. Where
neither shows the layout (white image backgrounds meeting white, label-like text inside the
cells) the confidence is low and the command line refuses or warns, naming what it saw; the
caller can then state the layout (``labels=False``, ``margins=``, ``gap=``). A grid drawn by
cfgsim records its cell boxes in its metadata (``grid_layout``): those are cut exactly.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.infotext import Infotext

# A pixel is background when every channel is within this of the background colour (JPEG q≈70
# moves flat white by a few levels and rings next to text by more).
BACKGROUND_TOLERANCE = 40
# A label margin is background when at least this share of its pixels is (label text is sparse:
# WebUI margins measure 0.87-0.97, JPEG and downscaled copies included); a gap between cells when
# this share is (a downscaled gap of 1-2 px is mostly blend of background and image).
MARGIN_SHARE = 0.75
BACKGROUND_SHARE = 0.55
MIN_CELL = 8  # px: smaller cells cannot be told apart from label text
# Grey levels below the background that count as label text: the WebUI draws active labels black
# and inactive ones (a prompt matrix's) #999999, 102 levels below white.
INK_CONTRAST = 80
LABEL_WEIGHT = 3.0  # grey levels of border edge strength that one pixel of label misplacement costs
# A gap between cells (a margin without WebUI-placed labels) must explain the borders this much
# better than no gap (no margin): white image edges next to each other look like either.
GAP_EVIDENCE = 1.25
MARGIN_EVIDENCE = 1.25
MIN_EVIDENCE = 2.0  # ... and by at least this many grey levels (a blank image has no edges at all)
# Below this confidence the command line refuses to cut; below WARN_CONFIDENCE it warns.
REFUSE_CONFIDENCE = 0.5
WARN_CONFIDENCE = 0.8


@dataclass
class SplitResult:
    """The cells of a grid (``cells[row][col]``, all ``cell_size``) and the layout that was found.

    ``margins`` = (left, top) label margins in px; ``gap`` = (x, y) px between cells;
    ``axis_values`` = (x values, y values) from the grid's infotext when it names them (either may
    be None when missing or when its count does not match the grid), None when it names neither.
    """

    cells: list[list[Image.Image]]
    margins: tuple[int, int]
    cell_size: tuple[int, int]
    axis_values: tuple[list[str] | None, list[str] | None] | None = None
    gap: tuple[float, float] = (0.0, 0.0)
    #: How sure the layout is, 0-1: at least WARN_CONFIDENCE is sure, below REFUSE_CONFIDENCE the
    #: command line refuses to cut (see ``evidence``).
    confidence: float = 1.0
    #: What the layout rests on: "metadata" (cfgsim's recorded cell boxes), "given" (the caller's
    #: margins and gap), "labels" (labels placed as the WebUI places them), "borders" (no labels:
    #: no margins, cut where the cell borders are).
    method: str = "borders"
    #: One line saying what was seen, for a warning or a refusal.
    evidence: str = ""


def split_grid(
    image: Image.Image,
    rows: int | None = None,
    cols: int | None = None,
    *,
    infotext: str | None = None,
    background: tuple[int, int, int] | None = None,
    labels: bool | None = None,
    margins: tuple[int, int] | None = None,
    gap: float | None = None,
    layout: Mapping[str, Any] | None = None,
) -> SplitResult:
    """Cut ``image``, an X/Y grid of ``rows × cols`` cells, into its cells (see the module docstring).

    ``infotext``: the grid's parameters (default: the image's own PNG ``parameters``); the X/Y plot's
    "X Values"/"Y Values" give ``axis_values``. ``background``: the margin colour (default: white).
    What the caller knows overrides the search: ``layout`` (the ``grid_layout`` cfgsim records in a
    grid's metadata: cut exactly; rows and cols default to its own), ``margins`` = (left, top) px,
    ``gap`` px between cells, ``labels=False`` (the grid has no labels, so no margins).
    """
    if infotext is None:
        text = image.info.get("parameters")
        infotext = text if isinstance(text, str) else None
    if layout is not None:
        return _split_by_layout(image, layout, rows, cols, infotext)
    if rows is None or cols is None:
        raise InputError(
            "split grid: give the number of rows and columns (the grid records no cfgsim layout)"
        )
    _check_counts(rows, cols)
    width, height = image.size
    if width < cols * MIN_CELL or height < rows * MIN_CELL:
        raise InputError(
            f"split grid: a {width}x{height} image cannot hold {rows} rows × {cols} columns "
            f"(cells would be under {MIN_CELL} px)"
        )
    if gap is not None and not (isinstance(gap, (int, float)) and gap >= 0 and math.isfinite(gap)):
        raise InputError(f"split grid: the gap must be a number of px, 0 or more (got {gap!r})")
    rgb = image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.int16)
    bg = np.array(background if background is not None else (255, 255, 255), dtype=np.int16)
    is_bg = np.all(np.abs(pixels - bg) <= BACKGROUND_TOLERANCE, axis=2)
    grey = pixels.astype(np.float32).mean(axis=2)
    # Label text: clearly darker than the background (the WebUI draws it black or grey, anti-aliased).
    ink = grey < float(bg.mean()) - INK_CONTRAST

    # The WebUI uses one "grid margins" value for both axes and downscaling keeps it proportional,
    # so one gap serves both axes.
    if gap is not None:
        gaps = np.array([float(gap)])
    else:
        per_axis = [
            min(64.0, length / count / 4) for length, count in ((width, cols), (height, rows)) if count > 1
        ]
        gaps = np.arange(0.0, (min(per_axis) if per_axis else 0.0) + 0.01, 0.5)

    label_note = ""
    if margins is not None:
        left, top = _check_margins(margins, width, height, rows, cols)
        g = _gap_for(is_bg, grey, ink, rows=rows, cols=cols, gaps=gaps, left=left, top=top)
        method = "given"
    else:
        found = (
            _labelled_layout(is_bg, grey, ink, rows=rows, cols=cols, gaps=gaps)
            if labels is not False
            else None
        )
        if found is not None:
            left, top, g = found
            method = "labels"
        else:
            # The WebUI draws a margin only to hold labels: without labels there is none.
            left = top = 0
            g = _gap_for(is_bg, grey, ink, rows=rows, cols=cols, gaps=gaps, left=0, top=0)
            method = "borders"
            if labels is None:
                label_note = _label_like_text(is_bg, grey, ink, rows=rows, cols=cols)
    gap_note = ""
    if g and gap is None and method != "labels":
        # A band of background at every cell border is a gap only if the cells' own edges next to
        # it are content: white image edges make the same bands. Unsure, the WebUI's default wins.
        share = _edge_background(is_bg, rows=rows, cols=cols, left=left, top=top, gap=g)
        if share >= 0.5:
            gap_note = (
                f"the {g:g} px white bands at the cell borders may be a gap between cells or white image "
                f"edges ({share:.0%} of the cells' own edge pixels are background too): cut with no gap, "
                "the WebUI's default (give the gap if there is one)"
            )
            g = 0.0
    gap_x = g if cols > 1 else 0.0
    gap_y = g if rows > 1 else 0.0
    cw = (width - left - (cols - 1) * gap_x) / cols
    ch = (height - top - (rows - 1) * gap_y) / rows
    if cw < 1 or ch < 1:
        raise InputError(
            f"split grid: margins {left}x{top} px and a gap of {g:g} px leave no room for the cells"
        )

    contrast = _border_contrast(
        grey, rows=rows, cols=cols, left=left, top=top, cw=cw, ch=ch, gap=(gap_x, gap_y)
    )
    visible = 1.0 if contrast is None else float(np.clip((contrast - 1.0) / 2.0, 0.0, 1.0))
    borders = (
        "there are no inner cell borders to see"
        if contrast is None
        else f"the cell borders stand out {contrast:.1f}x from the image's typical edges"
    )
    if method == "given":
        confidence = 1.0 if gap is not None else 0.8 + 0.2 * visible
        evidence = f"margins {left}x{top} px as given; {borders}"
    elif method == "labels":
        confidence = 0.8 + 0.2 * visible
        evidence = f"labels sit where the WebUI puts them (left margin {left} px, top {top} px); {borders}"
    elif label_note:
        confidence = 0.3 + 0.4 * visible
        evidence = f"no WebUI labels found, but {label_note}: cut with no margins; {borders}"
    else:
        confidence = (0.6 if labels is False else 0.55) + 0.4 * visible
        told = "no labels, as told" if labels is False else "no labels found"
        evidence = f"{told}: no margins; {borders}"
    if g:
        evidence += f"; a gap of {g:g} px between cells"
    if gap_note:
        confidence = min(confidence, 0.3 + 0.25 * (0 if label_note else 1))
        evidence += f"; {gap_note}"

    size = (max(1, round(cw)), max(1, round(ch)))
    boxes = [
        [(left + c * (cw + gap_x), top + r * (ch + gap_y), cw, ch) for c in range(cols)] for r in range(rows)
    ]
    return SplitResult(
        cells=_cut(rgb, boxes, size),
        margins=(left, top),
        cell_size=size,
        axis_values=axis_values_from_infotext(infotext, rows, cols),
        gap=(gap_x, gap_y),
        confidence=round(float(confidence), 3),
        method=method,
        evidence=evidence,
    )


def _check_counts(rows: object, cols: object) -> None:
    if (
        isinstance(rows, bool)
        or isinstance(cols, bool)
        or not isinstance(rows, int)
        or not isinstance(cols, int)
    ):
        raise InputError(f"split grid: rows and cols must be whole numbers (got {rows!r}, {cols!r})")
    if rows < 1 or cols < 1:
        raise InputError(f"split grid: rows and cols must be at least 1 (got {rows}x{cols})")


def _check_margins(margins: object, width: int, height: int, rows: int, cols: int) -> tuple[int, int]:
    try:
        left, top = (int(v) for v in margins)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(
            f"split grid: margins must be two whole numbers of px, left and top (got {margins!r})"
        ) from None
    if left < 0 or top < 0 or width - left < cols * MIN_CELL or height - top < rows * MIN_CELL:
        raise InputError(
            f"split grid: margins {left}x{top} px do not fit a {width}x{height} grid of {rows}x{cols} cells"
        )
    return left, top


def _cut(
    rgb: Image.Image, boxes: list[list[tuple[float, float, float, float]]], size: tuple[int, int]
) -> list:
    """The cells at ``boxes`` (x, y, w, h; fractional after downscaling), each brought to ``size``."""
    cells = []
    for row in boxes:
        row_cells = []
        for x0, y0, w, h in row:
            cell = rgb.crop((round(x0), round(y0), round(x0 + w), round(y0 + h)))
            if cell.size != size:
                cell = cell.resize(size, Image.Resampling.LANCZOS)
            row_cells.append(cell)
        cells.append(row_cells)
    return cells


def _layout_axis_values(
    layout: Mapping[str, Any], n_rows: int, n_cols: int
) -> tuple[list[str] | None, list[str] | None] | None:
    """(column labels, row values) as cfgsim drew them, when the layout records them."""
    columns = layout.get("columns")
    rows = layout.get("row_values")
    x = [str(c) for c in columns] if isinstance(columns, list) and len(columns) == n_cols else None
    y = [str(r) for r in rows] if isinstance(rows, list) and len(rows) == n_rows else None
    return (x, y) if x or y else None


def _split_by_layout(
    image: Image.Image, layout: Mapping[str, Any], rows: int | None, cols: int | None, infotext: str | None
) -> SplitResult:
    """Cut exactly at the cell boxes cfgsim recorded (scaled when the image was resized since)."""
    try:
        n_rows, n_cols = int(layout["rows"]), int(layout["cols"])
        image_w, image_h = (int(v) for v in layout["image_size"])
        boxes = [[float(v) for v in box] for box in layout["boxes"]]
        if len(boxes) != n_rows * n_cols or any(len(box) != 4 for box in boxes) or image_w < 1 or image_h < 1:
            raise ValueError("the boxes do not match rows x cols")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"split grid: the grid's recorded cfgsim layout is damaged ({exc})") from None
    if (rows is not None and rows != n_rows) or (cols is not None and cols != n_cols):
        raise InputError(
            f"split grid: the grid's cfgsim metadata records {n_rows}x{n_cols} cells, not {rows}x{cols}"
        )
    sx, sy = image.width / image_w, image.height / image_h
    if abs(sx - sy) > 0.02 * max(sx, sy):
        raise InputError(
            f"split grid: the grid was {image_w}x{image_h} px when cfgsim drew it and is "
            f"{image.width}x{image.height} now: not a resized copy (cut it with --rows/--cols and --margins)"
        )
    scaled = [(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy) for x0, y0, x1, y1 in boxes]
    size = (max(1, round(scaled[0][2])), max(1, round(scaled[0][3])))
    grid = [scaled[r * n_cols : (r + 1) * n_cols] for r in range(n_rows)]
    left, top = round(scaled[0][0]), round(scaled[0][1])
    gap_x = (scaled[1][0] - scaled[0][0] - scaled[0][2]) if n_cols > 1 else 0.0
    gap_y = (scaled[n_cols][1] - scaled[0][1] - scaled[0][3]) if n_rows > 1 else 0.0
    return SplitResult(
        cells=_cut(image.convert("RGB"), grid, size),
        margins=(left, top),
        cell_size=size,
        axis_values=_layout_axis_values(layout, n_rows, n_cols)
        or axis_values_from_infotext(infotext, n_rows, n_cols),
        gap=(round(gap_x, 3), round(gap_y, 3)),
        confidence=1.0,
        method="metadata",
        evidence="the cell boxes recorded in the grid's cfgsim metadata",
    )


def _border_contrast(
    grey: np.ndarray,
    *,
    rows: int,
    cols: int,
    left: int,
    top: int,
    cw: float,
    ch: float,
    gap: tuple[float, float],
) -> float | None:
    """How much the predicted cell borders stand out: the mean step across them over the typical
    (median) step between neighbouring pixels inside the cells; None when there is no inner border."""
    body = grey[top:, left:]
    if body.shape[0] < 2 or body.shape[1] < 2:
        return None
    steps_x = np.abs(np.diff(body, axis=1)).mean(axis=0)  # per column border x|x+1
    steps_y = np.abs(np.diff(body, axis=0)).mean(axis=1)
    found = []
    for steps, count, size, g in ((steps_x, cols, cw, gap[0]), (steps_y, rows, ch, gap[1])):
        for k in range(1, count):
            for edge in {k * (size + g) - g, k * (size + g)}:  # the end of one cell, the start of the next
                i = round(edge) - 1
                near = steps[max(0, i - 1) : i + 2]
                if near.size:
                    found.append(float(near.max()))
    if not found:
        return None
    typical = max(1.0, float(np.median(np.concatenate([steps_x, steps_y]))))
    return float(np.mean(found)) / typical


def _edge_background(is_bg: np.ndarray, *, rows: int, cols: int, left: int, top: int, gap: float) -> float:
    """Share of background in the cells' outermost pixel columns/rows that face the gaps."""
    body = is_bg[top:, left:]
    height, width = body.shape
    shares = []
    for count, length, axis in ((cols, width, 1), (rows, height, 0)):
        if count < 2:
            continue
        cell = (length - (count - 1) * gap) / count
        for k in range(1, count):
            end = k * cell + (k - 1) * gap  # where cell k-1 ends
            for pos in (math.floor(end) - 1, math.ceil(end + gap)):  # its last pixel, the next cell's first
                if 0 <= pos < length:
                    line = body[:, pos] if axis == 1 else body[pos, :]
                    shares.append(float(line.mean()))
    return float(np.mean(shares)) if shares else 0.0


def _label_like_text(is_bg: np.ndarray, grey: np.ndarray, ink: np.ndarray, *, rows: int, cols: int) -> str:
    """What in the image looks like labels in a margin without being placed as the WebUI places
    them ("" when nothing does): such a grid may have margins the search could not confirm."""
    found = []
    for count, axis, side in ((cols, 1, "left"), (rows, 0, "top")):
        margin_axis = _Axis(is_bg, grey, ink, count, axis=axis)
        candidates = np.nonzero(margin_axis.margin_ok[1:])[0]
        if candidates.size:
            found.append(f"text-like marks on a background band at the {side} ({int(candidates[-1]) + 1} px)")
    return " and ".join(found)


def _gap_for(
    is_bg: np.ndarray,
    grey: np.ndarray,
    ink: np.ndarray,
    *,
    rows: int,
    cols: int,
    gaps: np.ndarray,
    left: int,
    top: int,
) -> float:
    """The gap between cells with the margins fixed, scored by the cell borders' edges; a gap must
    explain the borders clearly better than none (white image edges next to each other look like
    a gap)."""
    if gaps.size == 1:
        return float(gaps[0])
    x_scores = _Axis(is_bg[top:, left:], grey[top:, left:], ink[top:, left:], cols, axis=1).fixed(gaps)
    y_scores = _Axis(is_bg[top:, left:], grey[top:, left:], ink[top:, left:], rows, axis=0).fixed(gaps)
    total = np.where((x_scores >= 0) & (y_scores >= 0), x_scores + y_scores, -1.0)
    g = int(np.argmax(total))
    if g and total[0] >= 0 and total[g] < GAP_EVIDENCE * total[0] + MIN_EVIDENCE:
        g = 0
    return float(gaps[g])


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


# -- axis values from the infotext ---------------------------------------------------------------

_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")


def parse_axis_values(text: str) -> list[str]:
    """The values of an X/Y plot axis as the WebUI expands them: comma-separated (CSV quoting),
    integer ranges ``1-5``, ``1-9 (+2)`` and ``1-10 [4]`` expanded."""
    values = [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row]
    out: list[str] = []
    for value in values:
        if not value:
            continue
        m = _RANGE.fullmatch(value)
        mc = _RANGE_COUNT.fullmatch(value)
        if m:
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", ""))
            step = int(m.group(3)) if m.group(3) else 1
            if step and (end - start) / step <= 10_000:
                out.extend(str(v) for v in range(start, end + 1, step))
                continue
        elif mc:
            start, end, num = (
                int(mc.group(1).replace(" ", "")),
                int(mc.group(2).replace(" ", "")),
                int(mc.group(3)),
            )
            if 0 < num <= 10_000:
                out.extend(str(int(v)) for v in np.linspace(start, end, num))
                continue
        out.append(value)
    return out


def axis_values_from_infotext(
    infotext: str | None, rows: int, cols: int
) -> tuple[list[str] | None, list[str] | None] | None:
    """(x values, y values) named by an X/Y plot grid's infotext, or None when it names neither.

    A WebUI X/Y plot grid carries its first cell's infotext plus ``Script``, ``X Type``,
    ``X Values`` (and ``Fixed X Values`` for seeds: the seeds actually used). A list whose length
    does not match the grid is not used (it would label the wrong cells).
    """
    if not infotext:
        return None
    params = Infotext.parse(infotext).params
    if not any(key in params for key in ("X Values", "Y Values", "Fixed X Values", "Fixed Y Values")):
        return None
    found: list[list[str] | None] = []
    for axis, count in (("X", cols), ("Y", rows)):
        raw = params.get(f"Fixed {axis} Values") or params.get(f"{axis} Values")
        values = parse_axis_values(raw) if raw else None
        found.append(values if values is not None and len(values) == count else None)
    if found[0] is None and found[1] is None:
        return None
    return found[0], found[1]


__all__ = ["SplitResult", "axis_values_from_infotext", "parse_axis_values", "split_grid"]
