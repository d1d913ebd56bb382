"""Image loading and normalisation: every image the metrics see is 8-bit RGB, one size.

Probe images are 8-bit RGB PNGs, but users also compare cells cut from published grids, JPEG copies,
palette GIFs, 16-bit scans or transparent PNGs. All of them are brought to one form here, with one
rule per kind of input, so that the metrics never have to care:

* RGB is kept as it is.
* Transparency (RGBA, LA, PA, premultiplied modes, palette or greyscale/RGB images with a
  ``transparency`` key) is composited on **white**: the WebUI shows and saves transparent images
  over a light background, and a fixed choice keeps scores reproducible. Note that a transparent
  image and its black-background copy therefore do not compare as identical.
* Greyscale (L, 1) is repeated into three channels; palette (P) is expanded.
* 16-bit greyscale (I;16, I;16B, ... and I, the mode Pillow < 10 opens 16-bit greyscale PNGs in) is
  scaled by 255/65535 with rounding, so 65535 becomes 255 rather than being clipped (Pillow's own
  ``convert("L")`` clips everything above 255 to white). I values outside 0..65535 are clipped.
* CMYK, YCbCr, LAB, HSV and float images use Pillow's own conversion to RGB (no ICC colour
  management: embedded profiles are ignored).
* The EXIF orientation tag is applied; animated images give their first frame.

Every failure is a :class:`cfgsim.errors.InputError` whose message names the file and the reason.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps

from cfgsim.errors import InputError

__all__ = ["MAX_PIXELS", "common_size", "load_image", "to_array", "to_rgb"]

#: Largest image (width × height) :func:`load_image` decodes. A 64-megapixel RGB image already needs
#: 192 MiB decoded; anything larger is far beyond a probe image and is refused before decoding, as a
#: guard against decompression bombs (a few KB of PNG that expand to gigabytes). Override it per call
#: with ``load_image(..., max_pixels=...)`` or for the process by assigning this attribute.
MAX_PIXELS = 64 * 1024 * 1024

ImageSource = Union[str, "os.PathLike[str]", IO[bytes]]

# Pillow raises any of these for a damaged file once decoding starts (the exact one depends on the
# format, the Pillow version and where the damage is).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, IndexError, TypeError)

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<image stream>"


def open_image(source: ImageSource, limit: int | None = None) -> Image.Image:
    """``Image.open`` (the header only: no pixel is decoded) with every way it fails turned into an
    :class:`~cfgsim.errors.InputError` naming the file and the reason."""
    name = _source_name(source)
    limit = MAX_PIXELS if limit is None else limit
    try:
        return Image.open(source)
    except FileNotFoundError:
        raise InputError(f"{name!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{name!r} is a directory, not an image file") from None
    except PermissionError:
        raise InputError(f"{name!r} cannot be read: permission denied") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (twice Image.MAX_IMAGE_PIXELS) fires inside open() for huge headers,
        # before load_image's own check can run; report it in the same terms.
        raise InputError(
            f"{name!r} is too large to load safely ({exc}); cfgsim's limit is {limit:,} pixels"
        ) from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name!r} is not an image Pillow can read") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name!r} is not an image Pillow can read ({exc})") from None


def image_size(source: ImageSource) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    with open_image(source) as img:
        return img.size


def load_image(source: ImageSource, *, max_pixels: int | None = None) -> Image.Image:
    """Load an image file fully and return it as 8-bit RGB (see the module docstring for the rules).

    ``source`` is a path or a binary file object. The pixels are decoded here, not lazily, so a
    truncated or corrupt file fails now with an :class:`~cfgsim.errors.InputError` instead of later
    inside a metric. ``max_pixels`` (default: the module's :data:`MAX_PIXELS`, read at call time)
    bounds width × height; larger images are refused before any pixel is decoded.

    The returned image keeps the file's ``info`` (e.g. the WebUI's ``parameters`` text chunk).
    """
    name = _source_name(source)
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if limit <= 0:
        raise InputError(f"max_pixels must be a positive number of pixels, not {limit!r}")
    img = open_image(source, limit)
    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InputError(f"{name!r} has zero size ({width}x{height})")
        if width * height > limit:
            raise InputError(
                f"{name!r} is too large: {width}x{height} = {width * height:,} pixels exceeds the limit "
                f"of {limit:,} pixels (max_pixels, a guard against decompression bombs)"
            )
        try:
            img.load()
            info = dict(img.info)
            # Only rotated/mirrored images pay for the transposed copy. exif_transpose leaves an
            # EXIF block without the orientation tag; the file's own block must not replace it, or
            # saving the result would rotate it twice.
            if img.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
                rgb = to_rgb(ImageOps.exif_transpose(img))
                info.pop("exif", None)
            else:
                rgb = to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise InputError(f"{name!r} is too large to load safely ({exc})") from None
        except _DECODE_ERRORS as exc:
            # Pillow pads truncated files silently when ImageFile.LOAD_TRUNCATED_IMAGES is set
            # (a process-wide switch some tools flip); then this cannot tell, and the padding shows.
            raise InputError(f"{name!r} is truncated or corrupt ({exc})") from None
    info.pop("transparency", None)
    rgb.info.update(info)
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as a new 8-bit RGB image, by the rules in the module docstring."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InputError(f"image has zero size ({width}x{height})")
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img.copy()
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # Pillow has no La -> RGBA conversion; La -> LA (un-premultiply) -> RGBA does it.
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        # 65535 / 255 == 257 exactly, so (v + 128) // 257 is v * 255 / 65535 rounded to nearest.
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        grey = ((wide + 128) // 257).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"images in mode {mode!r} cannot be converted to RGB ({exc})") from None


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """A C-contiguous ``uint8`` array of shape (H, W, 3): the form every metric takes.

    PIL images of any mode are normalised with :func:`to_rgb` first. Arrays are accepted as they
    come if they already are uint8 (H, W, 3); uint8 (H, W) greyscale is repeated into 3 channels.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise InputError(f"image arrays must be uint8, not {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"image arrays must have shape (H, W, 3), not {img.shape}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            raise InputError(f"image has zero size ({img.shape[1]}x{img.shape[0]})")
        return np.ascontiguousarray(img)
    if not isinstance(img, Image.Image):
        raise InputError(f"expected a PIL image or a uint8 array, not {type(img).__name__}")
    arr = np.asarray(img if img.mode == "RGB" and "transparency" not in img.info else to_rgb(img))
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def common_size(images: Sequence[np.ndarray], *, policy: str = "smallest") -> tuple[list[np.ndarray], dict]:
    """Bring uint8 (H, W, 3) images to one size, for metrics that compare pixel by pixel.

    Returns the images and a record of what was done, meant for the output metadata:

    * sizes agree: the images unchanged and ``{"policy": "none", "size": [w, h], "resized": []}``;
    * ``policy="smallest"`` (default): every image whose size differs is resized with Lanczos to the
      smallest width and the smallest height among them (independently, so images of different
      aspect ratios are stretched), recorded as
      ``{"policy": "resize-to-smallest", "size": [w, h], "resized": [indices]}``;
    * ``policy="error"``: differing sizes raise :class:`~cfgsim.errors.InputError` listing them.
    """
    if policy not in ("smallest", "error"):
        raise InputError(f"size policy {policy!r} is unknown (known: smallest, error)")
    arrays = [to_array(img) for img in images]
    if not arrays:
        raise InputError("common_size: no images given")
    sizes = [(a.shape[1], a.shape[0]) for a in arrays]
    if len(set(sizes)) == 1:
        return arrays, {"policy": "none", "size": list(sizes[0]), "resized": []}
    if policy == "error":
        listed = ", ".join(f"#{i}: {w}x{h}" for i, (w, h) in enumerate(sizes))
        raise InputError(f"images differ in size ({listed})")
    target = (min(w for w, _ in sizes), min(h for _, h in sizes))
    out: list[np.ndarray] = []
    resized: list[int] = []
    for index, (arr, size) in enumerate(zip(arrays, sizes, strict=True)):
        if size == target:
            out.append(arr)
            continue
        small = Image.fromarray(arr).resize(target, Image.Resampling.LANCZOS)
        out.append(np.asarray(small, dtype=np.uint8).copy())
        resized.append(index)
    return out, {"policy": "resize-to-smallest", "size": list(target), "resized": resized}
