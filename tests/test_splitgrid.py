"""Cutting X/Y plot grids into cells (cfgsim.splitgrid), on WebUI-like grids drawn by the tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers import make_result, mean_abs_diff, smooth_image, webui_grid, webui_infotext
from PIL import Image, ImageDraw, PngImagePlugin
from webui_annotate import prompt_matrix, webui_fonts, xy_grid

from cfgsim.errors import InputError
from cfgsim.render import render_grid
from cfgsim.spec import ProbeSpec
from cfgsim.splitgrid import (
    REFUSE_CONFIDENCE,
    WARN_CONFIDENCE,
    axis_values_from_infotext,
    parse_axis_values,
    split_grid,
)

X_LABELS = [
    "animefull-final-pruned",
    "anything-v3.0 [8a2b3c4d]",
    "models/Stable-diffusion/merge_v2.safetensors",
]
Y_LABELS = ["Seed: 1337", "Seed: 42"]


def cells_for(rows: int, cols: int, size: tuple[int, int], seed: int = 0) -> list[list[Image.Image]]:
    return [[smooth_image(seed + r * 100 + c, size) for c in range(cols)] for r in range(rows)]


def degrade(grid: Image.Image, scale: float, jpeg: int | None) -> Image.Image:
    if scale != 1.0:
        grid = grid.resize((round(grid.width * scale), round(grid.height * scale)), Image.Resampling.LANCZOS)
    if jpeg:
        buffer = io.BytesIO()
        grid.save(buffer, "JPEG", quality=jpeg)
        grid = Image.open(io.BytesIO(buffer.getvalue()))
    return grid


def check(split, cells, margins, scale, max_diff, margin_tolerance=3):
    rows, cols = len(cells), len(cells[0])
    assert len(split.cells) == rows and all(len(row) == cols for row in split.cells)
    expected = (round(margins[0] * scale), round(margins[1] * scale))
    assert abs(split.margins[0] - expected[0]) <= margin_tolerance, (split.margins, expected)
    assert abs(split.margins[1] - expected[1]) <= margin_tolerance, (split.margins, expected)
    w, h = cells[0][0].size
    assert abs(split.cell_size[0] - w * scale) <= 1.5 and abs(split.cell_size[1] - h * scale) <= 1.5
    for r in range(rows):
        for c in range(cols):
            assert split.cells[r][c].size == split.cell_size
            # The original cell brought to the found cell's size: same picture, up to resampling.
            assert mean_abs_diff(cells[r][c], split.cells[r][c]) < max_diff, (r, c)


@pytest.mark.parametrize(
    ("labels", "gap", "scale", "jpeg", "size", "max_diff"),
    [
        (True, 0, 1.0, None, 128, 0.01),
        (False, 0, 1.0, None, 128, 0.01),
        (True, 8, 1.0, None, 128, 0.01),
        (False, 6, 1.0, None, 128, 0.01),
        (True, 0, 0.5, None, 128, 3.0),
        # A 4 px gap downscaled to 1.5 px is a blur that reads as no gap: cells are ~1 px too big.
        (True, 4, 0.37, None, 256, 7.5),
        (True, 0, 1.0, 70, 128, 4.0),
        (True, 0, 0.37, 70, 256, 6.0),
        (True, 6, 0.37, 70, 256, 6.0),
        (False, 0, 0.5, 70, 128, 5.0),
    ],
    ids=[
        "labels",
        "plain",
        "labels-gap8",
        "plain-gap6",
        "half",
        "37pc-gap4",
        "jpeg70",
        "37pc-jpeg70",
        "37pc-gap6-jpeg70",
        "plain-half-jpeg70",
    ],
)
def test_split_webui_grids(labels, gap, scale, jpeg, size, max_diff):
    # Bounds on the mean absolute difference (0-255) between each original cell, brought to the
    # found cell size, and the cell cut from the (downscaled, JPEG) grid: exact copies for
    # untouched grids; resampling and JPEG noise otherwise.
    cells = cells_for(2, 3, (size, size))
    grid, margins = webui_grid(cells, X_LABELS if labels else None, Y_LABELS if labels else None, margin=gap)
    split = split_grid(degrade(grid, scale, jpeg), 2, 3)
    check(split, cells, margins, scale, max_diff)
    if gap and scale == 1.0:
        assert split.gap == (gap, gap)


def test_non_square_cells_and_only_column_labels():
    cells = cells_for(3, 2, (96, 128), seed=7)
    grid, margins = webui_grid(cells, ["first model", "second model"], None)
    assert margins[0] == 0 and margins[1] > 0
    check(split_grid(grid, 3, 2), cells, margins, 1.0, 0.01)


def test_only_row_labels():
    cells = cells_for(2, 2, (96, 96), seed=3)
    grid, margins = webui_grid(cells, None, ["Seed: 1", "Seed: 2"])
    assert margins[1] == 0 and margins[0] == 72
    check(split_grid(grid, 2, 2), cells, margins, 1.0, 0.01)


@pytest.mark.parametrize(("rows", "cols", "labels"), [(1, 1, True), (4, 1, False), (1, 5, True)])
def test_single_row_or_column(rows, cols, labels):
    cells = cells_for(rows, cols, (96, 96), seed=11)
    x = [f"model {c}" for c in range(cols)] if labels else None
    y = [f"Seed: {r}" for r in range(rows)] if labels else None
    grid, margins = webui_grid(cells, x, y)
    check(split_grid(grid, rows, cols), cells, margins, 1.0, 0.01)


def test_long_wrapped_labels():
    cells = cells_for(2, 2, (128, 128), seed=5)
    long = ["a checkpoint with a very long descriptive name v1.5 pruned", "b"]
    grid, margins = webui_grid(cells, long, ["Seed: 1337 with a long row label", "Seed: 42"])
    check(split_grid(grid, 2, 2), cells, margins, 1.0, 0.01)


def white_background(seed: int, size: tuple[int, int]) -> Image.Image:
    """A subject in the middle of a near-white background, as many anime-model outputs are."""
    image = np.asarray(smooth_image(seed, size), dtype=float)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    subject = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.3 * w) ** 2
    return Image.fromarray(np.where(subject[..., None], image, 250).astype(np.uint8))


@pytest.mark.parametrize("gap", [0, 8])
def test_white_image_edges_are_not_taken_for_margins(gap):
    # Cell borders are invisible (white meets white): the labels' placement finds the layout.
    cells = [[white_background(r * 10 + c, (128, 128)) for c in range(3)] for r in range(2)]
    grid, margins = webui_grid(cells, X_LABELS, Y_LABELS, margin=gap)
    check(split_grid(grid, 2, 3), cells, margins, 1.0, 3.0)


def test_our_own_plain_grid_splits_back_into_its_images():
    result = make_result(n_items=3, seeds=(1337, 42), with_failure=False, size=(96, 96))
    grid = render_grid(result, overlays=False)
    split = split_grid(grid, 2, 3)
    for cell in result.cells:
        assert mean_abs_diff(cell.image, split.cells[cell.row][cell.item]) < 0.01
    assert split.margins == (grid.width - 3 * 96, grid.height - 2 * 96)


# -- axis values --------------------------------------------------------------------------------


def test_axis_values_from_the_grids_own_infotext(tmp_path):
    cells = cells_for(2, 3, (96, 96))
    grid, _ = webui_grid(cells, X_LABELS, Y_LABELS)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", webui_infotext('animefull, "anything, v3", merge', "1337, 42"))
    grid.save(tmp_path / "xyz_grid-0001.png", pnginfo=info)
    with Image.open(tmp_path / "xyz_grid-0001.png") as image:
        image.load()
        split = split_grid(image, 2, 3)
    assert split.axis_values == (["animefull", "anything, v3", "merge"], ["1337", "42"])


def test_axis_values_passed_as_infotext_and_counts_checked():
    grid, _ = webui_grid(cells_for(2, 3, (64, 64)), None, None)
    split = split_grid(grid, 2, 3, infotext=webui_infotext("a, b", "1-2"))
    assert split.axis_values == (None, ["1", "2"]), "two X values cannot label three columns"
    assert split_grid(grid, 2, 3).axis_values is None
    assert split_grid(grid, 2, 3, infotext="Steps: 20, Sampler: Euler, Seed: 1").axis_values is None


def test_fixed_seed_values_win():
    text = webui_infotext("a, b", "-1, -1") + ', Fixed Y Values: "123, 456"'
    assert axis_values_from_infotext(text, 2, 2) == (["a", "b"], ["123", "456"])


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1-3", ["1", "2", "3"]),
        ("1-9 (+3)", ["1", "4", "7"]),
        ("1-10 [4]", ["1", "4", "7", "10"]),
        ('"a, b", c , d', ["a, b", "c", "d"]),
        ("Euler a, DPM++ 2M", ["Euler a", "DPM++ 2M"]),
        ("model-v1.5, 10-20-30", ["model-v1.5", "10-20-30"]),
    ],
)
def test_parse_axis_values(text, values):
    assert parse_axis_values(text) == values


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "cols", "message"),
    [
        (0, 2, "at least 1"),
        (2, -1, "at least 1"),
        (2.0, 2, "whole numbers"),
        (True, 2, "whole numbers"),
        (40, 2, "cannot hold"),
    ],
)
def test_bad_rows_and_cols(rows, cols, message):
    with pytest.raises(InputError, match=message):
        split_grid(Image.new("RGB", (200, 200), "white"), rows, cols)


def test_a_blank_image_splits_evenly():
    split = split_grid(Image.new("RGB", (300, 200), "white"), 2, 3)
    assert split.margins == (0, 0) and split.cell_size == (100, 100)


# -- grids annotated as the WebUI annotates them (tests/webui_annotate.py) -----------------------

FONTS = webui_fonts()


@pytest.fixture(params=FONTS, ids=[Path(f).stem for f in FONTS])
def font(request):
    return request.param


@pytest.mark.parametrize(
    ("size", "gap", "scale", "jpeg", "max_diff"),
    [(128, 0, 1.0, None, 0.01), (256, 8, 1.0, None, 0.01), (192, 0, 0.5, None, 3.0), (256, 0, 0.5, 75, 6.0)],
    ids=["128", "256-gap8", "192-half", "256-half-jpeg75"],
)
def test_webui_xy_grids(font, size, gap, scale, jpeg, max_diff):
    cells = cells_for(2, 3, (size, size), seed=21)
    grid, margins = xy_grid(cells, X_LABELS, Y_LABELS, font_path=font, margin=gap)
    split = split_grid(degrade(grid, scale, jpeg), 2, 3)
    check(split, cells, margins, scale, max_diff)
    assert split.method == "labels" and split.confidence >= 0.8, split.evidence


def test_webui_prompt_matrix(font):
    """Column labels of several lines, inactive prompts grey and struck through."""
    images = [smooth_image(k, (128, 128)) for k in range(8)]
    prompts = ["a cat", "on a mat", "in the style of picasso", "highly detailed"]
    grid, margins, (rows, cols) = prompt_matrix(images, prompts, font_path=font)
    assert (rows, cols) == (2, 4) and margins[0] == 96
    cells = [[images[r * cols + c] for c in range(cols)] for r in range(rows)]
    split = split_grid(grid, rows, cols)
    check(split, cells, margins, 1.0, 0.01)
    assert split.confidence >= 0.8, split.evidence


def banded_cell(seed: int, size: int = 128) -> Image.Image:
    """A white-background picture with a dark bar across it and white bands at its edges."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    y = int(rng.integers(size // 3, 2 * size // 3))
    ImageDraw.Draw(image).rectangle((10, y, size - 10, y + 12), fill=(20, 20, 20))
    return image


