"""Saved grids and their metadata (cfgsim.metadata): WebUI infotext, cfgsim JSON, atomic writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from helpers import make_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from cfgsim import metadata as meta
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint
from cfgsim.infotext import Infotext
from cfgsim.metadata import (
    MetadataError,
    atomic_save_image,
    atomic_write_bytes,
    grid_infotext,
    parse_json,
    read_metadata,
    read_result,
    save_grid,
    sidecar_path,
    to_json,
)
from cfgsim.result import SCHEMA, SCHEMA_VERSION, ProbeResult, Reference
from cfgsim.spec import ProbeSpec


@pytest.fixture(scope="module")
def result():
    return make_result(n_items=3, seeds=(1337, 42), size=(64, 64))


@pytest.fixture(scope="module")
def grid_image():
    return Image.new("RGB", (120, 80), (30, 120, 200))


def approx_equal(a, b, tol=2e-6, path="") -> None:
    """Equal JSON-like documents, floats within ``tol`` (matrix means are recomputed from the
    6-decimal values stored in the JSON)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, abs_tol=tol), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for key in a:
            approx_equal(a[key], b[key], tol, f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            approx_equal(x, y, tol, f"{path}[{k}]")
    else:
        assert a == b, path


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- infotext -----------------------------------------------------------------------------------


def test_grid_infotext_is_the_probe_plus_what_was_compared(result):
    text = grid_infotext(result)
    assert text.startswith("Negative prompt: (bad:0), (comic:0)"), (
        "empty prompt: no prompt line, like the WebUI"
    )
    info = Infotext.parse(text)
    for key, value in {
        "Steps": "256",
        "Sampler": "Euler",
        "CFG scale": "1",
        "Seed": "1337",
        "Size": "64x64",
        "Clip skip": "2",
        "Probe seeds": "1337, 42",
        "Reference": "model-a",
    }.items():
        assert info.params[key] == value
    assert info.params["Compared"] == "model-a, model-b, model-c"
    # The sha256 short hash the WebUI's own cells write, not the colliding 8-hex legacy hash.
    assert info.params["Compared hashes"] == ", ".join(item.sha256[:10] for item in result.items)
    assert 'Compared: "model-a, model-b, model-c"' in text
    # PNG Info's one-line lineage summary; the spec read back leaves it out.
    assert info.params["Lineage"].startswith("SSIM, 1 seed: ")  # seed 42 is incomplete (a failed cell)
    assert all(f"{label}→" in info.params["Lineage"] for label in result.labels)
    assert "Lineage" not in dict(ProbeSpec.from_infotext(info).extra)


def test_grid_infotext_reads_back_to_the_spec(result):
    assert ProbeSpec.from_infotext(grid_infotext(result)) == result.spec


def test_quick_preview_infotext_keeps_both_step_counts():
    spec = ProbeSpec(width=64, height=64, seeds=(1,), steps_override=20)
    result = make_result(n_items=2, seeds=(1,), size=(64, 64), spec=spec)
    text = grid_infotext(result)
    assert "Steps: 20," in text and "Probe preview steps: 20 of 256" in text
    assert ProbeSpec.from_infotext(text) == spec


labels = (
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
    .map(str.strip)
    .filter(bool)
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(names=st.lists(labels, min_size=2, max_size=4, unique=True), ref=st.integers(0, 3))
def test_infotext_and_json_round_trip_any_labels(result, names, ref):
    ref = ref % len(names)
    copy = ProbeResult.from_dict(json.loads(to_json(result)))
    copy.items = [Checkpoint(name=f"{n}.ckpt", label=n, model_hash="0123abcd") for n in names]
    copy.cells = [c for c in copy.cells if c.item < len(names)]
    copy.scores = {}
    copy.reference = Reference("item", ref, names[ref])
    text = grid_infotext(copy)
    assert ProbeSpec.from_infotext(text) == copy.spec
    assert Infotext.parse(text).params["Reference"] == names[ref]
    back = ProbeResult.from_dict(parse_json(to_json(copy)))
    assert back.labels == names
    assert back.reference.label == names[ref]


# -- JSON ---------------------------------------------------------------------------------------


def test_to_json_is_compact_deterministic_and_strict(result):
    text = to_json(result)
    assert text == to_json(result)
    assert "NaN" not in text and "\n" not in text and ", " not in text.split('"infotext"')[0][:50]
    data = json.loads(text)
    assert list(data)[:2] == ["schema", "schema_version"]
    assert data["schema"] == SCHEMA
    approx_equal(data, json.loads(json.dumps(result.to_dict())))


def test_to_json_keeps_unicode_and_converts_numpy():
    import numpy as np

    result = make_result(n_items=2, seeds=(1,), size=(64, 64), labels=["\u65e5\u672c", "b"])
    result.size_policy = {"size": (np.int64(64), np.int64(64)), "scale": np.float32(0.5)}
    text = to_json(result)
    assert "\u65e5\u672c" in text
    assert json.loads(text)["size_policy"] == {"size": [64, 64], "scale": 0.5}


def test_to_json_refuses_nan_outside_the_matrices():
    result = make_result(n_items=2, seeds=(1,), size=(64, 64))
    result.size_policy = {"scale": float("nan")}
    with pytest.raises(MetadataError, match="cannot be written"):
        to_json(result)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "grid.png: the cfgsim metadata is not valid JSON"),
        ("[1, 2]", "grid.png: is not cfgsim metadata"),
        ('{"a": 1}', "grid.png: is not cfgsim metadata \\(no 'schema' field\\)"),
        ('{"schema": "comfyui.workflow"}', "is not cfgsim metadata \\(schema 'comfyui.workflow'"),
        (
            json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION + 98}),
            f"was written by a newer cfgsim \\(schema {SCHEMA_VERSION + 98}, "
            f"this reads up to {SCHEMA_VERSION}\\): upgrade cfgsim",
        ),
        (json.dumps({"schema": SCHEMA, "schema_version": "1"}), "invalid 'schema_version'"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_parse_json_errors_name_the_source_and_the_problem(text, message):
    with pytest.raises(MetadataError, match=message) as info:
        parse_json(text, source="grid.png")
    assert isinstance(info.value, InputError)


@pytest.mark.parametrize("field", ["spec", "items", "rows", "cells"])
def test_parse_json_names_a_missing_field(result, field):
    data = json.loads(to_json(result))
    del data[field]
    with pytest.raises(MetadataError, match=f"has no '{field}' field"):
        parse_json(json.dumps(data))


def test_parse_json_checks_cells_and_items(result):
    data = json.loads(to_json(result))
    data["cells"][2]["item"] = 17
    with pytest.raises(MetadataError, match=r"cells\[2\]\.item"):
        parse_json(json.dumps(data))
    data = json.loads(to_json(result))
    del data["items"][1]["name"]
    with pytest.raises(MetadataError, match=r"items\[1\]"):
        parse_json(json.dumps(data))


# -- saving and reading grids -------------------------------------------------------------------


def test_png_round_trip(tmp_path, result, grid_image):
    path = tmp_path / "grid.png"
    written = save_grid(grid_image, path, result, extra_chunks={"Software": "cfgsim test"})
    assert written == [path]
    infotext, payload = read_metadata(path)
    assert infotext == grid_infotext(result)
    assert ProbeSpec.from_infotext(infotext) == result.spec
    approx_equal(payload, result.to_dict())
    approx_equal(read_result(path).to_dict(), result.to_dict())
    # What the WebUI's PNG Info tab reads: Pillow's text chunks.
    with Image.open(path) as image:
        assert image.info["parameters"] == infotext
        assert image.info["Software"] == "cfgsim test"
        assert image.size == grid_image.size
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_jpeg_and_webp_keep_infotext_in_exif_and_json_beside(tmp_path, ext, grid_image):
    result = make_result(n_items=2, seeds=(1,), size=(64, 64), labels=["\u65e5\u672c model", "b, c"])
    path = tmp_path / f"grid{ext}"
    written = save_grid(grid_image, path, result)
    assert written == [path, tmp_path / "grid.cfgsim.json"]
    with Image.open(path) as image:
        raw = image.getexif().get_ifd(0x8769)[0x9286]
    # Exactly the WebUI's (piexif's "unicode") UserComment encoding.
    assert raw == b"UNICODE\0" + grid_infotext(result).encode("utf-16-be")
    infotext, payload = read_metadata(path)
    assert infotext == grid_infotext(result)
    assert Infotext.parse(infotext).params["Reference"] == "\u65e5\u672c model"
    approx_equal(payload, result.to_dict())
    assert read_result(path).labels == ["\u65e5\u672c model", "b, c"]


def test_user_comment_codes():
    assert meta.read_user_comment(b"ASCII\0\0\0Steps: 20") == "Steps: 20"
    assert meta.read_user_comment(b"UNICODE\0" + "\u00fc".encode("utf-16-be")) == "\u00fc"
    assert meta.read_user_comment(b"\0" * 8 + b"abc\0") == "abc"
    assert meta.read_user_comment("already text") == "already text"


def test_exif_block_layout():
    block = meta.exif_with_infotext("Steps: 1")
    assert block.startswith(b"Exif\0\0MM\0*")
    assert block.endswith(b"UNICODE\0" + "Steps: 1".encode("utf-16-be"))


def test_reading_images_without_metadata(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    assert read_metadata(tmp_path / "plain.png") == (None, None)
    assert read_metadata(tmp_path / "plain.jpg") == (None, None)
    with pytest.raises(MetadataError, match="has no cfgsim metadata"):
        read_result(tmp_path / "plain.png")


def test_webui_image_infotext_is_read(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337")
    Image.new("RGB", (8, 8)).save(tmp_path / "cell.png", pnginfo=info)
    assert read_metadata(tmp_path / "cell.png") == (
        "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337",
        None,
    )


def test_text_chunks_after_the_pixels_and_compressed_are_read(tmp_path, result):
    # Writers may put text after IDAT or compress it as zTXt/iTXt: all are read without decoding pixels.
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "Steps: 1, Sampler: Euler, Seed: 1", zip=True)
    info.add_itxt("cfgsim", to_json(result), zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "z.png", pnginfo=info)
    infotext, payload = read_metadata(tmp_path / "z.png")
    assert infotext == "Steps: 1, Sampler: Euler, Seed: 1"
    assert payload["schema"] == SCHEMA


def test_damaged_metadata_is_an_error_naming_the_file(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("cfgsim", '{"schema": "cfgsim.probe-result", "schema_version": 1')
    Image.new("RGB", (8, 8)).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(MetadataError, match=r"bad\.png: the cfgsim metadata is not valid JSON"):
        read_metadata(tmp_path / "bad.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "bad.jpg")
    (tmp_path / "bad.cfgsim.json").write_text('{"schema": "cfgsim.probe-result", "schema_version": 7}')
    with pytest.raises(MetadataError, match=r"bad\.cfgsim\.json: was written by a newer cfgsim"):
        read_metadata(tmp_path / "bad.jpg")


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    (tmp_path / "notes.jpg").write_text("hello")
    for name in ("notes.jpg", "notes.png"):
        with pytest.raises(InputError, match=f"{name}: cannot read the image"):
            read_metadata(tmp_path / name)
    with pytest.raises(InputError, match="no such file"):
        read_metadata(tmp_path / "missing.png")


def test_a_big_document_stays_readable_by_pillow(tmp_path, grid_image):
    result = make_result(n_items=2, seeds=(1,), size=(64, 64))
    result.environment = {"padding": "x" * 1_200_000}  # beyond Pillow's 1 MiB limit for compressed text
    path = tmp_path / "big.png"
    save_grid(grid_image, path, result)
    with Image.open(path) as image:  # what the WebUI does with a grid
        image.load()
        assert "parameters" in image.info
    assert read_metadata(path)[1]["environment"]["padding"] == "x" * 1_200_000


def test_sidecar_path():
    assert sidecar_path("out/grid.jpg") == Path("out/grid.cfgsim.json")
    assert sidecar_path("a.b.webp") == Path("a.b.cfgsim.json")


# -- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_bytes_creates_overwrites_and_keeps_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "not mkstemp's private 0600"
    assert leftovers(path.parent) == []


def test_atomic_save_image_infers_the_format(tmp_path, grid_image):
    for name in ("a.png", "a.jpg", "a.webp"):
        atomic_save_image(grid_image, tmp_path / name)
        with Image.open(tmp_path / name) as image:
            assert image.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.split(".")[1]]
    atomic_save_image(Image.new("RGBA", (4, 4)), tmp_path / "rgba.jpg")  # converted, not an error
    with pytest.raises(InputError, match="unknown image format"):
        atomic_save_image(grid_image, tmp_path / "a.xyz")
    with pytest.raises(InputError, match=r"\.png, \.jpg or \.webp"):
        save_grid(grid_image, tmp_path / "grid.bmp", make_result(n_items=1, seeds=(1,), size=(64, 64)))


def test_too_large_for_webp_is_a_clear_error(tmp_path):
    wide = Image.new("RGB", (16_400, 2))
    with pytest.raises(InputError, match="too large for WEBP"):
        atomic_save_image(wide, tmp_path / "wide.webp")
    assert list(tmp_path.iterdir()) == []


def test_a_path_under_a_file_is_an_input_error(tmp_path, result, grid_image):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / "file.txt" / "grid.png"
    with pytest.raises(InputError, match=r"file\.txt"):
        save_grid(grid_image, target, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_folder_as_target_is_an_input_error(tmp_path, grid_image):
    (tmp_path / "grid.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        atomic_save_image(grid_image, tmp_path / "grid.png")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_a_read_only_folder_is_an_input_error(tmp_path, result, grid_image):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match=r"ro.grid\.png: cannot write \(Permission denied\)"):
            save_grid(grid_image, folder / "grid.png", result)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_an_unwritable_folder_is_an_input_error_even_as_root(tmp_path, monkeypatch, result, grid_image):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(meta.atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(InputError, match=r"grid\.png: cannot write \(Permission denied\)"):
        save_grid(grid_image, tmp_path / "grid.png", result)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_encoding_leaves_the_old_file(tmp_path, monkeypatch, result, grid_image):
    path = tmp_path / "grid.png"
    save_grid(grid_image, path, result)
    before = path.read_bytes()

    original = Image.Image.save

    def half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a grid")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(InputError, match=r"grid\.png: cannot write \(No space left on device\)"):
        save_grid(Image.new("RGB", (10, 10)), path, result)
    monkeypatch.setattr(Image.Image, "save", original)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_a_failing_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_bytes(path, b"old")

    def fail(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(meta.atomic.os, "replace", fail)
    with pytest.raises(InputError, match="Input/output error"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_an_interrupt_while_writing_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "result.json"

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(meta.atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"data")
    assert list(tmp_path.iterdir()) == []
