"""Test fixtures built in code: smooth random images, probe results, WebUI-like X/Y grids.

``make_result`` gives a :class:`cfgsim.result.ProbeResult` as a run would: items × seeds cells, one
failed cell, scores from the real SSIM metric (filled by hand with scikit-image when
``cfgsim.metrics`` is not importable). Images are deterministic in (item, seed); items further
from item 0 are progressively less similar to it, so scores, ranks and colours differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cfgsim import controls
from cfgsim.host import Checkpoint
from cfgsim.result import FAILED, OK, SKIPPED, Cell, MetricScores, ProbeResult, Reference
from cfgsim.spec import ProbeSpec

LANCZOS = Image.Resampling.LANCZOS


def smooth_image(seed: int, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """A smooth random RGB image (two octaves of bicubic-upsampled noise), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = np.zeros((h, w, 3))
    for cells, weight in ((4, 0.7), (12, 0.3)):
        coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        up = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
        out += weight * np.asarray(up, dtype=float)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def item_image(item: int, seed: int, size: tuple[int, int] = (128, 128)) -> Image.Image:
    """Item ``item``'s picture for ``seed``: the seed's base picture, blended with an item-specific one
    (the further the item, the stronger), like checkpoints drifting away from a common ancestor."""
    base = np.asarray(smooth_image(seed, size), dtype=float)
    if item == 0:
        return Image.fromarray(base.astype(np.uint8), "RGB")
    own = np.asarray(smooth_image(seed * 1009 + item * 7919 + 1, size), dtype=float)
    alpha = min(0.9, 0.2 * item)
    return Image.fromarray(np.clip((1 - alpha) * base + alpha * own, 0, 255).astype(np.uint8), "RGB")


def _ssim_scores(result: ProbeResult) -> None:
    """Fill ``result.scores['ssim']`` by hand (used when cfgsim.metrics is missing)."""
    from skimage.metrics import structural_similarity

    n = len(result.items)
    per_row, vs_ref = [], []
    for r in range(len(result.rows)):
        matrix = np.full((n, n), np.nan)
        arrays = {c.item: np.asarray(c.image.convert("RGB")) for c in result.cells if c.row == r and c.ok}
        for i, a in arrays.items():
            for j, b in arrays.items():
                matrix[i, j] = 1.0 if i == j else structural_similarity(a, b, channel_axis=2, data_range=255)
        per_row.append(matrix)
        if result.reference.kind == "item":
            vec = matrix[result.reference.index].copy()
            vec[result.reference.index] = np.nan
            vs_ref.append(vec)
    result.scores = {"ssim": MetricScores("ssim", "SSIM", "structural similarity", per_row, vs_ref or None)}


def make_result(
    n_items: int = 3,
    seeds: Sequence[int] = (1337, 42),
    with_failure: bool = True,
    reference_index: int | None = 0,
    *,
    size: tuple[int, int] = (128, 128),
    labels: Sequence[str] | None = None,
    with_skipped: bool = False,
    spec: ProbeSpec | None = None,
) -> ProbeResult:
    """A compared result: ``n_items`` items × ``seeds``; the last item's last seed failed (when
    ``with_failure``); with ``with_skipped`` the last item is an SDXL checkpoint, all skipped."""
    labels = list(labels) if labels is not None else [f"model-{chr(97 + i)}" for i in range(n_items)]
    items = []
    for i, label in enumerate(labels):
        digest = hashlib.sha256(label.encode()).hexdigest()
        skipped = with_skipped and i == len(labels) - 1
        items.append(
            Checkpoint(
                name=f"{label}.safetensors",
                label=label,
                file=f"/models/{label}.safetensors",
                model_hash=digest[:8],
                sha256=digest,
                architecture="sdxl" if skipped else "sd1",
            )
        )
    spec = spec or ProbeSpec(width=size[0], height=size[1], seeds=tuple(seeds))
    reference = (
        Reference("item", reference_index, labels[reference_index])
        if reference_index is not None
        else Reference()
    )
    result = ProbeResult(spec=spec, items=items, rows=list(spec.seeds), reference=reference, host="test")
    for r, seed in enumerate(spec.seeds):
        for i in range(len(items)):
            cell = Cell(item=i, row=r)
            if items[i].probe_skip_reason:
                cell.status, cell.reason = SKIPPED, items[i].probe_skip_reason
            elif with_failure and i == len(items) - 1 and r == len(spec.seeds) - 1 and len(items) > 1:
                cell.status = FAILED
                cell.reason = (
                    "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total)"
                )
            else:
                cell.status, cell.image = OK, item_image(i, seed, size)
                cell.infotext = f"Steps: {spec.steps}, Sampler: Euler, Seed: {seed}, Model: {labels[i]}"
            result.cells.append(cell)
    try:
        from cfgsim.compare import compare
        from cfgsim.metrics import get_metric
    except ImportError:
        _ssim_scores(result)
    else:
        compare(result, [get_metric("ssim")])
    return result


