"""Drawing a result: the X/Y grid with score overlays, the N×N heatmaps and their colour legend.

Renderers only draw: every number comes from ``result.scores`` (filled by :mod:`cfgsim.compare`).
One job per module: :mod:`.text` (fonts, wrapping), :mod:`.colour` (colour maps, the score
scale), :mod:`.legend`, :mod:`.grid`, :mod:`.heatmap`.
"""

from __future__ import annotations

from PIL import Image

from cfgsim.render.colour import (
    BACKGROUND,
    BADGE_COLOUR,
    BANNER_COLOUR,
    DEFAULT_COLORMAP,
    FAILED_FILL,
    FAILED_TITLE,
    MISSING_FILL,
    NAN_COLOUR,
    OVERLAY_ALPHA,
    REF_COLOUR,
    RGB,
    SKIPPED_FILL,
    TEXT,
    colormap,
    contrast_text,
    score_scale,
)
from cfgsim.render.grid import MAX_GRID_PIXELS, fit_image, render_grid
from cfgsim.render.heatmap import render_heatmap
from cfgsim.render.legend import legend_ticks, render_legend
from cfgsim.render.text import ELLIPSIS, TextFont, find_font, get_font, wrap_text
from cfgsim.result import ProbeResult

__all__ = [
    "BACKGROUND",
    "BADGE_COLOUR",
    "BANNER_COLOUR",
    "DEFAULT_COLORMAP",
    "ELLIPSIS",
    "FAILED_FILL",
    "FAILED_TITLE",
    "MAX_GRID_PIXELS",
    "MISSING_FILL",
    "NAN_COLOUR",
    "OVERLAY_ALPHA",
    "REF_COLOUR",
    "RGB",
    "SKIPPED_FILL",
    "TEXT",
    "TextFont",
    "colormap",
    "contrast_text",
    "find_font",
    "fit_image",
    "get_font",
    "legend_ticks",
    "render_all",
    "render_grid",
    "render_heatmap",
    "render_legend",
    "score_scale",
    "wrap_text",
]


def render_all(result: ProbeResult, *, overlays: bool = True) -> list[tuple[str, Image.Image]]:
    """What the WebUI gallery shows, in order: the grid, then one heatmap per metric.

    Heatmaps need two items at least (a 1×1 matrix says nothing).
    """
    out = [("grid", render_grid(result, overlays=overlays))]
    if len(result.items) >= 2:
        out.extend((f"heatmap-{name}", render_heatmap(result, name)) for name in result.scores)
    return out
