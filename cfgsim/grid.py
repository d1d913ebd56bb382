"""Drawing the result: the X/Y grid with score overlays, the N×N heatmaps and their colour legend.

Renderers only draw: every number comes from ``result.scores`` (filled by :mod:`cfgsim.compare`).
The grid looks like the WebUI's own X/Y plot (white margins, black labels centred over the
columns and beside the rows, labels word-wrapped, font size scaled with the cell size) so that a
user reads it the same way, plus per-cell overlays: the score against the reference and its rank,
a border coloured by score, a "REF" badge on the reference, grey cells for failed/skipped images.

Constraints that shape this module:

- The WebUI pins Pillow 9.5.0; users of the library run Pillow 10-13. Only APIs present in all of
  them are used (``textbbox``/``textlength``/``getlength``, never ``textsize``/``getsize``), and
  ``ImageFont.load_default()`` is handled in both forms (a small bitmap font before 10.1, a
  scalable one with ``size=`` since).
- The WebUI ships no font we can rely on, so a TrueType font is searched once (DejaVu Sans in the
  usual places, matplotlib's copy, the WebUI's Roboto beside the extension) and the search cached.
  Without one, the bitmap font is drawn scaled up (nearest neighbour) so text keeps its size.
- Text must be legible on 64 px cells and on 1024 px cells: sizes derive from the cell size and
  overlay text shrinks, then gets more compact, until it fits the cell.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cfgsim.errors import InputError
from cfgsim.imageio import to_rgb
from cfgsim.result import FAILED, SKIPPED, MetricScores, ProbeResult
from cfgsim.spec import ProbeSpec

RGB = tuple[int, int, int]

# -- colours ------------------------------------------------------------------------------------

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
MAX_GRID_PIXELS = 300 * 10**6  # ~900 MB as RGB: 20 checkpoints x 12 seeds at 1024 px fit
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


def _normalise(value: float, scale: tuple[float, float]) -> float:
    low, high = scale
    return float("nan") if math.isnan(value) else (value - low) / (high - low)


def _contrast_text(colour: RGB) -> RGB:
    """Black or white, whichever reads better on ``colour`` (WCAG relative luminance)."""

    def lin(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * lin(colour[0]) + 0.7152 * lin(colour[1]) + 0.0722 * lin(colour[2])
    return (0, 0, 0) if lum > 0.179 else (255, 255, 255)


# -- fonts --------------------------------------------------------------------------------------

_FONT_FILES = {False: ("DejaVuSans.ttf",), True: ("DejaVuSans-Bold.ttf",)}
_FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu
    "/usr/share/fonts/TTF",  # Arch
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/dejavu-sans-fonts",  # Fedora
    "/usr/share/fonts/truetype",
    "/usr/local/share/fonts",
    "/usr/X11R6/lib/X11/fonts/TTF",
    "/Library/Fonts",
    os.path.expanduser("~/Library/Fonts"),
    os.path.expanduser("~/.fonts"),
    os.path.expanduser("~/.local/share/fonts"),
    os.path.join(os.environ.get("WINDIR", "C:\\Windows"), "Fonts"),
)
# Last resorts with a similar look: the WebUI's own font and the big platforms' sans fonts.
_FALLBACK_FILES = {
    False: ("Roboto-Regular.ttf", "Arial.ttf", "arial.ttf", "segoeui.ttf", "Helvetica.ttc"),
    True: ("Roboto-Bold.ttf", "Arial Bold.ttf", "arialbd.ttf", "segoeuib.ttf"),
}


def _candidate_dirs() -> list[Path]:
    dirs = [Path(d) for d in _FONT_DIRS]
    # matplotlib bundles DejaVu Sans; find its data folder without importing it (slow, may be broken).
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    # Inside the WebUI the package lives in <webui>/extensions/<extension>/cfgsim/; the WebUI keeps
    # Roboto in <webui>/modules/. The WebUI also runs with its root as the working directory.
    here = Path(__file__).resolve()
    if len(here.parents) > 3:
        dirs.append(here.parents[3] / "modules")
    dirs.append(Path.cwd() / "modules")
    dirs.append(Path(sys.prefix) / "share" / "fonts")
    return dirs


@functools.cache
def find_font(bold: bool = False) -> str | None:
    """Path of a TrueType sans font (DejaVu Sans preferred), or None when there is none. Cached."""
    dirs = [d for d in _candidate_dirs() if d.is_dir()]
    for names in (_FONT_FILES[bold], _FALLBACK_FILES[bold]):
        for directory in dirs:
            for name in names:
                path = directory / name
                if path.is_file():
                    try:
                        ImageFont.truetype(str(path), 12)
                    except OSError:  # unreadable, or Pillow built without FreeType
                        continue
                    return str(path)
    # Pillow searches the platform's font folders itself when given a bare name.
    for name in _FONT_FILES[bold]:
        try:
            return str(ImageFont.truetype(name, 12).path)
        except (OSError, AttributeError):
            pass
    return None


class TextFont:
    """A font at one pixel size that measures and draws single lines the same way on every Pillow.

    TrueType fonts draw directly. Pillow 9.5's default bitmap font has one small size, so its
    text is rendered at that size and scaled up by a whole factor, and limited to Latin-1 (the
    bitmap font's character set; anything else would raise).
    """

    def __init__(self, size: int, path: str | None = None, bold: bool = False) -> None:
        self.size = max(6, int(size))
        self.scale = 1
        self.bitmap = False
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None
        path = path or find_font(bold) or (find_font(False) if bold else None)
        if path:
            try:
                font = ImageFont.truetype(path, self.size)
            except OSError:
                font = None
        # Pillow's built-in fonts lack typographic dashes (the bitmap one even all of non-Latin-1).
        self.builtin = font is None
        if font is None:
            try:  # Pillow >= 10.1: a scalable built-in font
                font = ImageFont.load_default(size=self.size)  # type: ignore[call-arg]
            except TypeError:
                font = ImageFont.load_default()
            if not isinstance(font, ImageFont.FreeTypeFont):
                self.bitmap = True
                native = font.getbbox("Ag")[3]
                self.scale = max(1, round(self.size / max(native, 1)))
        self.font = font
        if self.bitmap:
            self.ascent, self.descent = font.getbbox("Ag")[3] * self.scale, 0
        else:
            self.ascent, self.descent = font.getmetrics()  # type: ignore[union-attr]

    @property
    def line_height(self) -> int:
        return int(self.ascent + self.descent)

    def clean(self, text: str) -> str:
        if not self.builtin:
            return text
        text = text.replace("\u2014", "-").replace("\u2013", "-").replace("\u2026", "...")
        return text.encode("latin-1", "replace").decode("latin-1") if self.bitmap else text

    def length(self, text: str) -> float:
        return float(self.font.getlength(self.clean(text))) * self.scale

    def draw(self, image: Image.Image, xy: tuple[float, float], text: str, fill: object) -> None:
        """Draw one line with its top-left corner (line box, not ink) at ``xy``."""
        text = self.clean(text)
        if not text:
            return
        x, y = round(float(xy[0])), round(float(xy[1]))
        if not self.bitmap:
            ImageDraw.Draw(image).text((x, y), text, font=self.font, fill=fill, anchor="la")
            return
        _, _, right, bottom = self.font.getbbox(text)
        mask = Image.new("L", (max(1, right), max(1, bottom)), 0)
        ImageDraw.Draw(mask).text((0, 0), text, font=self.font, fill=255)
        if self.scale > 1:
            mask = mask.resize((mask.width * self.scale, mask.height * self.scale), Image.Resampling.NEAREST)
        if image.mode == "RGBA" and isinstance(fill, tuple) and len(fill) == 3:
            fill = (*fill, 255)
        image.paste(fill, (x, y), mask)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def get_font(size: int, bold: bool = False, path: str | None = None) -> TextFont:
    """A cached :class:`TextFont` of ``size`` px (``path``: a TrueType file to use instead of the search)."""
    return TextFont(size, path, bold)


def _fit_font(font_path: str | None) -> str | None:
    if font_path is None:
        return None
    if not Path(font_path).is_file():
        raise InputError(f"font {font_path}: no such file")
    try:
        ImageFont.truetype(str(font_path), 12)
    except OSError as exc:
        raise InputError(f"font {font_path}: not a TrueType/OpenType font ({exc})") from exc
    return str(font_path)


# -- text layout --------------------------------------------------------------------------------

_BREAK_AFTER = "/\\_-.,:;+)]}"
ELLIPSIS = "\u2026"


def wrap_text(text: str, font: TextFont, max_width: float, max_lines: int | None = None) -> list[str]:
    """Lines of ``text`` no wider than ``max_width`` (when any character fits at all).

    Words wrap like the WebUI's grid labels; a word wider than the line (a long file name, a
    hash) is broken, after a separator (``/ _ - .``) when there is one, else between characters.
    Lines beyond ``max_lines`` are dropped and the last kept line ends with an ellipsis.
    """
    max_width = max(1.0, max_width)
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.length(candidate) <= max_width:
            lines[-1] = candidate
            continue
        rest = word
        while rest:
            if font.length(rest) <= max_width:
                lines.append(rest)
                break
            cut = _break_point(rest, font, max_width)
            lines.append(rest[:cut])
            rest = rest[cut:]
    if not lines:
        return [""]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[: max(1, max_lines)]
        lines[-1] = _ellipsize(lines[-1], font, max_width)
    return lines


def _break_point(word: str, font: TextFont, max_width: float) -> int:
    """How many characters of ``word`` go on this line (at least one)."""
    fit = 1
    while fit < len(word) and font.length(word[: fit + 1]) <= max_width:
        fit += 1
    # Prefer ending the line just after a separator in the last two thirds of what fits.
    for i in range(fit, max(1, fit // 3), -1):
        if word[i - 1] in _BREAK_AFTER:
            return i
    return fit


def _ellipsize(line: str, font: TextFont, max_width: float) -> str:
    while line and font.length(line + ELLIPSIS) > max_width:
        line = line[:-1]
    return line.rstrip() + ELLIPSIS


def _draw_lines(
    image: Image.Image,
    lines: Sequence[str],
    font: TextFont,
    box: tuple[float, float, float, float],
    fill: object,
    *,
    align: str = "center",
    valign: str = "center",
    spacing: int | None = None,
) -> None:
    """Draw ``lines`` inside ``box`` (left, top, right, bottom), aligned as asked."""
    spacing = font.size // 5 if spacing is None else spacing
    height = len(lines) * font.line_height + (len(lines) - 1) * spacing
    left, top, right, bottom = box
    if valign == "center":
        y = top + (bottom - top - height) / 2
    elif valign == "bottom":
        y = bottom - height
    else:
        y = top
    for line in lines:
        width = font.length(line)
        if align == "center":
            x = left + (right - left - width) / 2
        elif align == "right":
            x = right - width
        else:
            x = left
        font.draw(image, (x, y), line, fill)
        y += font.line_height + spacing


def _block_height(n_lines: int, font: TextFont, spacing: int | None = None) -> int:
    spacing = font.size // 5 if spacing is None else spacing
    return n_lines * font.line_height + max(0, n_lines - 1) * spacing


# -- what the grid shows ------------------------------------------------------------------------


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


def _preview_warning(spec: ProbeSpec) -> str:
    return f"QUICK PREVIEW \u2014 {spec.effective_steps} steps, not the probe ({spec.steps} steps)"


def _banner_lines(result: ProbeResult) -> list[str]:
    lines = []
    if not result.spec.is_probe:
        lines.append(_preview_warning(result.spec))
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
    n_cols, n_rows = len(result.items), len(result.rows)
    if n_cols == 0 or n_rows == 0:
        raise InputError("grid: the result has no items or no rows: nothing to draw")
    names = _metric_names(result, metrics) if overlays else []
    font_path = _fit_font(font_path)
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

    col_lines = [wrap_text(label, label_font, cw - 2 * pad, max_lines=4) for label in result.labels]
    top_h = _block_height(max(len(lines) for lines in col_lines), label_font, spacing) + 2 * pad

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
    banner_h = sum(_block_height(len(lines), bold_font, spacing) + 2 * pad for lines in banner_lines)

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
        h = _block_height(len(lines), bold_font, spacing) + 2 * pad
        ImageDraw.Draw(canvas).rectangle((0, y, width - 1, y + h - 1), fill=BANNER_COLOUR)
        _draw_lines(canvas, lines, bold_font, (pad, y, width - pad, y + h), TEXT, spacing=spacing)
        y += h

    for c, lines in enumerate(col_lines):
        x0 = left_w + c * cw
        _draw_lines(
            canvas, lines, label_font, (x0 + pad, banner_h, x0 + cw - pad, grid_top), TEXT, spacing=spacing
        )
    for r, lines in enumerate(row_lines):
        y0 = grid_top + r * ch
        _draw_lines(canvas, lines, label_font, (pad, y0, left_w - pad, y0 + ch), TEXT, spacing=spacing)
    if names and left_w > 0:
        # What the numbers are measured against, in the corner above the row labels: smaller than
        # the labels, and left out when it does not fit whole (the legend says it too).
        small = get_font(max(10, label_font.size * 3 // 4), path=font_path)
        room = max(1, (top_h - 2 * pad + spacing) // (small.line_height + spacing))
        corner = wrap_text(_corner_text(result, names), small, left_w - 2 * pad, max_lines=room)
        if not corner[-1].endswith(ELLIPSIS):
            _draw_lines(
                canvas, corner, small, (pad, banner_h, left_w - pad, grid_top), (90, 90, 90), spacing=spacing
            )

    for r in range(n_rows):
        for i in range(n_cols):
            box = (left_w + i * cw, grid_top + r * ch)
            cell = _render_cell(
                result, i, r, size=(cw, ch), names=names, scale=scale, overlays=overlays, font_path=font_path
            )
            canvas.paste(cell, box)

    if legend is not None:
        canvas.paste(legend, (0, height - legend_h))
    return canvas


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
) -> Image.Image:
    cell = result.cell(item, row)
    cw, ch = size
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

    unit = min(cw, ch)
    border = min(max(2, round(unit / 64)), 14)
    is_ref = result.reference.kind == "item" and result.reference.index == item
    layer = Image.new("RGBA", size, (0, 0, 0, 0))

    if is_ref:
        texts = ["reference"]
        colour = REF_COLOUR
    else:
        texts, compact = [], []
        for k, name in enumerate(names):
            scores = result.scores[name]
            value, rank, is_mean = _cell_scores(result, scores, item, row)
            if k == 0:
                colour = colormap(_normalise(value, scale))
            head = f"{scores.label} mean" if is_mean else scores.label
            rank_text = f"  #{rank}" if rank is not None else ""
            texts.append(f"{head} {_fmt(value)}{rank_text}")
            short = _fmt(value) + (f" #{rank}" if rank is not None else "")
            compact.append(short if len(names) == 1 else f"{scores.label[:4]} {short}")
    inner = cw - 2 * border
    font, lines = _fit_overlay(texts, inner, unit, font_path)
    if font is None and not is_ref:
        font, lines = _fit_overlay(compact, inner, unit, font_path, min_size=7)
    if font is None:
        font, lines = get_font(7, path=font_path), texts

    opad = max(2, font.size // 4)
    box_h = _block_height(len(lines), font) + 2 * opad
    draw = ImageDraw.Draw(layer)
    draw.rectangle(
        (border, ch - border - box_h, cw - border - 1, ch - border - 1), fill=(0, 0, 0, OVERLAY_ALPHA)
    )
    _draw_lines(
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
    total = title_font.line_height + (spacing * 2 + _block_height(len(lines), font) if lines else 0)
    y = (ch - total) / 2
    _draw_lines(image, [status], title_font, (pad, y, cw - pad, y + title_font.line_height), title_colour)
    if lines:
        y += title_font.line_height + spacing * 2
        _draw_lines(image, lines, font, (pad, y, cw - pad, ch - pad), text_colour, valign="top")
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
    text_h = _block_height(len(lines), small)
    out = Image.new("RGB", (width, pad + text_h + pad + bar.height + pad), BACKGROUND)
    _draw_lines(out, lines, small, (pad, pad, width - pad, pad + text_h), (60, 60, 60), align="left")
    out.paste(bar, (max(0, pad - label_w // 2), 2 * pad + text_h))
    return out


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


# -- heatmaps -----------------------------------------------------------------------------------


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
    label_room = min(280, max(int(max(font.length(t) for t in labels)) + 4, 40))
    max_lines = max(1, (cell + spacing) // (font.line_height + spacing))
    wrapped = [wrap_text(t, font, label_room, max_lines=max_lines) for t in labels]
    row_w = max(int(max(font.length(line) for line in lines)) for lines in wrapped) + 8
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
        warn_lines = wrap_text(_preview_warning(result.spec), bold, text_w)
    head_h = _block_height(len(title_lines), title_font) + spacing + _block_height(len(sub_lines), font)
    if warn_lines:
        head_h += spacing + _block_height(len(warn_lines), bold)
    top = pad + head_h + pad + col_h
    height = max(top + n * cell, top + legend.height - (legend.height - n * cell) // 2) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)

    y = pad
    _draw_lines(
        canvas, title_lines, title_font, (pad, y, width - pad, y + 1), TEXT, align="left", valign="top"
    )
    y += _block_height(len(title_lines), title_font) + spacing
    _draw_lines(
        canvas, sub_lines, font, (pad, y, width - pad, y + 1), (70, 70, 70), align="left", valign="top"
    )
    y += _block_height(len(sub_lines), font) + spacing
    if warn_lines:
        _draw_lines(
            canvas, warn_lines, bold, (pad, y, width - pad, y + 1), (190, 90, 0), align="left", valign="top"
        )

    x0 = pad + row_w
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        lf = bold if i == ref_index else font
        # Row label, right-aligned beside its row.
        _draw_lines(
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
        _draw_lines(mask, wrapped[i], lf, (6, 0, col_h, cell), 255, align="left", spacing=spacing)
        mask = mask.transpose(Image.Transpose.ROTATE_90)
        canvas.paste(TEXT, (x0 + i * cell, top - col_h), mask)
        for j in range(n):
            value = float(matrix[i, j])
            box = (x0 + j * cell, top + i * cell, x0 + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            if math.isnan(value):
                _hatch(draw, box)
                continue
            colour = colormap(_normalise(value, scale))
            draw.rectangle(box, fill=colour)
            text = f"{value:.{digits}f}"
            font.draw(
                canvas,
                (box[0] + (cell - font.length(text)) / 2, box[1] + (cell - font.line_height) / 2),
                text,
                _contrast_text(colour),
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


# -- everything the gallery shows ---------------------------------------------------------------


def render_all(result: ProbeResult, *, overlays: bool = True) -> list[tuple[str, Image.Image]]:
    """What the WebUI gallery shows, in order: the grid, then one heatmap per metric.

    Heatmaps need two items at least (a 1×1 matrix says nothing).
    """
    out = [("grid", render_grid(result, overlays=overlays))]
    if len(result.items) >= 2:
        out.extend((f"heatmap-{name}", render_heatmap(result, name)) for name in result.scores)
    return out
