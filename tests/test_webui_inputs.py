"""Issue 7: reference images sent over the API go through the same pixel cap as image files."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from test_script import run

from cfgsim import controls, imageio
from cfgsim.errors import InputError


def encoded_png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_api_reference_image_over_the_pixel_cap_is_refused_before_decoding(webui, p, monkeypatch):
    """A few KB of PNG can declare gigapixels: the header's size is checked against
    cfgsim.imageio.MAX_PIXELS (64 MP; lowered here to keep the test small) before any pixel is
    decoded, exactly as for files."""
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100 * 100)
    web = webui()
    with pytest.raises(InputError, match=r"Reference image: too large: 128x128 = 16,384 pixels"):
        run(web, p, ["base"], reference_mode=2, reference_image=encoded_png((128, 128)))
    assert web.received == []
    assert controls.decode_image(encoded_png((100, 100))).size == (100, 100)


def test_uploaded_pil_image_over_the_pixel_cap_is_refused(monkeypatch):
    monkeypatch.setattr(imageio, "MAX_PIXELS", 64)
    with pytest.raises(InputError, match="too large"):
        controls.decode_image(Image.new("RGB", (9, 9)))


def test_pixel_cap_default_is_the_file_limit():
    huge = Image.new("1", (1, 1))
    huge._size = (9000, 8000)  # what a decompression bomb's header declares; nothing is decoded
    with pytest.raises(InputError, match="72,000,000 pixels exceeds the limit of 67,108,864"):
        controls.check_pixels(huge)
