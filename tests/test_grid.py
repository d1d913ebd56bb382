"""The grid, heatmap and legend renderers (cfgsim.render): what a user sees on the pictures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers import make_result, smooth_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.render import (
    BADGE_COLOUR,
    BANNER_COLOUR,
    FAILED_FILL,
    NAN_COLOUR,
    REF_COLOUR,
    SKIPPED_FILL,
    colormap,
    get_font,
    legend_ticks,
    render_all,
    render_grid,
    render_heatmap,
    render_legend,
    score_scale,
    wrap_text,
)
from cfgsim.render import colour as rcolour
from cfgsim.render import grid as rgrid
from cfgsim.render import text as rtext
from cfgsim.result import FAILED, SKIPPED
from cfgsim.spec import ProbeSpec

WHITE = (255, 255, 255)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def layout(result, image: Image.Image, cell: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of the cell area of a grid drawn with overlays=False (no legend strip), found
    from where the first cell image sits: the grid is margins + rows × cols cells."""
    cw, ch = cell
    left = image.width - len(result.items) * cw
    top = image.height - len(result.rows) * ch
    return left, top


def cell_crop(
    image: Image.Image, left: int, top: int, cell: tuple[int, int], item: int, row: int
) -> np.ndarray:
    cw, ch = cell
    return arr(image.crop((left + item * cw, top + row * ch, left + (item + 1) * cw, top + (row + 1) * ch)))


@pytest.fixture(scope="module")
def result():
    return make_result(size=(96, 96))


@pytest.fixture(scope="module")
def plain(result):
    return render_grid(result, overlays=False)


@pytest.fixture(scope="module")
def decorated(result):
    return render_grid(result)


# -- layout -------------------------------------------------------------------------------------


def test_grid_is_margins_plus_cells_with_each_image_in_place(result, plain):
    left, top = layout(result, plain, (96, 96))
    # The WebUI's layout: a left margin of at least 3/4 of a cell for the row labels, a top band.
    assert left >= 96 * 3 // 4
    assert top > 0
    for cell in result.cells:
        if cell.ok:
            assert np.array_equal(cell_crop(plain, left, top, (96, 96), cell.item, cell.row), arr(cell.image))


def test_labels_are_drawn_above_each_column_and_beside_each_row(result, plain):
    left, top = layout(result, plain, (96, 96))
    a = arr(plain)
    for i in range(len(result.items)):
        band = a[:top, left + i * 96 : left + (i + 1) * 96]
        assert (band.sum(axis=2) < 300).sum() > 20, f"no label text over column {i}"
    for r in range(len(result.rows)):
        band = a[top + r * 96 : top + (r + 1) * 96, :left]
        assert (band.sum(axis=2) < 300).sum() > 20, f"no label text beside row {r}"


