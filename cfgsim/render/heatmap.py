"""The N×N similarity matrix of one metric as a labelled heatmap with its colour bar."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from cfgsim.errors import InputError
from cfgsim.render.colour import (
    BACKGROUND,
    NAN_COLOUR,
    REF_COLOUR,
    TEXT,
    colormap,
    contrast_text,
    normalise,
    score_scale,
)
from cfgsim.render.grid import preview_warning
from cfgsim.render.legend import render_legend
from cfgsim.render.text import block_height, draw_lines, get_font, wrap_text
from cfgsim.result import ProbeResult


def render_heatmap(result: ProbeResult, metric: str, *, row: int | None = None) -> Image.Image:
    """The N×N similarity matrix of ``metric`` (mean over rows, or row ``row``) as a labelled image.

    Each cell holds its value (text colour chosen for contrast), NaN cells (no image) are grey
    and hatched, a colour bar gives the scale. 1.0 means identical.
    """
    if metric not in result.scores:
        raise InputError(
            f"heatmap: metric {metric!r} is not in this result (it has: {', '.join(result.scores) or 'none'})"
        )
    scores = result.scores[metric]
    n = len(result.items)
    if n == 0:
        raise InputError("heatmap: the result has no items")
    if row is not None and not 0 <= row < len(scores.per_row):
        raise InputError(f"heatmap: row {row} does not exist (there are {len(scores.per_row)})")
    matrix = scores.mean if row is None else scores.per_row[row]
    if matrix.shape != (n, n):
        matrix = np.full((n, n), np.nan)

    fs = 14 if n <= 16 else 12 if n <= 32 else 10
    font = get_font(fs)
    bold = get_font(fs, bold=True)
    title_font = get_font(fs + 4, bold=True)
    digits = 3 if n <= 24 else 2
    cell = max(int(font.length("0." + "0" * digits)) + 12, 2 * font.line_height + 6, 36)
    pad = 12
    spacing = font.size // 5

    ref_index = result.reference.index if result.reference.kind == "item" else None
    labels = [label + (" (REF)" if i == ref_index else "") for i, label in enumerate(result.labels)]
    # Each label is measured with the font it is drawn in: the reference's is bold, and wider.
    fonts = [bold if i == ref_index else font for i in range(n)]
    label_room = min(280, max(int(max(f.length(t) for f, t in zip(fonts, labels, strict=True))) + 4, 40))
    max_lines = max(1, (cell + spacing) // (font.line_height + spacing))
    wrapped = [wrap_text(t, f, label_room, max_lines=max_lines) for f, t in zip(fonts, labels, strict=True)]
    row_w = max(
        math.ceil(max(f.length(line) for line in lines)) for f, lines in zip(fonts, wrapped, strict=True)
    )
    row_w += 8
    col_h = row_w  # column labels are the same lines, turned

    title = f"{scores.label} similarity"
    k = len(result.rows)
    if row is not None:
        sub = result.row_label(row)
    elif k == 1:
        sub = result.row_label(0)
    else:
        sub = f"mean over {k} {'seeds' if result.row_axis == 'Seed' else 'rows'}"
    subtitle = f"{sub} \u2014 1.0 = identical"
    if result.reference.kind in ("item", "image") and result.reference.label:
        subtitle += f"; reference: {result.reference.label}"
    scale = score_scale(matrix)
    legend = render_legend(scale, length=max(n * cell, 120), thickness=16, vertical=True, font_size=fs)

    body_w = row_w + n * cell
    width = pad + max(body_w + pad + legend.width, int(title_font.length(title)) + 1) + pad
    text_w = width - 2 * pad
    title_lines = wrap_text(title, title_font, text_w)
    sub_lines = wrap_text(subtitle, font, text_w, max_lines=3)
    warn_lines = []
    if not result.spec.is_probe:
        warn_lines = wrap_text(preview_warning(result.spec), bold, text_w)
    head_h = block_height(len(title_lines), title_font) + spacing + block_height(len(sub_lines), font)
    if warn_lines:
        head_h += spacing + block_height(len(warn_lines), bold)
    top = pad + head_h + pad + col_h
    height = max(top + n * cell, top + legend.height - (legend.height - n * cell) // 2) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)

    y = pad
    draw_lines(
        canvas, title_lines, title_font, (pad, y, width - pad, y + 1), TEXT, align="left", valign="top"
    )
    y += block_height(len(title_lines), title_font) + spacing
    draw_lines(
        canvas, sub_lines, font, (pad, y, width - pad, y + 1), (70, 70, 70), align="left", valign="top"
    )
    y += block_height(len(sub_lines), font) + spacing
    if warn_lines:
        draw_lines(
            canvas, warn_lines, bold, (pad, y, width - pad, y + 1), (190, 90, 0), align="left", valign="top"
        )

    x0 = pad + row_w
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        lf = fonts[i]
        # Row label, right-aligned beside its row.
        draw_lines(
            canvas,
            wrapped[i],
            lf,
            (pad, top + i * cell, x0 - 6, top + (i + 1) * cell),
            TEXT,
            align="right",
            spacing=spacing,
        )
        # Column label: drawn horizontally into a mask, turned to read bottom-up above its column.
        mask = Image.new("L", (col_h, cell), 0)
        draw_lines(mask, wrapped[i], lf, (6, 0, col_h, cell), 255, align="left", spacing=spacing)
        mask = mask.transpose(Image.Transpose.ROTATE_90)
        canvas.paste(TEXT, (x0 + i * cell, top - col_h), mask)
        for j in range(n):
            value = float(matrix[i, j])
            box = (x0 + j * cell, top + i * cell, x0 + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            if math.isnan(value):
                _hatch(draw, box)
                continue
            colour = colormap(normalise(value, scale))
            draw.rectangle(box, fill=colour)
            text = f"{value:.{digits}f}"
            font.draw(
                canvas,
                (box[0] + (cell - font.length(text)) / 2, box[1] + (cell - font.line_height) / 2),
                text,
                contrast_text(colour),
            )
    draw.rectangle((x0 - 1, top - 1, x0 + n * cell, top + n * cell), outline=(80, 80, 80))
    if ref_index is not None:
        draw.rectangle(
            (x0 + ref_index * cell, top, x0 + (ref_index + 1) * cell - 1, top + n * cell - 1),
            outline=REF_COLOUR,
            width=2,
        )
    canvas.paste(legend, (x0 + n * cell + pad, top + (n * cell - legend.height) // 2))
    return canvas


def _hatch(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, fill=NAN_COLOUR)
    size = bottom - top + 1
    step = 7
    for offset in range(-size, right - left + 1, step):
        # Diagonal lines clipped to the box by hand (ImageDraw has no clip region).
        x1, y1 = left + offset, bottom
        x2, y2 = left + offset + size, top
        if x1 < left:
            y1, x1 = bottom - (left - x1), left
        if x2 > right:
            y2, x2 = top + (x2 - right), right
        if x1 <= x2:
            draw.line((x1, y1, x2, y2), fill=(150, 150, 150), width=1)
