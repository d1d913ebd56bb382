"""The X/Y grid: a column per item, a row per seed, labels, and per-cell score overlays.

The grid looks like the WebUI's own X/Y plot (white margins, black labels centred over the
columns and beside the rows, labels word-wrapped, font size scaled with the cell size) so that a
user reads it the same way, plus per-cell overlays: the score against the reference and its rank,
a border coloured by score, a "REF" badge on the reference, grey cells for failed/skipped images.
Text must be legible on 64 px cells and on 1024 px cells: sizes derive from the cell size and
overlay text shrinks, then gets more compact, until it fits the cell.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from PIL import Image, ImageDraw

from cfgsim.errors import InputError
from cfgsim.imageio import to_rgb
from cfgsim.render.colour import (
    BACKGROUND,
    BADGE_COLOUR,
    BANNER_COLOUR,
    FAILED_FILL,
    FAILED_TITLE,
    MISSING_FILL,
    OVERLAY_ALPHA,
    REF_COLOUR,
    RGB,
    SKIPPED_FILL,
    TEXT,
    colormap,
    normalise,
    score_scale,
)
from cfgsim.render.legend import render_legend
from cfgsim.render.text import ELLIPSIS, TextFont, block_height, draw_lines, fit_font, get_font, wrap_text
from cfgsim.result import FAILED, SKIPPED, MetricScores, ProbeResult
from cfgsim.spec import ProbeSpec

#: The key of ``Image.info`` under which render_grid leaves the grid's layout.
GRID_LAYOUT_INFO = "cfgsim_grid_layout"
MAX_GRID_PIXELS = 300 * 10**6  # ~900 MB as RGB: 20 checkpoints x 12 seeds at 1024 px fit


def _metric_names(result: ProbeResult, metrics: Sequence[str] | None) -> list[str]:
    if metrics is None:
        return list(result.scores)
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [name for name in names if name not in result.scores]
    if unknown:
        known = ", ".join(result.scores) or "none"
        raise InputError(f"metrics {', '.join(unknown)}: not in this result (it has: {known})")
    return names


def _cell_scores(
    result: ProbeResult, scores: MetricScores, item: int, row: int
) -> tuple[float, int | None, bool]:
    """(value, rank, is_mean) shown on one cell: the score against the reference and its rank, or,
    with no reference, the mean similarity to the row's other items (no rank)."""
    if scores.vs_reference is not None and row < len(scores.vs_reference):
        vec = scores.vs_reference[row]
        value = float(vec[item]) if item < len(vec) else float("nan")
        return value, scores.ranks(row)[item] if not math.isnan(value) else None, False
    if row >= len(scores.per_row):
        return float("nan"), None, True
    matrix = scores.per_row[row]
    others = [float(matrix[item, j]) for j in range(matrix.shape[1]) if j != item]
    others = [v for v in others if not math.isnan(v)]
    return (sum(others) / len(others) if others else float("nan")), None, True


def _shown_values(result: ProbeResult, scores: MetricScores) -> list[float]:
    return [
        _cell_scores(result, scores, cell.item, cell.row)[0]
        for cell in result.cells
        if cell.status not in (FAILED, SKIPPED)
    ]


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _grid_cell_size(result: ProbeResult, cell_size: tuple[int, int] | int | None) -> tuple[int, int]:
    if cell_size is not None:
        w, h = (cell_size, cell_size) if isinstance(cell_size, int) else cell_size
        if not (16 <= int(w) <= 8192 and 16 <= int(h) <= 8192):
            raise InputError(f"cell size {w}x{h}: each side must be 16-8192 px")
        return int(w), int(h)
    sizes = Counter(cell.image.size for cell in result.cells if cell.image is not None)
    if not sizes:
        return result.spec.size
    top = max(sizes.values())
    # Most common size; on a tie the spec's size, so a half-failed run still draws at probe size.
    tied = [size for size, count in sizes.items() if count == top]
    return result.spec.size if result.spec.size in tied else tied[0]