def test_label_text_is_the_label(result, plain):
    # The top band of column 0 holds exactly "model-a" drawn centred in the label font.
    left, top = layout(result, plain, (96, 96))
    band = plain.crop((left, 0, left + 96, top)).convert("L")
    font = get_font(min(max((96 + 96) // 25, 12), 72))
    ink = np.asarray(band) < 128
    cols = np.nonzero(ink.any(axis=0))[0]
    assert abs((cols[-1] - cols[0] + 1) - font.length("model-a")) <= 3
    assert abs((cols[0] + cols[-1]) / 2 - 48) <= 3


def test_overlay_on_every_ok_cell_and_none_when_off(result, plain, decorated):
    left, top = layout(result, plain, (96, 96))
    a, b = arr(plain), arr(decorated)
    for cell in result.cells:
        x0, y0 = left + cell.item * 96, top + cell.row * 96
        # The overlay box sits at the bottom of the cell: compare the bottom quarter, inside the border.
        bottom_plain = a[y0 + 72 : y0 + 92, x0 + 4 : x0 + 92]
        bottom_deco = b[y0 + 72 : y0 + 92, x0 + 4 : x0 + 92]
        changed = np.abs(bottom_plain - bottom_deco).sum(axis=2) > 30
        if cell.ok:
            assert changed.mean() > 0.5, f"no overlay on cell {cell.item},{cell.row}"
            # White text on the dark box.
            assert (bottom_deco.min(axis=2) > 235).sum() > 10
        else:
            assert not changed.any(), "a failed cell must look the same with and without overlays"


def test_overlays_off_draws_no_border_badge_or_legend(result, plain):
    a = arr(plain)
    for colour in (REF_COLOUR, BADGE_COLOUR):
        assert not np.all(a == colour, axis=2).any()


def test_reference_cell_has_its_own_border_and_badge(result, plain, decorated):
    left, top = layout(result, plain, (96, 96))
    b = arr(decorated)
    ref = b[top : top + 96, left : left + 96]
    assert tuple(ref[0, 48]) == REF_COLOUR and tuple(ref[48, 0]) == REF_COLOUR
    assert np.all(ref[:20, :40] == BADGE_COLOUR, axis=2).sum() > 40, "no REF badge"
    other = b[top : top + 96, left + 96 : left + 192]
    assert tuple(other[0, 48]) != REF_COLOUR
    # The other cells' border is the colour of their score on the colour map.
    scores = result.scores["ssim"]
    scale = score_scale([v for vec in scores.vs_reference for v in vec])
    expected = colormap((scores.vs_reference[0][1] - scale[0]) / (scale[1] - scale[0]))
    assert tuple(other[0, 48]) == expected


def test_border_colours_follow_the_scores(decorated, plain, result):
    left, top = layout(result, plain, (96, 96))
    b = arr(decorated)
    s = result.scores["ssim"].vs_reference[0]
    c1, c2 = b[top, left + 96 + 48], b[top, left + 192 + 48]
    assert s[1] > s[2]
    # viridis: the closer item gets the brighter colour.
    assert c1.sum() > c2.sum()


def test_failed_cell_is_grey_with_its_reason(result, decorated, plain):
    left, top = layout(result, plain, (96, 96))
    failed = next(c for c in result.cells if c.status == FAILED)
    crop = cell_crop(decorated, left, top, (96, 96), failed.item, failed.row)
    grey = np.all(crop == FAILED_FILL, axis=2).mean()
    assert 0.6 < grey < 0.99, "a failed cell is a grey cell with text on it"
    assert (crop[..., 0] - crop[..., 2] > 60).sum() > 10, "the FAILED title is drawn (light red)"


def test_skipped_cell_is_grey_with_its_reason():
    result = make_result(n_items=2, seeds=(1,), with_failure=False, with_skipped=True, size=(96, 96))
    assert any(c.status == SKIPPED for c in result.cells)
    image = render_grid(result, overlays=False)
    left, top = layout(result, image, (96, 96))
    crop = cell_crop(image, left, top, (96, 96), 1, 0)
    share = np.all(crop == SKIPPED_FILL, axis=2).mean()
    assert 0.6 < share < 0.99
    assert (crop.sum(axis=2) < 150).sum() > 10, "dark SKIPPED text"


def test_a_missing_cell_and_an_image_less_cell_render():
    result = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64))
    result.cells[1].image = None  # e.g. a result read back from JSON
    del result.cells[0]
    image = render_grid(result)
    assert image.width >= 2 * 64


# -- labels -------------------------------------------------------------------------------------


def test_long_labels_wrap_within_their_column():
    short = make_result(n_items=2, seeds=(1,), with_failure=False, size=(96, 96), labels=["a", "b"])
    long_words = "a checkpoint with a very long descriptive name that never ends"
    long_token = "models/Stable-diffusion/anything_v3_pruned_fp16_final_really_long.safetensors"
    wrapped = make_result(
        n_items=2, seeds=(1,), with_failure=False, size=(96, 96), labels=[long_words, long_token]
    )
    g_short, g_long = render_grid(short, overlays=False), render_grid(wrapped, overlays=False)
    assert g_long.width == g_short.width, "labels never widen a column"
    assert g_long.height > g_short.height, "the label band grows with wrapped lines"
    left, top = layout(wrapped, g_long, (96, 96))
    ink = arr(g_long)[:top].sum(axis=2) < 300
    for i in range(2):
        x0 = left + i * 96
        assert ink[:, x0 : x0 + 96].sum() > 50
        # Wrapped to the column less padding and centred: the column's edges stay blank, so no
        # line reaches into the neighbouring column.
        assert not ink[:, x0 : x0 + 2].any() and not ink[:, x0 + 94 : x0 + 96].any()


def test_wrap_text_breaks_long_words_after_separators():
    font = get_font(14)
    lines = wrap_text("models/Stable-diffusion/anything_v3.safetensors", font, 100)
    assert len(lines) > 1
    assert all(font.length(line) <= 100 for line in lines)
    assert lines[0].endswith(("/", "_", "-", "."))
    assert "".join(lines) == "models/Stable-diffusion/anything_v3.safetensors"


def test_wrap_text_limits_lines_with_an_ellipsis():
    font = get_font(14)
    lines = wrap_text("one two three four five six seven eight nine ten", font, 40, max_lines=2)
    assert len(lines) == 2 and lines[-1].endswith(rtext.ELLIPSIS)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80),
    width=st.integers(min_value=20, max_value=300),
)
def test_wrap_text_keeps_every_character_and_the_width(text, width):
    font = get_font(13)
    lines = wrap_text(text, font, width)
    for line in lines:
        assert font.length(line) <= width or len(line) == 1
    assert "".join("".join(lines).split()) == "".join(text.split())


