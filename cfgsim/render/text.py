"""Fonts and text layout shared by every renderer.

- The WebUI pins Pillow 9.5.0; users of the library run Pillow 10-13. Only APIs present in all of
  them are used (``textbbox``/``textlength``/``getlength``, never ``textsize``/``getsize``), and
  ``ImageFont.load_default()`` is handled in both forms (a small bitmap font before 10.1, a
  scalable one with ``size=`` since).
- The WebUI ships no font we can rely on, so a TrueType font is searched once (DejaVu Sans in the
  usual places, matplotlib's copy, the WebUI's Roboto beside the extension) and the search cached.
  Without one, the bitmap font is drawn scaled up (nearest neighbour) so text keeps its size.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cfgsim.errors import InputError

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
    # Inside the WebUI the package lives in <webui>/extensions/<extension>/cfgsim/render/; the WebUI keeps
    # Roboto in <webui>/modules/. The WebUI also runs with its root as the working directory.
    here = Path(__file__).resolve()
    if len(here.parents) > 4:
        dirs.append(here.parents[4] / "modules")
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


def fit_font(font_path: str | None) -> str | None:
    if font_path is None:
        return None
    if not Path(font_path).is_file():
        raise InputError(f"font {font_path}: no such file")
    try:
        ImageFont.truetype(str(font_path), 12)
    except OSError as exc:
        raise InputError(f"font {font_path}: not a TrueType/OpenType font ({exc})") from exc
    return str(font_path)


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


def draw_lines(
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


def block_height(n_lines: int, font: TextFont, spacing: int | None = None) -> int:
    spacing = font.size // 5 if spacing is None else spacing
    return n_lines * font.line_height + max(0, n_lines - 1) * spacing
