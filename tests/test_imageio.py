"""Tests for cfgsim.imageio: every kind of input becomes 8-bit RGB, every failure a clear InputError.

Bad files are made in tmp_path by the tests themselves: a real PNG cut short, a text file named
.png, a PNG whose header claims a huge size (IHDR patched, CRC fixed).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, PngImagePlugin

from cfgsim import imageio
from cfgsim.errors import CfgsimError, InputError
from cfgsim.imageio import MAX_PIXELS, common_size, load_image, to_array, to_rgb


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """``png`` with the IHDR chunk's width and height replaced and its CRC recomputed."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


# --- the normalisation rules -------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    arr = _rgb()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    out = to_array(img)
    assert out.dtype == np.uint8 and out.shape == arr.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_accepts_str_path_and_file_object(tmp_path: Path) -> None:
    arr = _rgb()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(to_array(load_image(str(path))), arr)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(to_array(load_image(fh)), arr)
        assert not fh.closed  # the caller's file stays the caller's
    np.testing.assert_array_equal(to_array(load_image(io.BytesIO(path.read_bytes()))), arr)


def test_png_text_chunks_are_kept(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337")
    path = tmp_path / "probe.png"
    Image.fromarray(_rgb()).save(path, pnginfo=info)
    assert load_image(path).info["parameters"].startswith("Steps: 256")


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white
    out = to_array(Image.fromarray(rgba, mode="RGBA"))
    assert out.shape == (2, 3, 3)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


@pytest.mark.parametrize(
    ("mode", "transparent"), [("LA", (0, 0)), ("PA", (0, 0)), ("RGBa", (0, 0, 0, 0)), ("La", (0, 0))]
)
def test_other_alpha_modes_are_composited_on_white(mode: str, transparent: tuple) -> None:
    img = Image.new(mode, (4, 4), transparent)
    np.testing.assert_array_equal(to_array(img), np.full((4, 4, 3), 255, dtype=np.uint8))


def test_palette_with_transparency_key(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = to_array(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255)  # index 0 is transparent
    assert tuple(out[0, 1]) == (200, 10, 10)


def test_palette_without_transparency_is_expanded() -> None:
    arr = _rgb(8, 8)
    pal = Image.fromarray(arr).quantize(colors=16)
    np.testing.assert_array_equal(to_array(pal), np.asarray(pal.convert("RGB")))


def test_rgb_with_transparency_key_is_composited(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[1, 1] = (9, 9, 9)
    path = tmp_path / "trns.png"
    Image.fromarray(arr).save(path, transparency=(0, 0, 0))
    out = to_array(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (9, 9, 9)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_becomes_three_equal_channels(mode: str) -> None:
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    img = Image.fromarray(grey).convert(mode)
    out = to_array(img)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if mode == "L":
        np.testing.assert_array_equal(out[..., 0], grey)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """65535 → 255 and v → round(v·255/65535); Pillow's own convert("L") would clip at 255."""
    values = np.array([[0, 128, 129, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    img = load_image(path)  # opens as I;16 in Pillow >= 10 and as I in Pillow 9.5
    np.testing.assert_array_equal(to_array(img)[0, :, 0], [0, 0, 1, 1, 128, 255])


@pytest.mark.parametrize("mode", ["I", "I;16", "I;16B"])
def test_sixteen_bit_modes_in_memory(mode: str) -> None:
    values = np.array([[0, 257, 65535]], dtype=np.int32)
    img = Image.fromarray(values, mode="I")
    if mode != "I":
        img = img.convert(mode)
    assert img.mode == mode
    np.testing.assert_array_equal(to_array(img)[0, :, 0], [0, 1, 255])


def test_mode_i_out_of_range_is_clipped() -> None:
    img = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(to_array(img)[0, :, 0], [0, 255])


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    path = tmp_path / "cmyk.jpg"
    img.save(path, quality=95)
    out = to_array(load_image(path))
    assert out.shape == (16, 16, 3)
    assert out.min() >= 250


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "F", "RGBX"])
def test_other_modes_use_pillows_conversion(mode: str) -> None:
    img = Image.new(mode, (3, 2))
    out = to_array(img)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = _rgb(10, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (10, 20)
    # The orientation tag is gone: saving the result must not rotate it a second time.
    assert (
        Image.open(io.BytesIO(_png_bytes(img, exif=img.info.get("exif", b"")))).getexif().get(0x0112, 1) == 1
    )


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = to_array(load_image(path))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_to_rgb_returns_a_copy() -> None:
    img = Image.fromarray(_rgb())
    out = to_rgb(img)
    assert out is not img
    out.paste((1, 2, 3), (0, 0, 32, 24))
    np.testing.assert_array_equal(np.asarray(img), _rgb())


# --- to_array on arrays ------------------------------------------------------------------------


def test_to_array_passes_uint8_rgb_arrays() -> None:
    arr = _rgb()
    np.testing.assert_array_equal(to_array(arr), arr)
    fortran = np.asfortranarray(arr)
    assert to_array(fortran).flags.c_contiguous


def test_to_array_expands_greyscale_arrays() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_array(grey)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[..., 2], grey)


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "shape"),
        (np.zeros((4,), dtype=np.uint8), "shape"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "zero size"),
    ],
)
def test_to_array_rejects_bad_arrays(arr: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        to_array(arr)


def test_to_array_rejects_other_types() -> None:
    with pytest.raises(InputError, match="expected a PIL image"):
        to_array([[1, 2, 3]])  # type: ignore[arg-type]


def test_zero_size_image_in_memory() -> None:
    with pytest.raises(InputError, match="zero size"):
        to_rgb(Image.new("RGB", (0, 5)))


# --- load errors: one InputError naming the file and the reason -----------------------------


def test_error_classes() -> None:
    assert issubclass(InputError, CfgsimError) and issubclass(InputError, ValueError)
    assert InputError.__doc__ and CfgsimError.__doc__


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match="does not exist") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(InputError, match="is not an image Pillow can read") as info:
        load_image(path)
    assert "notes.png" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="is not an image Pillow can read"):
        load_image(path)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.2])