# -- sizes --------------------------------------------------------------------------------------


def overlay_box_height(result, size) -> int:
    plain = arr(render_grid(result, overlays=False, cell_size=size))
    deco = arr(render_grid(result, overlays=True, cell_size=size))[: plain.shape[0]]
    left = plain.shape[1] - len(result.items) * size[0]
    top = plain.shape[0] - len(result.rows) * size[1]
    # Item 1 (not the reference), row 0: rows where the centre columns changed = box + border.
    x0, y0 = left + size[0], top
    centre = slice(x0 + size[0] // 4, x0 + 3 * size[0] // 4)
    changed = (
        np.abs(plain[y0 : y0 + size[1], centre] - deco[y0 : y0 + size[1], centre]).sum(axis=2) > 30
    ).any(axis=1)
    rows = np.nonzero(changed[size[1] // 3 :])[0]
    return int(size[1] // 3 + rows[-1] - rows[0] + 1) - size[1] // 3 if rows.size else 0


@pytest.mark.parametrize("size", [64, 1024])
def test_tiny_and_huge_cells_get_text_that_fits(size):
    result = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64))
    image = render_grid(result, cell_size=size)
    plain = render_grid(result, overlays=False, cell_size=size)
    left = plain.width - 2 * size
    top = plain.height - size
    deco = arr(image)
    cell = deco[top : top + size, left + size : left + 2 * size]
    # White overlay text inside the cell, and a REF badge that fits in the reference cell.
    assert (cell.min(axis=2) > 235).sum() > 5
    ref = deco[top : top + size, left : left + size]
    assert np.all(ref == BADGE_COLOUR, axis=2).any()
    assert image.width == plain.width


def test_overlay_text_scales_with_the_cell():
    result = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64))
    small, big = overlay_box_height(result, (64, 64)), overlay_box_height(result, (512, 512))
    assert small >= 10
    assert big > 3 * small


def test_cell_size_is_the_most_common_image_size_and_others_are_fitted():
    result = make_result(n_items=3, seeds=(1,), with_failure=False, size=(64, 64))
    result.cells[2].image = smooth_image(9, (100, 50))
    image = render_grid(result, overlays=False)
    left, top = layout(result, image, (64, 64))
    assert np.array_equal(cell_crop(image, left, top, (64, 64), 0, 0), arr(result.cells[0].image))
    fitted = cell_crop(image, left, top, (64, 64), 2, 0)
    # Letterboxed: 100x50 becomes 64x32 with the aspect ratio kept, dark bands above and below.
    assert np.all(fitted[:15] == (32, 32, 32))
    assert np.array_equal(
        fitted[16:48], arr(result.cells[2].image.resize((64, 32), Image.Resampling.LANCZOS))
    )
    forced = render_grid(result, overlays=False, cell_size=(80, 80))
    left, top = layout(result, forced, (80, 80))
    assert np.array_equal(
        cell_crop(forced, left, top, (80, 80), 1, 0), arr(rgrid.fit_image(result.cells[1].image, (80, 80)))
    )


def test_a_grid_too_big_for_memory_gets_smaller_cells(monkeypatch):
    result = make_result(n_items=3, seeds=(1, 2), with_failure=False, size=(128, 128))
    full = render_grid(result)
    monkeypatch.setattr(rgrid, "MAX_GRID_PIXELS", 60_000)
    image = render_grid(result)
    assert image.width * image.height < 90_000 < full.width * full.height
    with pytest.raises(InputError, match="megapixels"):
        render_grid(result, cell_size=(256, 256))


def test_quick_preview_gets_a_banner():
    spec = ProbeSpec(width=64, height=64, seeds=(1,), steps_override=20)
    preview = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64), spec=spec)
    probe = make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64))
    a, b = render_grid(preview, overlays=False), render_grid(probe, overlays=False)
    assert a.height > b.height
    assert np.all(arr(a)[:8] == BANNER_COLOUR, axis=2).mean() > 0.5
    assert not np.all(arr(b) == BANNER_COLOUR, axis=2).any()
    assert rgrid._banner_lines(preview) == ["QUICK PREVIEW \u2014 20 steps, not the probe (256 steps)"]