def test_white_bands_are_no_phantom_gap_or_margin():
    """2×3 cells of 128 px with white bands at their edges and no labels: the old search cut
    107×112 px cells (a 31.5 px "gap") and said nothing. Now the cut is even, and the evidence says
    why the layout is unsure."""
    cells = [[banded_cell(r * 3 + c) for c in range(3)] for r in range(2)]
    grid, margins = xy_grid(cells, None, None, font_path=FONTS[0])
    assert margins == (0, 0) and grid.size == (384, 256)
    split = split_grid(grid, 2, 3)
    assert split.cell_size == (128, 128) and split.margins == (0, 0) and split.gap == (0.0, 0.0)
    assert split.confidence < REFUSE_CONFIDENCE
    assert "white bands" in split.evidence and "text-like marks" in split.evidence
    told = split_grid(grid, 2, 3, labels=False)
    assert told.cell_size == (128, 128) and REFUSE_CONFIDENCE <= told.confidence < WARN_CONFIDENCE
    check(told, cells, (0, 0), 1.0, 0.01)


def test_margins_and_gap_given():
    cells = cells_for(2, 2, (96, 96), seed=4)
    grid, margins = xy_grid(cells, ["a", "b"], ["1", "2"], font_path=FONTS[0], margin=6)
    split = split_grid(grid, 2, 2, margins=margins, gap=6)
    check(split, cells, margins, 1.0, 0.01)
    assert split.method == "given" and split.confidence == 1.0
    with pytest.raises(InputError, match="do not fit"):
        split_grid(grid, 2, 2, margins=(500, 0))
    with pytest.raises(InputError, match="gap"):
        split_grid(grid, 2, 2, gap=-1)


