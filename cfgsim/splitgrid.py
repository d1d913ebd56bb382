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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cfgsim.axisvalues import axis_values_from_infotext, parse_axis_values
from cfgsim.errors import InputError
from cfgsim.gridscan import (
    MIN_CELL,
    MIN_EVIDENCE,
    _Axis,
    _labelled_layout,
)

# A pixel is background when every channel is within this of the background colour (JPEG q≈70
# moves flat white by a few levels and rings next to text by more).
BACKGROUND_TOLERANCE = 40
# Grey levels below the background that count as label text: the WebUI draws active labels black
# and inactive ones (a prompt matrix's) #999999, 102 levels below white.
INK_CONTRAST = 80
# A gap between cells (a margin without WebUI-placed labels) must explain the borders this much
# better than no gap (no margin): white image edges next to each other look like either.
GAP_EVIDENCE = 1.25
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


__all__ = ["SplitResult", "axis_values_from_infotext", "parse_axis_values", "split_grid"]
