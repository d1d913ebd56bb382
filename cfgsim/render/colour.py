"""Colours of the pictures: the perceptual colour maps, the score scale and readable text colours.

Every score colour in cfgsim (grid borders, heatmap cells, legends) comes from :func:`colormap`
over :func:`score_scale`, so one colour means one score everywhere.
"""

from __future__ import annotations

import math

import numpy as np

from cfgsim.errors import InputError

RGB = tuple[int, int, int]

# 17 evenly spaced samples of matplotlib's perceptually uniform colour maps (viridis and cividis
# are CC0); linear interpolation between them stays within a few levels of the 256-entry tables,
# which keeps matplotlib out of the dependencies.
# fmt: off
_COLORMAPS: dict[str, tuple[RGB, ...]] = {
    "viridis": (
        (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141),
        (44, 114, 142), (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128),
        (63, 188, 115), (94, 201, 98), (132, 212, 75), (173, 220, 48), (216, 226, 25), (253, 231, 37),
    ),
    "cividis": (
        (0, 34, 78), (0, 46, 106), (26, 56, 111), (50, 67, 109), (67, 78, 108), (83, 90, 109),
        (97, 101, 111), (111, 112, 115), (125, 124, 120), (140, 136, 120), (155, 148, 118),
        (171, 160, 114), (188, 174, 108), (205, 187, 99), (222, 201, 88), (240, 216, 70), (254, 232, 56),
    ),
}
# fmt: on
DEFAULT_COLORMAP = "viridis"

NAN_COLOUR: RGB = (190, 190, 190)
BACKGROUND: RGB = (255, 255, 255)  # the WebUI's default grid background
TEXT: RGB = (0, 0, 0)
# Hot pink is on neither colour map, so the reference's border cannot be read as a score.
REF_COLOUR: RGB = (255, 40, 150)
BADGE_COLOUR: RGB = (255, 196, 0)
BANNER_COLOUR: RGB = (255, 193, 7)
FAILED_FILL: RGB = (96, 96, 96)
FAILED_TITLE: RGB = (255, 150, 150)
SKIPPED_FILL: RGB = (170, 170, 170)
MISSING_FILL: RGB = (60, 60, 60)
OVERLAY_ALPHA = 165  # of 255: dark enough for white text on a white image, light enough to see through


def colormap(value: float, name: str = DEFAULT_COLORMAP) -> RGB:
    """The colour of ``value`` (0 → dark, 1 → bright; clipped to 0-1) on a perceptual colour map.

    NaN gives :data:`NAN_COLOUR` (a neutral grey that is on neither map).
    """
    try:
        table = _COLORMAPS[name]
    except KeyError:
        raise InputError(f"colour map {name!r} is unknown (known: {', '.join(_COLORMAPS)})") from None
    if value is None or math.isnan(value):
        return NAN_COLOUR
    x = min(max(float(value), 0.0), 1.0) * (len(table) - 1)
    i = min(int(x), len(table) - 2)
    t = x - i
    a, b = table[i], table[i + 1]
    return tuple(round(a[k] + (b[k] - a[k]) * t) for k in range(3))  # type: ignore[return-value]


def score_scale(values: object) -> tuple[float, float]:
    """The (low, high) ends of the colour scale for similarity ``values`` (NaN ignored).

    The top is 1.0 ("identical") whenever the scores are similarities in 0-1, so a colour means
    the same in every grid; the bottom is the lowest score rounded down to a tenth, so the
    colours spread over the scores actually present.
    """
    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return (0.0, 1.0)
    top = 1.0 if arr.max() <= 1.0 + 1e-9 else math.ceil(arr.max() * 10) / 10
    low = math.floor(arr.min() * 10 + 1e-9) / 10
    low = min(low, top - 0.1)
    return (round(low, 6), round(top, 6))


def normalise(value: float, scale: tuple[float, float]) -> float:
    low, high = scale
    return float("nan") if math.isnan(value) else (value - low) / (high - low)


def contrast_text(colour: RGB) -> RGB:
    """Black or white, whichever reads better on ``colour`` (WCAG relative luminance)."""

    def lin(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(colour[0]) + 0.7152 * lin(colour[1]) + 0.0722 * lin(colour[2])
    return (0, 0, 0) if lum > 0.179 else (255, 255, 255)
