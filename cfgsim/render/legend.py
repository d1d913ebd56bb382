"""The colour bar that says what the score colours mean."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from cfgsim.render.colour import BACKGROUND, DEFAULT_COLORMAP, TEXT, colormap
from cfgsim.render.text import get_font


def legend_ticks(scale: tuple[float, float], max_ticks: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) from ``scale[0]`` to ``scale[1]``."""
    low, high = scale
    span = high - low
    if span <= 0 or not math.isfinite(span):
        return [low]
    max_ticks = max(2, max_ticks)
    step = span
    for exponent in range(-3, 4):
        for base in (1.0, 2.0, 2.5, 5.0):
            candidate = base * 10.0**exponent
            if span / candidate + 1 <= max_ticks + 1e-9:
                step = candidate
                break
        else:
            continue
        break
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-6:
        ticks.append(round(value, 6))
        value += step
    return ticks or [low, high]


def _tick_label(value: float, scale: tuple[float, float]) -> str:
    span = scale[1] - scale[0]
    return f"{value:.3f}" if 0 < span < 0.2 and round(value, 2) != round(value, 3) else f"{value:.2f}"


def render_legend(
    scale: tuple[float, float] = (0.0, 1.0),
    *,
    length: int = 200,
    thickness: int = 16,
    vertical: bool = True,
    font_size: int = 12,
    cmap: str = DEFAULT_COLORMAP,
    font_path: str | None = None,
) -> Image.Image:
    """A colour bar from ``scale[0]`` to ``scale[1]`` with round tick values.

    Vertical: high values at the top, labels on the right. Horizontal: labels below; the image is
    ``length`` plus half a label wider on each side.
    """
    low, high = scale
    length = max(8, int(length))
    font = get_font(font_size, path=font_path)
    ramp = np.linspace(0.0, 1.0, length)
    colours = np.array([colormap(v, cmap) for v in ramp], dtype=np.uint8)
    sample = font.length(_tick_label(high, scale))
    room = font.line_height * 2 if vertical else sample * 2.5
    ticks = legend_ticks(scale, max(2, int(length / max(room, 1)) + 1))
    labels = [_tick_label(v, scale) for v in ticks]
    span = (high - low) or 1.0
    tick = max(3, thickness // 3)
    grey = (80, 80, 80)
    if vertical:
        strip = np.repeat(colours[::-1][:, None, :], thickness, axis=1)
        text_w = int(max(font.length(t) for t in labels))
        half = font.line_height // 2 + 1
        out = Image.new("RGB", (thickness + tick + 3 + text_w + 2, length + 2 * half), BACKGROUND)
        out.paste(Image.fromarray(strip, "RGB"), (0, half))
        draw = ImageDraw.Draw(out)
        draw.rectangle((0, half, thickness - 1, half + length - 1), outline=grey)
        for value, label in zip(ticks, labels, strict=True):
            y = half + round((length - 1) * (1 - (value - low) / span))
            draw.line((thickness, y, thickness + tick, y), fill=grey)
            font.draw(out, (thickness + tick + 3, y - font.line_height / 2), label, TEXT)
        return out
    strip = np.repeat(colours[None, :, :], thickness, axis=0)
    side = int(sample / 2) + 2
    out = Image.new("RGB", (side + length + side, thickness + tick + 2 + font.line_height), BACKGROUND)
    out.paste(Image.fromarray(strip, "RGB"), (side, 0))
    draw = ImageDraw.Draw(out)
    draw.rectangle((side, 0, side + length - 1, thickness - 1), outline=grey)
    for value, label in zip(ticks, labels, strict=True):
        x = side + round((length - 1) * (value - low) / span)
        draw.line((x, thickness, x, thickness + tick), fill=grey)
        font.draw(out, (x - font.length(label) / 2, thickness + tick + 2), label, TEXT)
    return out