def test_truncated_png(tmp_path: Path, keep: float) -> None:
    data = _png_bytes(Image.fromarray(_rgb(64, 64)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        load_image(path)
    assert "cut.png" in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(path)


def test_decompression_bomb_over_our_limit(tmp_path: Path) -> None:
    """A header claiming 9000×9000 (81 Mpx): above MAX_PIXELS (64 Mi), below Pillow's own error."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_with_ihdr_size(_png_bytes(Image.new("RGB", (4, 4))), 9000, 9000))
    with pytest.raises(InputError, match="too large") as info:
        load_image(path)
    message = str(info.value)
    assert "bomb.png" in message and f"{MAX_PIXELS:,}" in message and "9000x9000" in message


def test_decompression_bomb_caught_by_pillow(tmp_path: Path) -> None:
    """20000×20000 trips Pillow's DecompressionBombError inside Image.open; reported the same way."""
    path = tmp_path / "huge.png"
    path.write_bytes(_with_ihdr_size(_png_bytes(Image.new("RGB", (4, 4))), 20000, 20000))
    with pytest.raises(InputError, match="too large") as info:
        load_image(path, max_pixels=10**12)
    assert "huge.png" in str(info.value)


def test_max_pixels_keyword(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(_rgb(10, 10)).save(path)
    assert load_image(path, max_pixels=100).size == (10, 10)
    with pytest.raises(InputError, match="exceeds the limit of 99 pixels"):
        load_image(path, max_pixels=99)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(path, max_pixels=0)


def test_module_limit_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(_rgb(10, 10)).save(path)
    monkeypatch.setattr(imageio, "MAX_PIXELS", 50)
    with pytest.raises(InputError, match="limit of 50 pixels"):
        load_image(path)


def test_zero_width_header(tmp_path: Path) -> None:
    path = tmp_path / "zero.png"
    path.write_bytes(_with_ihdr_size(_png_bytes(Image.new("RGB", (4, 4))), 0, 4))
    with pytest.raises(InputError, match=r"zero\.png"):
        load_image(path)


# --- common_size -------------------------------------------------------------------------------


def test_common_size_same_sizes_unchanged() -> None:
    images = [_rgb(seed=k) for k in range(3)]
    out, record = common_size(images)
    assert record == {"policy": "none", "size": [32, 24], "resized": []}
    for a, b in zip(images, out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_common_size_resizes_to_smallest_width_and_height() -> None:
    images = [_rgb(40, 60, 0), _rgb(30, 80, 1), _rgb(30, 60, 2)]
    out, record = common_size(images)
    assert record == {"policy": "resize-to-smallest", "size": [60, 30], "resized": [0, 1]}
    assert [a.shape for a in out] == [(30, 60, 3)] * 3
    np.testing.assert_array_equal(out[2], images[2])  # already the target size: untouched
    expected = np.asarray(Image.fromarray(images[0]).resize((60, 30), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(out[0], expected)
    assert images[0].shape == (40, 60, 3)  # inputs are not modified


def test_common_size_accepts_pil_images() -> None:
    out, record = common_size([Image.fromarray(_rgb(20, 20)), Image.new("L", (10, 12))])
    assert record["size"] == [10, 12] and record["resized"] == [0]
    assert all(a.dtype == np.uint8 and a.shape == (12, 10, 3) for a in out)


def test_common_size_error_policy() -> None:
    with pytest.raises(InputError, match=r"#0: 32x24, #1: 16x8"):
        common_size([_rgb(), _rgb(8, 16)], policy="error")
    _, record = common_size([_rgb(), _rgb(seed=1)], policy="error")
    assert record["policy"] == "none"


def test_common_size_bad_input() -> None:
    with pytest.raises(InputError, match="unknown"):
        common_size([_rgb()], policy="largest")
    with pytest.raises(InputError, match="no images"):
        common_size([])


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3))))
def test_png_round_trip_property(arr: np.ndarray) -> None:
    data = _png_bytes(Image.fromarray(arr))
    np.testing.assert_array_equal(to_array(load_image(io.BytesIO(data))), arr)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8), st.just(3))))
def test_opaque_alpha_changes_nothing(arr: np.ndarray) -> None:
    rgba = np.concatenate([arr, np.full((*arr.shape[:2], 1), 255, dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(to_array(Image.fromarray(rgba, mode="RGBA")), arr)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_sixteen_bit_scaling_is_rounded_and_monotonic(values: np.ndarray) -> None:
    out = to_array(Image.fromarray(values.astype(np.int32), mode="I"))[..., 0].astype(np.int64)
    # v · 255 / 65535 = v / 257, never exactly halfway (257 is odd): plain rounding, no ties.
    np.testing.assert_array_equal(out, np.floor(values / 257.0 + 0.5))
    order = np.argsort(values.reshape(-1), kind="stable")
    assert np.all(np.diff(out.reshape(-1)[order]) >= 0)
