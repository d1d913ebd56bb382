"""A per-block line chart: one value per merge block (BASE, IN00 … OUT11, VAE) for each series.

Used for the weight-space view: each checkpoint's per-block similarity to a reference, or a
recipe's coefficients per block. Only draws (PIL): the values come from the caller.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

from cfgsim.errors import InputError
from cfgsim.render.colour import BACKGROUND, TEXT
from cfgsim.render.text import block_height, draw_lines, get_font, wrap_text

# Distinct, colour-blind-friendly series colours (Okabe–Ito), then greys.
SERIES_COLOURS = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (213, 94, 0),
    (86, 180, 233),
    (240, 228, 66),
    (0, 0, 0),
)
GRID_COLOUR = (225, 225, 225)
RESIDUAL_COLOUR = (200, 60, 60)


def render_block_chart(
    blocks: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    subtitle: str = "",
    y_label: str = "",
    y_range: tuple[float, float] | None = None,
    residuals: Sequence[float] | None = None,
) -> Image.Image:
    """Lines (one per series, with a marker per block) over the blocks; NaN values leave a gap.

    ``y_range`` defaults to the values' range padded to tenths (1.0 included when the top value is
    near it). ``residuals`` (0-1 fractions per block) draw as a red bar strip under the chart.
    """
    if not blocks:
        raise InputError("block chart: no blocks")
    for name, values in series.items():
        if len(values) != len(blocks):
            raise InputError(
                f"block chart: series {name!r} has {len(values)} values for {len(blocks)} blocks"
            )
    font = get_font(13)
    small = get_font(11)
    title_font = get_font(17, bold=True)
    pad, step, plot_h = 14, max(30, int(small.length("OUT00")) + 10), 260
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    low, high = y_range or _range(values)
    y_ticks = _ticks(low, high)
    tick_w = int(max(small.length(_fmt(t)) for t in y_ticks)) + 8
    left = pad + font.line_height + 6 + tick_w
    plot_w = step * len(blocks)
    legend_w = min(260, int(max((font.length(n) for n in series), default=0)) + 36)
    width = left + plot_w + pad + legend_w + pad
    title_lines = wrap_text(title, title_font, width - 2 * pad)
    sub_lines = wrap_text(subtitle, small, width - 2 * pad, max_lines=4) if subtitle else []
    head = block_height(len(title_lines), title_font) + (
        block_height(len(sub_lines), small) + 4 if sub_lines else 0
    )
    top = pad + head + 12
    strip = 40 if residuals is not None else 0
    label_h = int(small.length("OUT00")) + 10
    height = top + plot_h + label_h + strip + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    y = pad
    draw_lines(
        canvas, title_lines, title_font, (pad, y, width - pad, y + 1), TEXT, align="left", valign="top"
    )
    y += block_height(len(title_lines), title_font) + 4
    if sub_lines:
        draw_lines(
            canvas, sub_lines, small, (pad, y, width - pad, y + 1), (70, 70, 70), align="left", valign="top"
        )

    def ypos(v: float) -> float:
        return top + plot_h - (v - low) / (high - low) * plot_h

    for t in y_ticks:
        yy = ypos(t)
        draw.line((left, yy, left + plot_w, yy), fill=GRID_COLOUR)
        text = _fmt(t)
        small.draw(canvas, (left - 6 - small.length(text), yy - small.line_height / 2), text, TEXT)
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline=(120, 120, 120))
    if y_label:
        mask = Image.new("L", (plot_h, font.line_height + 2), 0)
        draw_lines(mask, [y_label], font, (0, 0, plot_h, font.line_height + 2), 255, align="center")
        canvas.paste(TEXT, (pad, top), mask.transpose(Image.Transpose.ROTATE_90))
    for k, block in enumerate(blocks):
        x = left + step * k + step / 2
        draw.line((x, top + plot_h, x, top + plot_h + 3), fill=(120, 120, 120))
        mask = Image.new("L", (label_h, small.line_height + 2), 0)
        draw_lines(mask, [block], small, (0, 0, label_h - 4, small.line_height + 2), 255, align="right")
        turned = mask.transpose(Image.Transpose.ROTATE_90)
        canvas.paste(TEXT, (int(x - turned.width / 2), top + plot_h + 6), turned)
    for n, (name, vs) in enumerate(series.items()):
        colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
        points: list[tuple[float, float] | None] = [
            None
            if v is None or not math.isfinite(v)
            else (left + step * k + step / 2, ypos(min(max(v, low), high)))
            for k, v in enumerate(vs)
        ]
        for a, b in itertools.pairwise(points):
            if a is not None and b is not None:
                draw.line((a, b), fill=colour, width=2)
        for p in points:
            if p is not None:
                draw.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colour)
        ly = top + n * (font.line_height + 6)
        lx = left + plot_w + pad
        draw.line((lx, ly + font.line_height / 2, lx + 20, ly + font.line_height / 2), fill=colour, width=3)
        label = wrap_text(name, font, legend_w - 28, max_lines=1)[0]
        font.draw(canvas, (lx + 26, ly), label, TEXT)
    if residuals is not None:
        sy = top + plot_h + label_h + 6
        small.draw(canvas, (pad, sy), "residual", RESIDUAL_COLOUR)
        for k, r in enumerate(residuals):
            if r is None or not math.isfinite(r):
                continue
            h = min(1.0, r / 0.1) * (strip - 12)  # full height = 10 % of the block's norm
            x0 = left + step * k + 4
            draw.rectangle((x0, sy + strip - 8 - h, x0 + step - 8, sy + strip - 8), fill=RESIDUAL_COLOUR)
    return canvas


def _range(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (0.0, 1.0)
    lo, hi = min(values), max(values)
    low = math.floor(lo * 10 + 1e-9) / 10
    high = math.ceil(hi * 10 - 1e-9) / 10
    if high - low < 0.1:
        high = low + 0.1
    return (low, high)


def _ticks(low: float, high: float) -> list[float]:
    span = high - low
    step = (
        next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0) if span / s <= 8)
        if span <= 40
        else span / 5
    )
    first = math.ceil(low / step - 1e-9) * step
    out = []
    v = first
    while v <= high + 1e-9:
        out.append(round(v, 6))
        v += step
    return out


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.0f}"
