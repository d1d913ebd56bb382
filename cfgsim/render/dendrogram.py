"""The family tree as a picture: a dendrogram with labels, bootstrap support and a distance axis.

Root on the left, leaves on the right with their labels, one row per item (legible from 3 to 60
items: the row height stays fixed and the image grows). The horizontal axis is 1 − similarity of
the tree's metric; each internal node carries its clade's bootstrap support in percent, coloured
by how well supported it is. Everything drawn comes from ``result.lineage``.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from cfgsim.lineage import Lineage
from cfgsim.render.colour import BACKGROUND, REF_COLOUR, TEXT
from cfgsim.render.legend import legend_ticks
from cfgsim.render.text import get_font, wrap_text
from cfgsim.result import ProbeResult

ROW = 26  # px per leaf
TREE_WIDTH = 560
LINE = (40, 40, 40)
SUPPORT_STRONG = (0, 110, 40)  # >= 95 %
SUPPORT_MID = (170, 110, 0)  # 70-94 %
SUPPORT_WEAK = (190, 30, 30)  # < 70 %
NOTE = (120, 80, 0)


def render_dendrogram(result: ProbeResult) -> Image.Image:
    """The tree of ``result.lineage`` as an RGB image. Raises ValueError without a lineage."""
    lineage = result.lineage
    if lineage is None or len(lineage.items) < 2:
        raise ValueError("no family tree: fewer than two items with images")
    font = get_font(15)
    small = get_font(12)
    bold = get_font(17, bold=True)
    labels = {i: result.items[i].label for i in lineage.items}
    ref = result.reference.index if result.reference.kind == "item" else None
    label_width = min(360, max(font.length(_leaf_text(labels[i], i == ref)) for i in lineage.items) + 8)

    title = f"Family tree — {lineage.metric.upper()}, average linkage (UPGMA) on 1 − similarity"
    subtitle = _subtitle(lineage)
    notes = list(lineage.notes)
    if not lineage.has_support:
        notes.insert(0, "No bootstrap support: it needs two seeds or more (and three items).")
    width = 40 + TREE_WIDTH + 12 + int(label_width) + 20
    sub_lines = wrap_text(subtitle, small, width - 40)
    note_lines = [line for note in notes for line in wrap_text(note, small, width - 40)]
    top = 16 + bold.line_height + 6 + len(sub_lines) * (small.line_height + 2) + 10
    top += len(note_lines) * (small.line_height + 2)
    top += 8
    n_leaves = len(lineage.order)
    tree_height = n_leaves * ROW
    axis_h = 48
    height = top + tree_height + axis_h
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    bold.draw(image, (20, 16), title, TEXT)
    y = 16 + bold.line_height + 6
    for line in sub_lines:
        small.draw(image, (20, y), line, TEXT)
        y += small.line_height + 2
    y += 10
    for line in note_lines:
        small.draw(image, (20, y), line, NOTE)
        y += small.line_height + 2

    max_height = max((c.height for c in lineage.clades), default=0.0)
    scale_max = _nice_ceiling(max(max_height, 1e-3))
    x0 = 40  # root side: distance scale_max
    x1 = 40 + TREE_WIDTH  # leaves: distance 0

    def x_of(h: float) -> float:
        return x1 - (h / scale_max) * (x1 - x0)

    leaf_y = {item: top + k * ROW + ROW / 2 for k, item in enumerate(lineage.order)}
    n = len(lineage.items)
    # Clade node ids are relative to lineage.items positions; map them back to result indices.
    local_to_item = {k: item for k, item in enumerate(_leaf_ids(lineage))}
    node_pos: dict[int, tuple[float, float]] = {}

    def pos(node: int) -> tuple[float, float]:
        if node < n:
            item = local_to_item[node]
            return x1, leaf_y[item]
        return node_pos[node]

    for k, clade in enumerate(lineage.clades):
        (ax, ay), (bx, by) = pos(clade.children[0]), pos(clade.children[1])
        x = x_of(clade.height)
        draw.line([(ax, ay), (x, ay)], fill=LINE, width=2)
        draw.line([(bx, by), (x, by)], fill=LINE, width=2)
        draw.line([(x, ay), (x, by)], fill=LINE, width=2)
        node_pos[n + k] = (x, (ay + by) / 2)
    # Support labels after the lines, so no line crosses a number.
    root = n + len(lineage.clades) - 1
    for k, clade in enumerate(lineage.clades):
        if n + k == root or clade.support is None:
            continue
        x, ym = node_pos[n + k]
        percent = round(clade.support * 100)
        text = str(percent)
        colour = _support_colour(percent)
        w = small.length(text)
        box = (x - w - 6, ym - small.line_height - 2, x - 2, ym - 1)
        draw.rectangle(box, fill=BACKGROUND)
        small.draw(image, (x - w - 4, ym - small.line_height - 1), text, colour)
    for item in lineage.order:
        text = _leaf_text(labels[item], item == ref)
        text = _fit(text, font, label_width)
        font.draw(
            image, (x1 + 12, leaf_y[item] - font.line_height / 2), text, REF_COLOUR if item == ref else TEXT
        )

    # Distance axis.
    ay = top + tree_height + 10
    draw.line([(x0, ay), (x1, ay)], fill=LINE, width=1)
    for tick in legend_ticks((0.0, scale_max), max_ticks=6):
        x = x_of(tick)
        draw.line([(x, ay), (x, ay + 5)], fill=LINE, width=1)
        t = f"{tick:.3f}".rstrip("0").rstrip(".") if tick else "0"
        small.draw(image, (x - small.length(t) / 2, ay + 7), t, TEXT)
    caption = f"1 − {lineage.metric.upper()} (clade height = half the average distance between its sides)"
    small.draw(image, (x0, ay + 9 + small.line_height), caption, TEXT)
    return image


def _leaf_ids(lineage: Lineage) -> list[int]:
    """Result item index of each tree leaf id (leaf ids are positions in ``lineage.items``)."""
    return list(lineage.items)


def _leaf_text(label: str, is_ref: bool) -> str:
    return f"{label} (REF)" if is_ref else label


def _fit(text: str, font, max_width: float) -> str:
    if font.length(text) <= max_width:
        return text
    while text and font.length(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def _subtitle(lineage: Lineage) -> str:
    seeds = len(lineage.rows_used)
    parts = [f"{seeds} seed{'s' if seeds != 1 else ''}"]
    if lineage.has_support:
        parts.append(
            f"support = % of {lineage.replicates} seed-bootstrap trees holding the clade "
            f"(RNG seed {lineage.rng_seed}); ≥95 green, 70–94 amber, <70 red"
        )
    return "; ".join(parts)


def _support_colour(percent: int) -> tuple[int, int, int]:
    if percent >= 95:
        return SUPPORT_STRONG
    if percent >= 70:
        return SUPPORT_MID
    return SUPPORT_WEAK


def _nice_ceiling(value: float) -> float:
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        nice = step * 10**exp
        if nice >= value:
            return nice
    return 10 ** (exp + 1)
