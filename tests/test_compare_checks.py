"""``cfgsim compare`` as a new user meets it: inputs checked against each other, outputs checked
before anything is written, sizes and aspect ratios said out loud, ties, the reference as an input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL.PngImagePlugin import PngInfo

from cfgsim.cli import main
from cfgsim.metadata import read_result
from cfgsim.result import rank_scores
from cfgsim.spec import ProbeSpec
from tests.helpers import item_image


def save(path: Path, item: int, *, steps: int = 256, seed: int = 1337, size=(96, 96), model="m") -> Path:
    info = PngInfo()
    text = ProbeSpec(seeds=(seed,), steps=steps).to_infotext(extra={"Model": f"{model}{item}"})
    info.add_text("parameters", str(text))
    item_image(item, seed, size).save(path, pnginfo=info)
    return path


def test_mixed_settings_are_warned_recorded_and_not_called_a_probe(tmp_path, capsys):
    a = save(tmp_path / "a.png", 0)
    b = save(tmp_path / "b.png", 1, steps=8)
    c = save(tmp_path / "c.png", 2, steps=8, seed=42)
    code = main(["-q", "compare", str(a), str(b), str(c), "--out", str(tmp_path / "g.png"),
                 "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "not a like-for-like probe" in err
    assert "Steps: 256 (m0) vs 8 (m1, m2)" in err and "Seed: 1337 (m0, m1) vs 42 (m2)" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["is_probe"] is False and data["like_for_like"] is False
    assert data["mixed_settings"]["Steps"] == {"256": ["m0"], "8": ["m1", "m2"]}
    assert "Steps: 8" in data["cells"][1]["infotext"]  # each image's own settings are kept


def test_same_settings_stay_a_probe(tmp_path, capsys):
    paths = [save(tmp_path / f"{k}.png", k) for k in range(3)]
    assert main(["-q", "compare", *map(str, paths), "--out", str(tmp_path / "g.png")]) == 0
    assert "like-for-like" not in capsys.readouterr().err
    assert read_result(tmp_path / "g.png").mixed_settings == {}


def test_different_aspect_ratios_are_refused_unless_stretch(tmp_path, capsys):
    a = save(tmp_path / "a.png", 0, size=(96, 96))
    b = save(tmp_path / "b.png", 1, size=(90, 60))
    out = tmp_path / "g.png"
    assert main(["-q", "compare", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "differ in aspect ratio" in err and "96x96" in err and "90x60" in err and "--stretch" in err
    assert not out.exists()
    assert main(["-q", "compare", str(a), str(b), "--out", str(out), "--stretch"]) == 0
    captured = capsys.readouterr()
    assert "resizing them (distorted)" in captured.err
    assert "resized to 90x60" in captured.out


def test_same_aspect_different_size_is_resized_and_said(tmp_path, capsys):
    a = save(tmp_path / "a.png", 0, size=(96, 96))
    b = save(tmp_path / "b.png", 1, size=(64, 64))
    assert main(["-q", "compare", str(a), str(b), "--out", str(tmp_path / "g.png")]) == 0
    assert "1 image(s) resized to 64x64" in capsys.readouterr().out


def test_a_bad_csv_path_fails_before_anything_is_written(tmp_path, capsys):
    a, b = save(tmp_path / "a.png", 0), save(tmp_path / "b.png", 1)
    out = tmp_path / "g.png"
    (tmp_path / "adir").mkdir()
    assert main(["-q", "compare", str(a), str(b), "--out", str(out), "--csv", str(tmp_path / "adir")]) == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "x.csv"
    assert main(["-q", "compare", str(a), str(b), "--out", str(out), "--csv", str(bad)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "adir", "afile", "b.png"]


def test_a_missing_output_folder_is_created_with_a_note(tmp_path, capsys):
    a, b = save(tmp_path / "a.png", 0), save(tmp_path / "b.png", 1)
    out = tmp_path / "new" / "deeper" / "g.png"
    assert main(["-q", "compare", str(a), str(b), "--out", str(out)]) == 0
    assert f"creating output folder {out.parent}" in capsys.readouterr().out
    assert out.is_file()


def test_tied_scores_share_a_rank():
    assert rank_scores([0.5, 0.9, 0.5, float("nan"), 0.5, 0.1]) == [2, 1, 2, None, 2, 5]


def test_an_input_that_is_the_reference_file_is_marked_as_the_reference(tmp_path, capsys):
    a, b, c = (save(tmp_path / f"{k}.png", k) for k in range(3))
    assert (
        main(
            ["-q", "compare", str(a), str(b), str(c), "--reference", str(b), "--out", str(tmp_path / "g.png")]
        )
        == 0
    )
    assert "is the reference image itself" in capsys.readouterr().out
    result = read_result(tmp_path / "g.png")
    assert result.reference.kind == "item" and result.items[result.reference.index].file == str(b)


def test_quiet_works_after_the_subcommand(tmp_path):
    a, b = save(tmp_path / "a.png", 0), save(tmp_path / "b.png", 1)
    assert main(["compare", "-q", str(a), str(b), "--out", str(tmp_path / "g.png")]) == 0


def test_compare_help_states_its_defaults():
    text = subprocess.run(
        [sys.executable, "-m", "cfgsim", "compare", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(text.split())  # argparse wraps lines at the terminal width
    assert "default: cfgsim-compare.png" in text and "default: ssim" in text


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "a PNG image"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "a Git LFS pointer"),
        (b"<!DOCTYPE html><html>", "an HTML page"),
        (b"", "an empty file"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, content, what):
    from cfgsim.standalone.checkpoint import CheckpointFileError, read_safetensors_header

    for suffix in (".ckpt", ".safetensors"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointFileError, match=f"not a checkpoint: the file is {what}"):
            if suffix == ".ckpt":
                pytest.importorskip("torch")
                from cfgsim.standalone.checkpoint import load_state_dict

                load_state_dict(path)
            else:
                read_safetensors_header(path)


def test_inspect_into_a_closed_pipe_is_quiet(tmp_path):
    a, b = save(tmp_path / "a.png", 0), save(tmp_path / "b.png", 1)
    assert main(["-q", "compare", str(a), str(b), "--out", str(tmp_path / "g.png")]) == 0
    run = subprocess.run(
        f"{sys.executable} -m cfgsim inspect {tmp_path / 'g.png'} | head -1",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.stdout.startswith("parameters:")
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr


def test_inspect_json_on_a_webui_image_without_cfgsim_metadata(tmp_path, capsys):
    import json as _json

    a = save(tmp_path / "a.png", 0)
    assert main(["inspect", str(a), "--json"]) == 0
    document = _json.loads(capsys.readouterr().out)
    assert document["cfgsim"] is None and "Steps: 256" in document["parameters"]
    folder = tmp_path / "x.png"
    folder.mkdir()
    assert main(["inspect", str(folder)]) == 2
    assert "is a folder, not an image" in capsys.readouterr().err


def test_inspect_shows_the_verdict(tmp_path, capsys):
    paths = [save(tmp_path / f"{k}.png", k) for k in range(3)]
    assert main(["-q", "compare", *map(str, paths), "--out", str(tmp_path / "g.png")]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "g.png")]) == 0
    assert "Lineage (SSIM, 1 seed" in capsys.readouterr().out


def test_an_external_reference_image_is_the_first_marked_column(tmp_path):
    from PIL import Image

    a, b = save(tmp_path / "a.png", 0), save(tmp_path / "b.png", 1)
    ref = save(tmp_path / "ref.png", 2)
    out = tmp_path / "g.png"
    assert main(["-q", "compare", str(a), str(b), "--reference", str(ref), "--out", str(out)]) == 0
    without = tmp_path / "plain.png"
    assert main(["-q", "compare", str(a), str(b), "--out", str(without)]) == 0
    layout = read_result(out).grid_layout
    assert layout["cols"] == 3 and layout["columns"][0] == "reference image: ref"
    # The reference's own pixels are in its cell (under the marking border and label box).
    x0, y0, x1, y1 = layout["boxes"][0]
    cell = Image.open(out).convert("RGB").crop((x0, y0, x1, y1))
    w = x1 - x0
    inner = (w // 4, w // 4, w // 2, w // 2)
    reference = Image.open(ref).convert("RGB").resize((x1 - x0, y1 - y0))
    assert cell.crop(inner).tobytes() == reference.crop(inner).tobytes()
    assert Image.open(out).width > Image.open(without).width
