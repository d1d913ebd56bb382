"""Drawing a result: the X/Y grid with score overlays, the N×N heatmaps and their colour legend.

Renderers only draw: every number comes from ``result.scores`` (filled by :mod:`cfgsim.compare`).
One job per module: :mod:`.text` (fonts, wrapping), :mod:`.colour` (colour maps, the score
scale), :mod:`.legend`, :mod:`.grid`, :mod:`.heatmap`, :mod:`.dendrogram` (the family tree),
:mod:`.verdict` (the verdict table as text).
"""

from __future__ import annotations

from collections.abc import Sequence

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
from cfgsim.render.dendrogram import render_dendrogram
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
    "render_dendrogram",
    "render_grid",
    "render_heatmap",
    "render_legend",
    "score_scale",
    "wrap_text",
]


def render_all(
    result: ProbeResult, *, overlays: bool = True, grid_metrics: Sequence[str] | None = None
) -> list[tuple[str, Image.Image]]:
    """What the WebUI gallery shows, in order: the grid, the family tree, one heatmap per metric.

    ``grid_metrics``: the metrics drawn on the grid's cells (default: all). With a lineage the grid
    columns and the heatmaps follow the tree's leaf order, so relatives sit side by side. Heatmaps
    and the tree need two items at least (a 1×1 matrix says nothing).
    """
    ordered = result.reordered(result.tree_order()) if result.lineage is not None else result
    out = [("grid", render_grid(ordered, metrics=grid_metrics, overlays=overlays))]
    if ordered.lineage is not None and len(ordered.lineage.items) >= 2:
        out.append(("tree", render_dendrogram(ordered)))
    if len(result.items) >= 2:
        out.extend((f"heatmap-{name}", render_heatmap(ordered, name)) for name in ordered.scores)
    return out