def test_no_reference_shows_the_mean_similarity_in_the_row():
    result = make_result(n_items=3, seeds=(1,), with_failure=False, reference_index=None, size=(64, 64))
    assert result.scores["ssim"].vs_reference is None
    plain, deco = arr(render_grid(result, overlays=False)), arr(render_grid(result))
    assert not np.all(deco == BADGE_COLOUR, axis=2).any(), "no reference, no REF badge"
    value, rank, is_mean = rgrid._cell_scores(result, result.scores["ssim"], 0, 0)
    matrix = result.scores["ssim"].per_row[0]
    assert is_mean and rank is None
    assert value == pytest.approx((matrix[0, 1] + matrix[0, 2]) / 2)
    assert np.abs(plain - deco[: plain.shape[0]]).sum() > 0


def test_one_item_renders_a_grid_and_no_heatmap():
    result = make_result(n_items=1, seeds=(1337,), with_failure=False, reference_index=None, size=(64, 64))
    out = render_all(result)
    assert [name for name, _ in out] == ["grid"]
    assert out[0][1].width >= 64


@pytest.mark.parametrize(
    "labels",
    [
        ['<b>"x"</b> & <script>', "C:\\models\\a b.ckpt", "../../etc/passwd"],
        ["\u65e5\u672c\u8a9e\u30e2\u30c7\u30eb", "emoji \U0001f600 model", "tab\tand\u00a0nbsp"],
    ],
)
def test_odd_characters_in_labels_do_not_crash(labels):
    result = make_result(n_items=3, seeds=(1,), with_failure=False, size=(64, 64), labels=labels)
    names = [name for name, image in render_all(result)]
    assert names == ["grid", *(["tree"] if result.lineage is not None else []), "heatmap-ssim"]


def test_unknown_metric_and_bad_cell_size_are_input_errors(result):
    with pytest.raises(InputError, match="clip"):
        render_grid(result, metrics=["clip"])
    with pytest.raises(InputError, match="cell size"):
        render_grid(result, cell_size=(4, 4))
    with pytest.raises(InputError, match="font"):
        render_grid(result, font_path="/no/such/font.ttf")


# -- heatmap ------------------------------------------------------------------------------------


def test_heatmap_grows_with_the_number_of_items():
    small = render_heatmap(make_result(n_items=2, seeds=(1,), with_failure=False, size=(64, 64)), "ssim")
    big = render_heatmap(make_result(n_items=6, seeds=(1,), with_failure=False, size=(64, 64)), "ssim")
    assert big.width > small.width and big.height > small.height


def test_heatmap_cells_are_coloured_by_value_with_readable_numbers():
    result = make_result(n_items=3, seeds=(1,), with_failure=False, size=(64, 64))
    image = arr(render_heatmap(result, "ssim"))
    matrix = result.scores["ssim"].mean
    scale = score_scale(matrix)
    for value in (matrix[0, 1], matrix[1, 2], 1.0):
        colour = colormap((value - scale[0]) / (scale[1] - scale[0]))
        assert np.all(image == colour, axis=2).sum() > 200, f"no cell in the colour of {value:.3f}"


def test_heatmap_hatches_cells_without_a_value():
    result = make_result(n_items=3, seeds=(1,), with_failure=True, size=(64, 64))
    assert np.isnan(result.scores["ssim"].mean).any()
    image = arr(render_heatmap(result, "ssim"))
    assert np.all(image == NAN_COLOUR, axis=2).sum() > 100
    assert np.all(image == (150, 150, 150), axis=2).sum() > 20, "hatching lines"


def _column_label_extent(image: np.ndarray, ref_colour) -> int:
    """Length in pixels of the turned label above the reference's column (found by its outline):
    the run of rows with dark ink above the matrix's outline, up to the first gap of 8 rows."""
    ys, xs = np.nonzero(np.all(image == ref_colour, axis=2))
    top, left, right = ys.min() - 1, xs.min(), xs.max()  # the row above is the matrix's outline
    dark = (image[:top, left + 1 : right].min(axis=2) < 128).any(axis=1)
    y, last_ink, gap = top - 1, None, 0
    while y >= 0 and gap < 8:
        if dark[y]:
            last_ink, gap = y, 0
        else:
            gap += 1
        y -= 1
    first_ink = max(i for i in range(top) if dark[i])
    return first_ink - last_ink + 1


