"""Grids annotated the way the WebUI annotates them, for split-grid's tests.

Written for these tests from the behaviour of A1111/Forge ``modules/images.py``
(``draw_grid_annotations`` and ``draw_prompt_matrix``, as of Forge 45b8a499 = A1111 1.10), not
from cfgsim's own drawing code, so that split-grid is tested on what the WebUI really produces:

- font: the WebUI's TrueType font (Roboto, or the font set in its options) at
  ``(cell width + cell height) // 25`` px; line spacing is half of that;
- a label is wrapped word by word to the cell width (column labels) or to the left margin (row
  labels); a word that does not fit starts a new line and is never broken, so the first line is
  empty when the first word alone is too long;
- each line's size is its ink box measured with that font (``textbbox`` from the origin); a line
  still wider than its room is drawn with the font shrunk one pixel at a time until it fits, but
  keeps the size measured at the full font size;
- the left margin is 3/4 of a cell width when any row label has text, else none; the top margin is
  the tallest column label block (line heights plus spacing between lines) plus two spacings, or
  none when no column label has text; no margin right or bottom; ``margin`` px between cells;
- column labels are centred over their column and in the top margin; row labels centred in the
  left margin and beside their row, whose block height the WebUI counts without spacing (its
  sum subtracts one spacing per line); each line is drawn at its centre (anchor "mm");
- a prompt matrix labels each column with every horizontal prompt (the first half of the prompts
  after the first), active ones black, inactive ones grey (#999999) struck through with a 4 px line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)
BACKGROUND = (255, 255, 255)


def webui_fonts() -> list[str]:
    """Font files to draw with: DejaVu Sans (the fallback cfgsim also finds) and Roboto, the
    WebUI's own, where one is available (``CFGSIM_TEST_ROBOTO`` or a WebUI checkout nearby)."""
    from cfgsim.render.text import find_font

    fonts = [find_font()] if find_font() else []
    candidates = [os.environ.get("CFGSIM_TEST_ROBOTO", "")]
    for root in (Path(__file__).resolve().parents[2], Path.cwd().parent):
        candidates += [str(p) for p in sorted(root.glob("webui/*/modules/Roboto-Regular.ttf"))]
    for path in candidates:
        if path and Path(path).is_file() and path not in fonts:
            fonts.append(path)
            break
    return fonts


@dataclass
class Label:
    text: str = ""
    active: bool = True


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, room: float) -> list[str]:
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=font) <= room:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def annotate(
    cells: Sequence[Sequence[Image.Image]],
    columns: Sequence[Sequence[Label]],
    rows: Sequence[Sequence[Label]],
    *,
    font_path: str,
    margin: int = 0,
) -> tuple[Image.Image, tuple[int, int]]:
    """The annotated grid of ``cells`` (rows × cols, one size) and its (left, top) margins.

    ``columns[c]``/``rows[r]``: the labels of column c / row r (several for a prompt matrix).
    """
    n_rows, n_cols = len(cells), len(cells[0])
    width, height = cells[0][0].size
    size = (width + height) // 25
    spacing = size // 2
    font = ImageFont.truetype(font_path, size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def lay_out(labels: Sequence[Label], room: float) -> list[tuple[str, bool, tuple[int, int], float]]:
        out = []
        for label in labels:
            for line in _wrap(measure, label.text, font, room):
                box = measure.textbbox((0, 0), line, font=font)
                out.append((line, label.active, (box[2] - box[0], box[3] - box[1]), room))
        return out

    left = 0 if sum(len(label.text) for labels in rows for label in labels) == 0 else width * 3 // 4
    col_lines = [lay_out(labels, width) for labels in columns]
    row_lines = [lay_out(labels, left) for labels in rows]
    col_heights = [sum(s[1] + spacing for _, _, s, _ in lines) - spacing for lines in col_lines]
    row_heights = [sum(s[1] + spacing for _, _, s, _ in lines) - spacing * len(lines) for lines in row_lines]
    top = 0 if sum(col_heights) == 0 else max(col_heights) + spacing * 2

    grid = Image.new(
        "RGB",
        (left + n_cols * width + margin * (n_cols - 1), top + n_rows * height + margin * (n_rows - 1)),
        BACKGROUND,
    )
    for r in range(n_rows):
        for c in range(n_cols):
            grid.paste(cells[r][c], (left + (width + margin) * c, top + (height + margin) * r))
    draw = ImageDraw.Draw(grid)

    def draw_block(lines, x: float, y: float) -> None:
        for text, active, line_size, room in lines:
            line_font, line_px = font, size
            while _text_width(draw, text, line_font) > room and line_px > 1:
                line_px -= 1
                line_font = ImageFont.truetype(font_path, line_px)
            colour = ACTIVE if active else INACTIVE
            draw.text((x, y + line_size[1] / 2), text, font=line_font, fill=colour, anchor="mm")
            if not active:
                half_w, mid = line_size[0] // 2, y + line_size[1] // 2
                draw.line((x - half_w, mid, x + half_w, mid), fill=INACTIVE, width=4)
            y += line_size[1] + spacing

    for c, lines in enumerate(col_lines):
        draw_block(lines, left + (width + margin) * c + width / 2, top / 2 - col_heights[c] / 2)
    for r, lines in enumerate(row_lines):
        draw_block(lines, left / 2, top + (height + margin) * r + height / 2 - row_heights[r] / 2)
    return grid, (left, top)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont) -> float:
    # The WebUI measures with multiline_textsize (Pillow 9.5): the box from the origin to the
    # ink's right edge, i.e. the right edge of textbbox at (0, 0).
    return draw.textbbox((0, 0), text, font=font)[2] if text else 0


def xy_grid(
    cells: Sequence[Sequence[Image.Image]],
    x_labels: Sequence[str] | None,
    y_labels: Sequence[str] | None,
    *,
    font_path: str,
    margin: int = 0,
) -> tuple[Image.Image, tuple[int, int]]:
    """An X/Y plot grid: one label per column and per row (empty when ``None``)."""
    n_rows, n_cols = len(cells), len(cells[0])
    columns = [[Label(x_labels[c] if x_labels else "")] for c in range(n_cols)]
    rows = [[Label(y_labels[r] if y_labels else "")] for r in range(n_rows)]
    return annotate(cells, columns, rows, font_path=font_path, margin=margin)


def prompt_matrix(
    cells_by_index: Sequence[Image.Image], prompts: Sequence[str], *, font_path: str, margin: int = 0
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """A prompt-matrix grid of ``2**(len(prompts) - 1)`` images; returns (grid, margins, (rows, cols))."""
    rest = list(prompts[1:])
    half = math.ceil(len(rest) / 2)
    horizontal, vertical = rest[:half], rest[half:]
    n_cols, n_rows = 1 << len(horizontal), 1 << len(vertical)
    cells = [[cells_by_index[r * n_cols + c] for c in range(n_cols)] for r in range(n_rows)]
    columns = [[Label(p, bool(pos & (1 << i))) for i, p in enumerate(horizontal)] for pos in range(n_cols)]
    rows = [[Label(p, bool(pos & (1 << i))) for i, p in enumerate(vertical)] for pos in range(n_rows)]
    grid, margins = annotate(cells, columns, rows, font_path=font_path, margin=margin)
    return grid, margins, (n_rows, n_cols)