# -- a WebUI-like X/Y plot --------------------------------------------------------------------


def webui_grid(
    cells: Sequence[Sequence[Image.Image]],
    x_labels: Sequence[str] | None,
    y_labels: Sequence[str] | None,
    *,
    margin: int = 0,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[Image.Image, tuple[int, int]]:
    """An X/Y plot laid out the way the WebUI's ``draw_grid_annotations`` does it.

    White margins on the top and left only (left: 3/4 of a cell width; top: the wrapped labels'
    height plus twice the line spacing), black labels centred, font size (w + h) / 25, cells
    ``margin`` px apart. Returns (grid, (left margin, top margin)).
    """
    from cfgsim.render import get_font, wrap_text

    rows, cols = len(cells), len(cells[0])
    w, h = cells[0][0].size
    fontsize = (w + h) // 25
    spacing = fontsize // 2
    font = get_font(fontsize)
    pad_left = w * 3 // 4 if y_labels else 0
    hor = [wrap_text(t, font, w) for t in x_labels] if x_labels else []
    ver = [wrap_text(t, font, pad_left) for t in y_labels] if y_labels else []
    hor_heights = [len(lines) * font.line_height + (len(lines) - 1) * spacing for lines in hor]
    pad_top = max(hor_heights) + spacing * 2 if hor_heights else 0
    grid = Image.new(
        "RGB",
        (pad_left + cols * w + (cols - 1) * margin, pad_top + rows * h + (rows - 1) * margin),
        background,
    )
    for r in range(rows):
        for c in range(cols):
            grid.paste(cells[r][c], (pad_left + (w + margin) * c, pad_top + (h + margin) * r))

    def centred(lines: list[str], cx: float, top: float) -> None:
        y = top
        for line in lines:
            font.draw(grid, (cx - font.length(line) / 2, y), line, (0, 0, 0))
            y += font.line_height + spacing

    for c, lines in enumerate(hor):
        centred(lines, pad_left + (w + margin) * c + w / 2, pad_top / 2 - hor_heights[c] / 2)
    for r, lines in enumerate(ver):
        height = len(lines) * font.line_height + (len(lines) - 1) * spacing
        centred(lines, pad_left / 2, pad_top + (h + margin) * r + h / 2 - height / 2)
    return grid, (pad_left, pad_top)


def webui_infotext(
    x_values: str, y_values: str, x_type: str = "Checkpoint name", y_type: str = "Seed"
) -> str:
    """The first cell's infotext that a WebUI X/Y plot grid carries (with the script's pairs)."""
    from cfgsim.infotext import quote

    return (
        "Negative prompt: (bad:0), (comic:0)\n"
        "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, Model hash: 925997e9, "
        f"Clip skip: 2, Script: X/Y/Z plot, X Type: {x_type}, X Values: {quote(x_values)}, "
        f"Y Type: {y_type}, Y Values: {quote(y_values)}"
    )


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference in 0-255 levels, after resizing ``a`` to ``b``'s size."""
    if a.size != b.size:
        a = a.resize(b.size, LANCZOS)
    return float(np.mean(np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float))))


__all__ = [
    "OK",
    "item_image",
    "make_result",
    "mean_abs_diff",
    "smooth_image",
    "webui_grid",
    "webui_infotext",
]


def script_args(checkpoints, **values):
    """The WebUI script's positional arguments in the declared order, from keyword values
    (each control's default elsewhere), as the WebUI and API callers pass them."""
    out = []
    for control in controls.CONTROLS:
        if control.name == "checkpoints":
            out.append(list(checkpoints))
        elif control.name in values:
            out.append(values[control.name])
        elif control.kind == "index":
            out.append(control.choices.index(control.default))
        else:
            out.append(control.default if not isinstance(control.default, tuple) else list(control.default))
    return out