def test_clear_borders_without_labels_are_confident():
    cells = cells_for(2, 3, (96, 96), seed=9)
    grid, _ = xy_grid(cells, None, None, font_path=FONTS[0])
    split = split_grid(grid, 2, 3)
    check(split, cells, (0, 0), 1.0, 0.01)
    assert split.method == "borders" and split.confidence >= WARN_CONFIDENCE, split.evidence


# -- cfgsim's own grids: cut by the layout they record ------------------------------------------


def test_cfgsim_grid_is_cut_by_its_recorded_layout():
    """Overlays, the legend strip and a preview banner around the cells: the search alone
    reported 1×5 cells of 589×745 on such a grid; the recorded boxes cut it exactly."""
    result = make_result(n_items=3, seeds=(1337, 42), size=(96, 96))
    result.spec = ProbeSpec(width=96, height=96, seeds=(1337, 42), steps_override=10)
    grid = render_grid(result)
    layout = result.grid_layout
    assert layout == grid.info["cfgsim_grid_layout"]
    assert (layout["rows"], layout["cols"]) == (2, 3) and layout["image_size"] == list(grid.size)
    split = split_grid(grid, layout=layout)
    assert split.method == "metadata" and split.confidence == 1.0 and split.cell_size == (96, 96)
    for (x0, y0, x1, y1), cell in zip(layout["boxes"], [c for row in split.cells for c in row], strict=True):
        assert np.array_equal(np.asarray(cell), np.asarray(grid.crop((x0, y0, x1, y1))))
    half = grid.resize((grid.width // 2, grid.height // 2), Image.Resampling.LANCZOS)
    small = split_grid(half, layout=layout)
    assert small.cell_size == (48, 48)
    assert mean_abs_diff(split.cells[0][1], small.cells[0][1]) < 8.0  # overlay borders blur at half size
    with pytest.raises(InputError, match="records 2x3 cells, not 3x3"):
        split_grid(grid, 3, 3, layout=layout)
    with pytest.raises(InputError, match="layout is damaged"):
        split_grid(grid, layout={"rows": 2, "cols": 3, "image_size": [10, 10], "boxes": [[0, 0, 1]]})
