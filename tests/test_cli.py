"""The command line end to end: compare, split-grid, inspect, and every bad input it must refuse."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cfgsim.cli import main
from cfgsim.metadata import read_metadata, read_result
from cfgsim.spec import ProbeSpec
from tests.helpers import item_image, smooth_image, webui_grid, webui_infotext

REFERENCE_PNG = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference"
    / ("nai-925997e9-seed1337-cfg1-euler256.png")
)


def save_probe_image(path: Path, item: int, model: str, seed: int = 1337, size=(96, 96)) -> Path:
    info = PngInfo()
    text = ProbeSpec(seeds=(seed,)).to_infotext(extra={"Model hash": f"{item:08x}", "Model": model})
    info.add_text("parameters", str(text))
    item_image(item, seed, size).save(path, pnginfo=info)
    return path


@pytest.fixture
def images(tmp_path):
    return [save_probe_image(tmp_path / f"img{i}.png", i, f"model-{i}") for i in range(3)]


def run(*argv: str) -> int:
    return main(["-q", *argv])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("cfgsim: error: ")
    return err[0]


def test_compare_writes_grid_heatmap_json_csv(images, tmp_path, capsys):
    out = tmp_path / "out" / "grid.png"
    out.parent.mkdir()
    code = run(
        "compare",
        *map(str, images),
        "--reference-index",
        "0",
        "--out",
        str(out),
        "--json",
        str(tmp_path / "r.json"),
        "--csv",
        str(tmp_path / "r.csv"),
        "--metrics",
        "ssim,phash",
    )
    assert code == 0
    printed = capsys.readouterr().out
    # Labels come from the images' infotext (Model), the reference row says "ref".
    assert "model-0" in printed and "model-2" in printed and "ref" in printed
    assert (tmp_path / "out" / "grid-heatmap-ssim.png").is_file()
    result = read_result(out)
    assert [i.label for i in result.items] == ["model-0", "model-1", "model-2"]
    assert [i.model_hash for i in result.items] == ["00000000", "00000001", "00000002"]
    assert result.row_label(0) == "Seed 1337"
    vs = result.scores["ssim"].vs_reference[0]
    assert vs[1] > vs[2]  # item 1 is closer to item 0 than item 2 is
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == ["ssim", "phash"]
    csv_lines = (tmp_path / "r.csv").read_text().splitlines()
    assert csv_lines[0].startswith("metric,row,item") and len(csv_lines) == 1 + 2 * 3
    infotext, _ = read_metadata(out)
    assert ProbeSpec.from_infotext(infotext) == ProbeSpec()
    assert 'Compared: "model-0, model-1, model-2"' in infotext


def test_compare_against_the_published_reference(tmp_path, capsys):
    if not REFERENCE_PNG.is_file():
        pytest.skip(f"the published reference image is not at {REFERENCE_PNG}")
    ref = Image.open(REFERENCE_PNG).convert("RGB")
    near = tmp_path / "near.png"
    ref.resize((256, 256), Image.Resampling.LANCZOS).save(near)  # a smaller copy of the same picture
    far = tmp_path / "far.png"
    smooth_image(5, (512, 512)).save(far)
    assert (
        run(
            "compare",
            str(near),
            str(far),
            "--reference",
            str(REFERENCE_PNG),
            "--out",
            str(tmp_path / "g.png"),
            "--metrics",
            "ssim,phash",
        )
        == 0
    )
    result = read_result(tmp_path / "g.png")
    assert result.size_policy["policy"] == "resize-to-smallest" and result.size_policy["size"] == [256, 256]
    for metric in ("ssim", "phash"):
        near_score, far_score = result.scores[metric].vs_reference[0]
        assert near_score > 0.9 > far_score
    # The reference's infotext set the spec: the ground truth.
    assert result.spec == ProbeSpec()


def test_labels_option_and_file_name_fallback(tmp_path, capsys):
    plain = []
    for i in range(2):
        path = tmp_path / f"plain{i}.png"
        item_image(i, 3).save(path)
        plain.append(str(path))
    assert run("compare", *plain, "--out", str(tmp_path / "g.png")) == 0
    assert [i.label for i in read_result(tmp_path / "g.png").items] == ["plain0", "plain1"]
    assert run("compare", *plain, "--labels", "a,b", "--out", str(tmp_path / "g2.png")) == 0
    assert [i.label for i in read_result(tmp_path / "g2.png").items] == ["a", "b"]


def test_jpeg_grid_gets_exif_infotext_and_sidecar(images, tmp_path):
    out = tmp_path / "grid.jpg"
    assert run("compare", *map(str, images), "--out", str(out)) == 0
    assert (tmp_path / "grid.cfgsim.json").is_file()
    infotext, payload = read_metadata(out)
    assert "Steps: 256" in infotext and payload["schema"] == "cfgsim.probe-result"


def test_inspect_prints_parameters_and_scores(images, tmp_path, capsys):
    out = tmp_path / "grid.png"
    run("compare", *map(str, images), "--reference-index", "1", "--out", str(out))
    capsys.readouterr()
    assert run("inspect", str(out)) == 0
    text = capsys.readouterr().out
    assert "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337" in text
    assert "vs reference 'model-1'" in text
    assert run("inspect", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out)["reference"]["index"] == 1


def test_split_grid_then_compare(tmp_path, capsys):
    cells = [[item_image(c, r, (96, 96)) for c in range(3)] for r in range(2)]
    grid, _ = webui_grid(cells, ["a", "b", "c"], ["1", "2"])
    path = tmp_path / "xy.png"
    grid.save(path)
    assert run("split-grid", str(path), "--rows", "2", "--cols", "3", "--out", str(tmp_path / "cells")) == 0
    written = sorted((tmp_path / "cells").glob("*.png"))
    assert len(written) == 6
    first = Image.open(tmp_path / "cells" / "r1-c1.png")
    assert first.size == (96, 96)
    assert "2x3 cells of 96x96 px" in capsys.readouterr().out


def test_split_grid_names_cells_by_the_grids_axis_values(tmp_path, capsys):
    cells = [[item_image(c, r, (96, 96)) for c in range(2)] for r in range(2)]
    grid, _ = webui_grid(cells, ["anime/v3", "base"], ["1337", "42"])
    path = tmp_path / "xy.png"
    info = PngInfo()
    info.add_text("parameters", webui_infotext("anime/v3, base", "1337, 42"))
    grid.save(path, pnginfo=info)
    assert run("split-grid", str(path), "--rows", "2", "--cols", "2", "--out", str(tmp_path / "cells")) == 0
    names = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert names == ["1337-anime_v3.png", "1337-base.png", "42-anime_v3.png", "42-base.png"]


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "cfgsim", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("cfgsim ")


# -- bad input: exit 2, one line naming the thing and the reason, nothing half written -----------


def test_not_an_image(tmp_path, images, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    assert run("compare", str(bad), str(images[0]), "--out", str(tmp_path / "g.png")) == 2
    line = one_error_line(capsys)
    assert "notes.png" in line and "not an image" in line
    assert not (tmp_path / "g.png").exists()


def test_truncated_png(tmp_path, images, capsys):
    data = images[1].read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    assert run("compare", str(images[0]), str(cut), "--out", str(tmp_path / "g.png")) == 2
    line = one_error_line(capsys)
    assert "cut.png" in line and "truncated" in line.lower()


def test_decompression_bomb_is_refused_with_the_limit(tmp_path, images, capsys):
    bomb = tmp_path / "bomb.png"
    # A valid PNG header claiming 100000 x 100000 pixels (never decoded: refused by its size).
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    png += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    bomb.write_bytes(png + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    assert run("compare", str(images[0]), str(bomb), "--out", str(tmp_path / "g.png")) == 2
    line = one_error_line(capsys)
    assert "bomb.png" in line and "pixels" in line


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_images(tmp_path, images, capsys, count):
    assert run("compare", *map(str, images[:count]), "--out", str(tmp_path / "g.png")) == 2
    assert "at least two images" in one_error_line(capsys)


def test_duplicate_labels(tmp_path, images, capsys):
    assert run("compare", *map(str, images[:2]), "--labels", "x,x", "--out", str(tmp_path / "g.png")) == 2
    assert "'x' is used twice" in one_error_line(capsys)


def test_labels_with_html_and_path_characters(tmp_path, images, capsys):
    labels = "<img src=x onerror=alert(1)>,../../etc/passwd,a/b\\c"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "g.png"
    assert (
        run(
            "compare",
            *map(str, images),
            "--labels",
            labels,
            "--out",
            str(out),
            "--json",
            str(out_dir / "r.json"),
        )
        == 0
    )
    assert read_result(out).items[0].label == "<img src=x onerror=alert(1)>"
    # Labels never become paths: only the files asked for were written, all in out/.
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["g.png", "g-tree.png", "g-heatmap-ssim.png", "r.json"]
    )


def test_unknown_metric(tmp_path, images, capsys):
    assert run("compare", *map(str, images), "--metrics", "ssim,lpips", "--out", str(tmp_path / "g.png")) == 2
    assert "'lpips' is unknown" in one_error_line(capsys)


def test_reference_index_out_of_range(tmp_path, images, capsys):
    assert run("compare", *map(str, images), "--reference-index", "7", "--out", str(tmp_path / "g.png")) == 2
    assert "--reference-index 7" in one_error_line(capsys)


def test_unwritable_output_path(tmp_path, images, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "grid.png"  # a path under a regular file cannot be created
    assert run("compare", *map(str, images), "--out", str(out)) == 2
    line = one_error_line(capsys)
    assert str(out) in line or str(blocker) in line
    assert sorted(os.listdir(tmp_path)) == sorted(["file", *(p.name for p in images)])


def _grid_with_payload(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.png"
    info = PngInfo()
    info.add_text("parameters", "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337")
    info.add_text("cfgsim", text)
    smooth_image(1, (64, 64)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema": "other-tool", "schema_version": 1}', "not cfgsim metadata"),
        ('{"schema": "cfgsim.probe-result", "schema_version": 99}', "newer cfgsim"),
    ],
)
def test_inspect_refuses_bad_metadata(tmp_path, capsys, payload, reason):
    path = _grid_with_payload(tmp_path, payload)
    assert run("inspect", str(path)) == 2
    line = one_error_line(capsys)
    assert "grid.png" in line and reason in line


def test_inspect_image_without_metadata(tmp_path, capsys):
    path = tmp_path / "plain.png"
    smooth_image(1, (32, 32)).save(path)
    assert run("inspect", str(path)) == 2
    assert "no cfgsim metadata" in one_error_line(capsys)


def test_split_grid_bad_counts(tmp_path, capsys):
    path = tmp_path / "g.png"
    smooth_image(1, (64, 64)).save(path)
    assert run("split-grid", str(path), "--rows", "0", "--cols", "2") == 2
    assert "--rows" in one_error_line(capsys)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_with_chunks(path: Path, *chunks: bytes) -> Path:
    """A small PNG with ``chunks`` (already framed) inserted before IEND."""
    smooth_image(1, (64, 64)).save(path)
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + b"".join(chunks) + data[end:])
    return path


def _document(**spec) -> str:
    from cfgsim.metadata import to_json
    from tests.helpers import make_result

    document = json.loads(to_json(make_result(n_items=2, seeds=(1,), size=(64, 64))))
    document["spec"].update(spec)
    return json.dumps(document)


@pytest.mark.parametrize("spec", [{"steps": "abc"}, {"seeds": {"a": 1}}, {"width": [1]}, {"steps": None}])
def test_inspect_refuses_a_document_with_bad_spec_values(tmp_path, capsys, spec):
    path = _grid_with_payload(tmp_path, _document(**spec))
    assert run("inspect", str(path)) == 2
    line = one_error_line(capsys)
    assert "grid.png" in line and "cfgsim metadata" in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"cfgsim\0", "no compression flag"),  # the old reader raised IndexError here
        (b"cfgsim\0\x01", "no compression flag"),
        (b"cfgsim\0\x00\x00en", "no language tag"),
        (b"cfgsim\0\x00\x00en\0cfg", "no translated keyword"),
        (b"cfgsim\0\x01\x00\0\0not zlib", "bad compressed data"),
        (b"cfgsim\0\x02\x00\0\0{}", "unknown compression"),
        (b"cfgsim\0\x00\x00\0\0\xff\xfe", "not UTF-8"),
        (b"cfgsim\0\x01\x00\0\0" + zlib.compress(b"{" * 1000)[:-6], "cut short"),
    ],
)
def test_inspect_refuses_a_malformed_itxt_chunk(tmp_path, capsys, body, reason):
    path = _png_with_chunks(tmp_path / "grid.png", _png_chunk(b"iTXt", body))
    assert run("inspect", str(path)) == 2
    line = one_error_line(capsys)
    assert "grid.png" in line and "'cfgsim' iTXt chunk is malformed" in line and reason in line


def test_inspect_refuses_a_damaged_or_truncated_chunk(tmp_path, capsys):
    chunk = bytearray(_png_chunk(b"tEXt", b"parameters\0Steps: 20"))
    chunk[-1] ^= 0xFF
    path = _png_with_chunks(tmp_path / "grid.png", bytes(chunk))
    assert run("inspect", str(path)) == 2
    assert "CRC mismatch" in one_error_line(capsys)
    whole = _png_with_chunks(tmp_path / "cut.png", _png_chunk(b"tEXt", b"parameters\0Steps: 20" + b"x" * 200))
    data = whole.read_bytes()
    whole.write_bytes(data[: data.index(b"parameters") + 50])
    assert run("inspect", str(whole)) == 2
    assert "cut short" in one_error_line(capsys)


def test_foreign_text_chunks_are_neither_read_nor_inflated(tmp_path):
    """Six zTXt chunks inflating to 30 MB each cost the old reader all of it in memory; only the
    ``parameters`` and ``cfgsim`` chunks are read now, and a malformed foreign chunk is no error."""
    import tracemalloc

    bomb = zlib.compress(b"x" * (30 << 20), 9)
    foreign = [_png_chunk(b"zTXt", f"comment{k}".encode() + b"\0\0" + bomb) for k in range(6)]
    broken = _png_chunk(b"iTXt", b"Comment\0")
    params = _png_chunk(b"tEXt", b"parameters\0Steps: 20, Seed: 1")
    path = _png_with_chunks(tmp_path / "grid.png", *foreign, broken, params)
    tracemalloc.start()
    try:
        infotext, payload = read_metadata(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert infotext == "Steps: 20, Seed: 1" and payload is None
    assert peak < 4 << 20


def test_a_wanted_chunk_over_its_limit_is_refused(tmp_path, capsys, monkeypatch):
    from cfgsim.metadata import WANTED_CHUNKS

    monkeypatch.setitem(WANTED_CHUNKS, "cfgsim", 1000)
    body = b"cfgsim\0\0" + zlib.compress(b" " * 5000)
    path = _png_with_chunks(tmp_path / "grid.png", _png_chunk(b"zTXt", body))
    assert run("inspect", str(path)) == 2
    assert "inflates to more than 1000 bytes" in one_error_line(capsys)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_infotext_is_read_without_opening_the_image(tmp_path, monkeypatch, fmt):
    """Opening the image (and lifting Pillow's process-wide pixel limit to do it) is not needed
    to read the EXIF UserComment of a JPEG or WebP."""
    from cfgsim.metadata import exif_with_infotext

    path = tmp_path / f"grid.{fmt.lower()}"
    smooth_image(1, (64, 64)).save(path, format=fmt, exif=exif_with_infotext("Steps: 20, Seed: 1 \u2014 ok"))

    def refuse(*args, **kwargs):
        raise AssertionError("Image.open was called")

    monkeypatch.setattr(Image, "open", refuse)
    assert read_metadata(path) == ("Steps: 20, Seed: 1 \u2014 ok", None)


def test_malformed_exif_is_one_line(tmp_path, capsys):
    path = tmp_path / "grid.jpg"
    smooth_image(1, (64, 64)).save(path, format="JPEG")
    data = path.read_bytes()
    segment = b"Exif\0\0XX\0\x2a\0\0\0\x08"  # no TIFF byte order
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    path.write_bytes(data[:2] + app1 + data[2:])
    assert run("inspect", str(path)) == 2
    line = one_error_line(capsys)
    assert "grid.jpg: the EXIF data is malformed" in line and "not a TIFF file" in line


def _banded_grid(path: Path) -> Path:
    from tests.test_splitgrid import banded_cell

    grid = Image.new("RGB", (384, 256), "white")
    for r in range(2):
        for c in range(3):
            grid.paste(banded_cell(r * 3 + c), (c * 128, r * 128))
    grid.save(path)
    return path


def test_split_grid_refuses_an_unsure_layout_with_its_evidence(tmp_path, capsys):
    path = _banded_grid(tmp_path / "xy.png")
    out = tmp_path / "cells"
    assert run("split-grid", str(path), "--rows", "2", "--cols", "3", "--out", str(out)) == 2
    line = one_error_line(capsys)
    assert "layout is unsure" in line and "white bands" in line and "--no-labels" in line
    assert not out.exists()  # nothing written


def test_split_grid_no_labels_warns_and_cuts(tmp_path, capsys):
    path = _banded_grid(tmp_path / "xy.png")
    out = tmp_path / "cells"
    assert run("split-grid", str(path), "--rows", "2", "--cols", "3", "--no-labels", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("cfgsim: warning: ") and "layout confidence" in captured.err
    assert "2x3 cells of 128x128 px" in captured.out
    assert {Image.open(p).size for p in out.glob("*.png")} == {(128, 128)}


def test_split_grid_margins_and_gap_options(tmp_path, capsys):
    cells = [[item_image(c, r, (96, 96)) for c in range(2)] for r in range(2)]
    grid, margins = webui_grid(cells, ["a", "b"], ["1", "2"], margin=4)
    path = tmp_path / "xy.png"
    grid.save(path)
    argv = ["split-grid", str(path), "--rows", "2", "--cols", "2", "--out", str(tmp_path / "c")]
    assert run(*argv, "--margins", f"{margins[0]},{margins[1]}", "--gap", "4") == 0
    assert "from given, confidence 1.00" in capsys.readouterr().out
    assert run(*argv, "--margins", "96") == 2
    assert "LEFT,TOP" in one_error_line(capsys)
    assert run(*argv, "--margins", "900,0") == 2
    assert "do not fit" in one_error_line(capsys)


def test_split_grid_cuts_a_cfgsim_grid_by_its_metadata(images, tmp_path, capsys):
    """cfgsim's own grid (overlays, legend) needs no --rows/--cols: its metadata has the boxes."""
    out = tmp_path / "out" / "grid.png"
    assert run("compare", *map(str, images), "--out", str(out)) == 0
    capsys.readouterr()
    assert run("split-grid", str(out), "--out", str(tmp_path / "cells")) == 0
    printed = capsys.readouterr().out
    assert "1x3 cells of 96x96 px" in printed and "from metadata, confidence 1.00" in printed
    layout = read_result(out).grid_layout
    grid = Image.open(out).convert("RGB")
    written = sorted((tmp_path / "cells").glob("*.png"))
    assert len(written) == 3
    # Cells are named by what cfgsim drew there: the seed and the item (the grid may be in tree order).
    assert layout["row_values"] == ["1337"] and sorted(layout["columns"]) == ["model-0", "model-1", "model-2"]
    names = [f"1337-{label}.png" for label in layout["columns"]]
    for box, name in zip(layout["boxes"], names, strict=True):
        cell = Image.open(tmp_path / "cells" / name).convert("RGB")
        assert cell.tobytes() == grid.crop(tuple(box)).tobytes()