def fit_image(image: Image.Image, size: tuple[int, int], background: RGB = (32, 32, 32)) -> Image.Image:
    """``image`` as RGB of exactly ``size``: resized keeping its aspect ratio, centred (letterboxed)."""
    if image.mode != "RGB":
        image = to_rgb(image)
    if image.size == tuple(size):
        return image
    scale = min(size[0] / image.width, size[1] / image.height)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(new, Image.Resampling.LANCZOS)
    if new == tuple(size):
        return resized
    out = Image.new("RGB", size, background)
    out.paste(resized, ((size[0] - new[0]) // 2, (size[1] - new[1]) // 2))
    return out


def preview_warning(spec: ProbeSpec) -> str:
    return f"QUICK PREVIEW \u2014 {spec.effective_steps} steps, not the probe ({spec.steps} steps)"


def _banner_lines(result: ProbeResult) -> list[str]:
    lines = []
    if not result.spec.is_probe:
        lines.append(preview_warning(result.spec))
    if result.interrupted:
        # Cells skipped for their architecture were never going to run; the others were cut short.
        not_run = sum(
            1
            for c in result.cells
            if c.status == SKIPPED
            and c.item < len(result.items)
            and not result.items[c.item].probe_skip_reason
        )
        lines.append(f"INTERRUPTED \u2014 {not_run} image{'s' if not_run != 1 else ''} not run")
    return lines


def _corner_text(result: ProbeResult, names: Sequence[str]) -> str:
    if not names:
        return ""
    ref = result.reference
    if ref.kind in ("item", "image") and ref.label:
        return f"vs {ref.label}"
    if ref.kind in ("item", "image"):
        return "vs reference"
    return "mean similarity"


# -- the grid -----------------------------------------------------------------------------------


def render_grid(
    result: ProbeResult,
    *,
    metrics: Sequence[str] | None = None,
    overlays: bool = True,
    cell_size: tuple[int, int] | int | None = None,
    font_path: str | None = None,
) -> Image.Image:
    """The X/Y grid: a column per item, a row per row value (seed), labels, score overlays.

    ``metrics``: which of ``result.scores`` to show (default all, in order; the first colours the
    borders). ``overlays=False`` gives the plain WebUI-style grid (failed/skipped cells and the
    quick-preview banner stay: they are not decoration). ``cell_size``: (w, h) of every cell;
    default the most common image size. ``font_path``: a TrueType font instead of the search.
    """
    n_items, n_rows = len(result.items), len(result.rows)
    if n_items == 0 or n_rows == 0:
        raise InputError("grid: the result has no items or no rows: nothing to draw")
    # An external reference image is shown too: the first column, marked, on every row.
    ref_image = result.reference.image if result.reference.kind == "image" else None
    first = 1 if ref_image is not None else 0
    n_cols = n_items + first
    names = _metric_names(result, metrics) if overlays else []
    font_path = fit_font(font_path)
    cw, ch = _grid_cell_size(result, cell_size)
    # Margins take about 3/4 of a column and 1/3 of a row at most; beyond the limit, the cells of
    # a grid whose size the caller did not fix are drawn smaller rather than exhausting memory.
    estimate = (n_cols + 0.75) * cw * (n_rows + 0.35) * ch
    if estimate > MAX_GRID_PIXELS:
        if cell_size is not None:
            raise InputError(
                f"grid: {n_cols}x{n_rows} cells of {cw}x{ch} px is over "
                f"{MAX_GRID_PIXELS // 10**6} megapixels; use a smaller cell size"
            )
        factor = math.sqrt(MAX_GRID_PIXELS / estimate)
        cw, ch = max(16, int(cw * factor)), max(16, int(ch * factor))

    # Label font size as the WebUI's draw_grid_annotations picks it ((w + h) / 25), kept legible
    # on small cells and not huge on big ones.
    label_font = get_font(min(max((cw + ch) // 25, 12), 72), path=font_path)
    bold_font = get_font(label_font.size, bold=True, path=font_path)
    pad = max(3, label_font.size // 3)
    spacing = label_font.size // 5

    headers = ([f"reference image: {result.reference.label}"] if first else []) + result.labels
    col_lines = [wrap_text(label, label_font, cw - 2 * pad, max_lines=4) for label in headers]
    top_h = block_height(max(len(lines) for lines in col_lines), label_font, spacing) + 2 * pad

    show_rows = not (n_rows == 1 and not result.row_axis)
    row_labels = [result.row_label(r) for r in range(n_rows)] if show_rows else []
    left_w = 0
    if show_rows:
        widest = max(label_font.length(label) for label in row_labels)
        base = cw * 3 // 4  # the WebUI's left margin
        left_w = max(base, min(int(widest) + 2 * pad, max(base, cw)))
    max_row_lines = max(1, (ch - 2 * pad) // (label_font.line_height + spacing))
    row_lines = [
        wrap_text(label, label_font, left_w - 2 * pad, max_lines=max_row_lines) for label in row_labels
    ]

    width = left_w + n_cols * cw
    banners = _banner_lines(result)
    banner_lines = [wrap_text(text, bold_font, width - 2 * pad) for text in banners]
    banner_h = sum(block_height(len(lines), bold_font, spacing) + 2 * pad for lines in banner_lines)

    primary = result.scores[names[0]] if names else None
    scale = score_scale(_shown_values(result, primary)) if primary is not None else (0.0, 1.0)
    legend = None
    if primary is not None:
        legend = _grid_legend(result, primary, scale=scale, width=width, font=label_font, font_path=font_path)
    legend_h = legend.height if legend is not None else 0

    grid_top = banner_h + top_h
    height = grid_top + n_rows * ch + legend_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)

    y = 0
    for lines in banner_lines:
        h = block_height(len(lines), bold_font, spacing) + 2 * pad
        ImageDraw.Draw(canvas).rectangle((0, y, width - 1, y + h - 1), fill=BANNER_COLOUR)
        draw_lines(canvas, lines, bold_font, (pad, y, width - pad, y + h), TEXT, spacing=spacing)
        y += h

    for c, lines in enumerate(col_lines):
        x0 = left_w + c * cw
        draw_lines(
            canvas, lines, label_font, (x0 + pad, banner_h, x0 + cw - pad, grid_top), TEXT, spacing=spacing
        )
    for r, lines in enumerate(row_lines):
        y0 = grid_top + r * ch
        draw_lines(canvas, lines, label_font, (pad, y0, left_w - pad, y0 + ch), TEXT, spacing=spacing)
    if names and left_w > 0:
        # What the numbers are measured against, in the corner above the row labels: smaller than
        # the labels, and left out when it does not fit whole (the legend says it too).
        small = get_font(max(10, label_font.size * 3 // 4), path=font_path)
        room = max(1, (top_h - 2 * pad + spacing) // (small.line_height + spacing))
        corner = wrap_text(_corner_text(result, names), small, left_w - 2 * pad, max_lines=room)
        if not corner[-1].endswith(ELLIPSIS):
            draw_lines(
                canvas, corner, small, (pad, banner_h, left_w - pad, grid_top), (90, 90, 90), spacing=spacing
            )

    for r in range(n_rows):
        if ref_image is not None:
            cell = _render_cell(
                result, -1, r, size=(cw, ch), names=names, scale=scale, overlays=True, font_path=font_path,
                external=ref_image,
            )  # fmt: skip
            canvas.paste(cell, (left_w, grid_top + r * ch))
        for i in range(n_items):
            box = (left_w + (i + first) * cw, grid_top + r * ch)
            cell = _render_cell(
                result, i, r, size=(cw, ch), names=names, scale=scale, overlays=overlays, font_path=font_path
            )
            canvas.paste(cell, box)

    if legend is not None:
        canvas.paste(legend, (0, height - legend_h))
    # Where the cells are, for split-grid: on the result (so its JSON carries it) and on the image
    # (for a caller that saves a grid drawn from a copy of the result).
    layout = grid_layout(
        canvas.size,
        [(left_w + i * cw, grid_top + r * ch) for r in range(n_rows) for i in range(n_cols)],
        (cw, ch),
        n_rows,
        n_cols,
        columns=headers,
        row_values=list(result.rows) if len(result.rows) == n_rows else (),
    )
    result.grid_layout = layout
    canvas.info[GRID_LAYOUT_INFO] = layout
    return canvas


def grid_layout(
    image_size: tuple[int, int],
    origins: Sequence[tuple[int, int]],
    cell: tuple[int, int],
    rows: int,
    cols: int,
    *,
    columns: Sequence[str] = (),
    row_values: Sequence[object] = (),
) -> dict[str, object]:
    """The layout record split-grid cuts by: rows, cols, the image size and each cell's box
    [x0, y0, x1, y1] in row-major order; ``columns`` the item labels as drawn (the grid may be in
    family-tree order, not the result's) and ``row_values`` the rows' values (seeds)."""
    return {
        "rows": rows,
        "cols": cols,
        "image_size": list(image_size),
        "boxes": [[x, y, x + cell[0], y + cell[1]] for x, y in origins],
        "columns": list(columns),
        "row_values": [str(v) for v in row_values],
    }


def _render_cell(
    result: ProbeResult,
    item: int,
    row: int,
    *,
    size: tuple[int, int],
    names: Sequence[str],
    scale: tuple[float, float],
    overlays: bool,
    font_path: str | None,
    external: Image.Image | None = None,
) -> Image.Image:
    """One cell; ``external``: the external reference image, drawn as a marked reference cell."""
    if external is not None:
        return _decorate(fit_image(external, size).convert("RGBA"), ["reference image"], REF_COLOUR,
                         True, size=size, font_path=font_path)  # fmt: skip
    cell = result.cell(item, row)
    if cell is None or cell.status in (FAILED, SKIPPED) or cell.image is None:
        if cell is None:
            status, reason, fill = "NO IMAGE", "this cell was not run", MISSING_FILL
        elif cell.status == FAILED:
            status, reason, fill = "FAILED", cell.reason, FAILED_FILL
        elif cell.status == SKIPPED:
            status, reason, fill = "SKIPPED", cell.reason, SKIPPED_FILL
        else:
            status, reason, fill = "NO IMAGE", cell.reason or "the image was not kept", MISSING_FILL
        return _status_cell(size, status, reason, fill=fill, font_path=font_path)

    image = fit_image(cell.image, size).convert("RGBA")
    if not overlays or not names:
        return image.convert("RGB")

    is_ref = result.reference.kind == "item" and result.reference.index == item
    compact: list[str] = []
    if is_ref:
        texts = ["reference"]
        colour = REF_COLOUR
    else:
        texts = []
        for k, name in enumerate(names):
            scores = result.scores[name]
            value, rank, is_mean = _cell_scores(result, scores, item, row)
            if k == 0:
                colour = colormap(normalise(value, scale))
            head = f"{scores.label} mean" if is_mean else scores.label
            rank_text = f"  #{rank}" if rank is not None else ""
            texts.append(f"{head} {_fmt(value)}{rank_text}")
            short = _fmt(value) + (f" #{rank}" if rank is not None else "")
            compact.append(short if len(names) == 1 else f"{scores.label[:4]} {short}")
    return _decorate(
        image, texts, colour, is_ref, size=size, font_path=font_path, compact=None if is_ref else compact
    )


def _decorate(
    image: Image.Image,
    texts: Sequence[str],
    colour: RGB,
    is_ref: bool,
    *,
    size: tuple[int, int],
    font_path: str | None,
    compact: Sequence[str] | None = None,
) -> Image.Image:
    """The overlay box with ``texts``, the border in ``colour`` and, for a reference, its badge."""
    cw, ch = size
    unit = min(cw, ch)
    border = min(max(2, round(unit / 64)), 14)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    inner = cw - 2 * border
    font, lines = _fit_overlay(texts, inner, unit, font_path)
    if font is None and compact is not None:
        font, lines = _fit_overlay(compact, inner, unit, font_path, min_size=7)
    if font is None:
        font, lines = get_font(7, path=font_path), list(texts)

    opad = max(2, font.size // 4)
    box_h = block_height(len(lines), font) + 2 * opad
    draw = ImageDraw.Draw(layer)
    draw.rectangle(
        (border, ch - border - box_h, cw - border - 1, ch - border - 1), fill=(0, 0, 0, OVERLAY_ALPHA)
    )
    draw_lines(
        layer,
        lines,
        font,
        (border + opad, ch - border - box_h + opad, cw - border - opad, ch - border - opad),
        (255, 255, 255, 255),
        align="left",
    )
    if is_ref:
        badge_font = get_font(max(font.size, 8), bold=True, path=font_path)
        bpad = max(2, badge_font.size // 4)
        bw = int(badge_font.length("REF")) + 2 * bpad
        bh = badge_font.line_height + 2 * bpad
        draw.rectangle((border, border, border + bw - 1, border + bh - 1), fill=(*BADGE_COLOUR, 255))
        badge_font.draw(layer, (border + bpad, border + bpad), "REF", (0, 0, 0, 255))
    # The border: the reference's in its own colour, doubled by a white inner line so it reads
    # on dark and light images; the others in the colour of their score.
    draw.rectangle((0, 0, cw - 1, ch - 1), outline=(*colour, 255), width=border)
    if is_ref:
        inner_w = max(1, border // 2)
        draw.rectangle(
            (border, border, cw - border - 1, ch - border - 1), outline=(255, 255, 255, 255), width=inner_w
        )
    return Image.alpha_composite(image, layer).convert("RGB")


def _fit_overlay(
    texts: Sequence[str], width: int, unit: int, font_path: str | None, min_size: int = 8
) -> tuple[TextFont | None, list[str]]:
    """The largest font (from the size the cell calls for, down to ``min_size``) at which every
    line fits ``width``; (None, texts) when none does."""
    start = min(max(round(unit / 14), 9), 80)
    size = start
    while size >= min_size:
        font = get_font(size, path=font_path)
        if all(font.length(t) <= width - 2 * max(2, size // 4) for t in texts):
            return font, list(texts)
        size = min(size - 1, int(size * 0.9))
    return None, list(texts)


def _status_cell(
    size: tuple[int, int], status: str, reason: str, *, fill: RGB, font_path: str | None
) -> Image.Image:
    cw, ch = size
    image = Image.new("RGB", size, fill)
    unit = min(cw, ch)
    title_colour = FAILED_TITLE if fill == FAILED_FILL else (255, 255, 255)
    text_colour = (20, 20, 20) if fill == SKIPPED_FILL else (235, 235, 235)
    if fill == SKIPPED_FILL:
        title_colour = (0, 0, 0)
    pad = max(3, unit // 16)
    title_font = get_font(min(max(unit // 9, 9), 90), bold=True, path=font_path)
    while title_font.size > 7 and title_font.length(status) > cw - 2 * pad:
        title_font = get_font(title_font.size - 1, bold=True, path=font_path)
    font = get_font(min(max(unit // 14, 8), 60), path=font_path)
    spacing = font.size // 5
    room = ch - 2 * pad - title_font.line_height - spacing * 2
    max_lines = max(0, (room + spacing) // (font.line_height + spacing))
    lines = wrap_text(reason, font, cw - 2 * pad, max_lines=max_lines) if reason and max_lines else []
    total = title_font.line_height + (spacing * 2 + block_height(len(lines), font) if lines else 0)
    y = (ch - total) / 2
    draw_lines(image, [status], title_font, (pad, y, cw - pad, y + title_font.line_height), title_colour)
    if lines:
        y += title_font.line_height + spacing * 2
        draw_lines(image, lines, font, (pad, y, cw - pad, ch - pad), text_colour, valign="top")
    return image


def _grid_legend(
    result: ProbeResult,
    scores: MetricScores,
    *,
    scale: tuple[float, float],
    width: int,
    font: TextFont,
    font_path: str | None,
) -> Image.Image:
    """The strip under the grid that says what the border colours mean."""
    ref = result.reference
    if ref.kind in ("item", "image"):
        what = f"border: {scores.label} vs reference {ref.label}".rstrip()
    else:
        what = f"border: {scores.label}, mean similarity to the row's other items"
    small = get_font(max(10, font.size * 3 // 4), path=font_path)
    pad = max(3, small.size // 2)
    label_w = int(small.length("0.000")) + 4
    bar_len = max(24, min(width - 2 * pad - label_w, 36 * small.size))
    bar = render_legend(
        scale,
        length=bar_len,
        thickness=max(8, small.size),
        vertical=False,
        font_size=small.size,
        font_path=font_path,
    )
    lines = wrap_text(f"{what} (1.0 = identical)", small, width - 2 * pad, max_lines=3)
    text_h = block_height(len(lines), small)
    out = Image.new("RGB", (width, pad + text_h + pad + bar.height + pad), BACKGROUND)
    draw_lines(out, lines, small, (pad, pad, width - pad, pad + text_h), (60, 60, 60), align="left")
    out.paste(bar, (max(0, pad - label_w // 2), 2 * pad + text_h))
    return out
