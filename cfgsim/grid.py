"""TEMPORARY shim: the renderers moved to :mod:`cfgsim.render`. Import from there.

Re-exports every name the old ``cfgsim.grid`` module had (private ones included) so code not yet
moved keeps working; to be removed once nothing imports ``cfgsim.grid``.
"""

from __future__ import annotations

from cfgsim.render import render_all
from cfgsim.render.colour import (
    _COLORMAPS,
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
    score_scale,
)
from cfgsim.render.colour import contrast_text as _contrast_text
from cfgsim.render.colour import normalise as _normalise
from cfgsim.render.grid import (
    MAX_GRID_PIXELS,
    _banner_lines,
    _cell_scores,
    _corner_text,
    _fit_overlay,
    _fmt,
    _grid_cell_size,
    _grid_legend,
    _metric_names,
    _render_cell,
    _shown_values,
    _status_cell,
    fit_image,
    render_grid,
)
from cfgsim.render.grid import preview_warning as _preview_warning
from cfgsim.render.heatmap import _hatch, render_heatmap
from cfgsim.render.legend import _tick_label, legend_ticks, render_legend
from cfgsim.render.text import (
    _BREAK_AFTER,
    _FALLBACK_FILES,
    _FONT_DIRS,
    _FONT_FILES,
    ELLIPSIS,
    TextFont,
    _break_point,
    _candidate_dirs,
    _ellipsize,
    find_font,
    get_font,
    wrap_text,
)
from cfgsim.render.text import block_height as _block_height
from cfgsim.render.text import draw_lines as _draw_lines
from cfgsim.render.text import fit_font as _fit_font

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
    "_BREAK_AFTER",
    "_COLORMAPS",
    "_FALLBACK_FILES",
    "_FONT_DIRS",
    "_FONT_FILES",
    "TextFont",
    "_banner_lines",
    "_block_height",
    "_break_point",
    "_candidate_dirs",
    "_cell_scores",
    "_contrast_text",
    "_corner_text",
    "_draw_lines",
    "_ellipsize",
    "_fit_font",
    "_fit_overlay",
    "_fmt",
    "_grid_cell_size",
    "_grid_legend",
    "_hatch",
    "_metric_names",
    "_normalise",
    "_preview_warning",
    "_render_cell",
    "_shown_values",
    "_status_cell",
    "_tick_label",
    "colormap",
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
]  # fmt: skip