@pytest.mark.parametrize("label", ["base", "a-much-longer-reference-name"])
def test_heatmap_reference_label_is_not_clipped(label):
    """The reference's label is bold; its room was measured with the regular font, so the turned
    column label lost its end ("base (REF")."""
    result = make_result(n_items=3, seeds=(1,), with_failure=False, size=(64, 64), labels=[label, "b", "c"])
    image = arr(render_heatmap(result, "ssim"))
    bold = get_font(14, bold=True)
    lines = wrap_text(f"{label} (REF)", bold, 280)
    # The ink of the longest line drawn on its own, in the same bold font.
    mask = Image.new("L", (400, 40), 0)
    bold.draw(mask, (0, 0), max(lines, key=bold.length), 255)
    left, _, right, _ = mask.getbbox()
    assert _column_label_extent(image, REF_COLOUR) >= right - left - 1


def test_heatmap_per_row_and_errors(result):
    # Row 1 alone: the failed cell of the last item leaves its row and column without values.
    one_row = arr(render_heatmap(result, "ssim", row=1))
    both = arr(render_heatmap(result, "ssim"))
    assert np.all(one_row == NAN_COLOUR, axis=2).sum() > np.all(both == NAN_COLOUR, axis=2).sum()
    with pytest.raises(InputError, match="row 5"):
        render_heatmap(result, "ssim", row=5)
    with pytest.raises(InputError, match="lpips"):
        render_heatmap(result, "lpips")


def test_render_all_order(result):
    tree = ["tree"] if result.lineage is not None else []
    assert [name for name, _ in render_all(result)] == ["grid", *tree, "heatmap-ssim"]


# -- colours, legend, fonts ---------------------------------------------------------------------


def test_colormap_ends_nan_and_clipping():
    assert colormap(0.0) == (68, 1, 84)
    assert colormap(1.0) == (253, 231, 37)
    assert colormap(-3) == colormap(0.0) and colormap(7) == colormap(1.0)
    assert colormap(float("nan")) == NAN_COLOUR
    assert colormap(0.0, "cividis") == (0, 34, 78)
    with pytest.raises(InputError, match="jet"):
        colormap(0.5, "jet")


def test_colormap_brightness_rises_monotonically():
    def luminance(c):
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    for name in ("viridis", "cividis"):
        values = [luminance(colormap(x / 50, name)) for x in range(51)]
        assert all(b >= a - 0.5 for a, b in itertools.pairwise(values))


def test_score_scale_and_ticks():
    assert score_scale([0.43, 0.9, float("nan")]) == (0.4, 1.0)
    assert score_scale([]) == (0.0, 1.0)
    assert score_scale([1.0, 1.0]) == (0.9, 1.0)
    assert legend_ticks((0.4, 1.0), 7) == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert legend_ticks((0.0, 1.0), 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.mark.parametrize("vertical", [True, False])
def test_legend_has_the_colour_ramp(vertical):
    image = arr(render_legend((0.5, 1.0), length=150, vertical=vertical))
    for x in (0.0, 0.5, 1.0):
        # Inside the bar's outline: the ends of the ramp, within a step of the colour map.
        assert (np.abs(image - colormap(x)).max(axis=2) <= 6).any()


def test_without_a_truetype_font_the_default_font_is_used(monkeypatch):
    monkeypatch.setattr(rtext, "find_font", lambda bold=False: None)
    rtext.get_font.cache_clear()
    try:
        font = rtext.get_font(30)
        assert font.line_height >= 20, "the fallback font is scaled to the asked size"
        result = make_result(n_items=2, seeds=(1,), with_failure=True, size=(64, 64))
        result.spec = ProbeSpec(width=64, height=64, seeds=(1,), steps_override=10)
        images = dict(render_all(result))
        # The labels above the cells and the heatmap's title are drawn, in the scaled bitmap font.
        top = images["grid"].info["cfgsim_grid_layout"]["boxes"][0][1]
        assert (arr(images["grid"])[:top].min(axis=2) < 60).sum() > 50
        assert (arr(images["heatmap-ssim"])[:30].min(axis=2) < 60).sum() > 50
    finally:
        rtext.get_font.cache_clear()


def test_font_search_is_cached():
    assert rtext.find_font() == rtext.find_font()
    assert rtext.find_font.cache_info().hits >= 1


def test_contrast_text_colour():
    assert rcolour.contrast_text((253, 231, 37)) == (0, 0, 0)
    assert rcolour.contrast_text((68, 1, 84)) == (255, 255, 255)
    assert math.isnan(rcolour.normalise(float("nan"), (0, 1)))
