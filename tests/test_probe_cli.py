"""``cfgsim probe`` as a new user meets it: labels, exit codes, what a wrong file is, the verdict."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("diffusers")

from cfgsim.cli import main
from cfgsim.metadata import read_result
from cfgsim.standalone.demo import build_family

QUICK = ["--steps-override", "2", "--seeds", "1,2"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_family(tmp_path_factory.mktemp("fam"))


def test_same_file_name_in_two_folders_is_told_apart(family, tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    shutil.copy(family.checkpoints[0], tmp_path / "a" / "model.safetensors")
    shutil.copy(family.checkpoints[3], tmp_path / "b" / "model.safetensors")
    out = tmp_path / "out"
    args = [str(tmp_path / "a" / "model.safetensors"), str(tmp_path / "b" / "model.safetensors")]
    code = main(["-q", "probe", *args, "--config-dir", str(family.config_dir), *QUICK, "--out", str(out)])
    assert code == 0
    assert read_result(out / "grid.png").labels == ["a/model", "b/model"]
    printed = capsys.readouterr().out
    assert "Lineage (SSIM, 2 seeds" in printed and "a/model" in printed
    code = main(["-q", "probe", *args, "--labels", "mine,theirs", "--config-dir", str(family.config_dir),
                 *QUICK, "--out", str(tmp_path / "out2")])  # fmt: skip
    assert code == 0 and read_result(tmp_path / "out2" / "grid.png").labels == ["mine", "theirs"]


def test_nothing_made_is_a_failure_with_the_reasons(family, tmp_path, capsys):
    bad = tmp_path / "notackpt.safetensors"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    code = main(
        ["probe", str(bad), "--config-dir", str(family.config_dir), *QUICK, "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "no probe image was made" in err and "the file is a PNG image" in err
    assert "cfgsim: cfgsim:" not in err


def test_a_png_renamed_ckpt_is_named_for_what_it_is(family, tmp_path, capsys):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    code = main(
        ["probe", str(bad), "--config-dir", str(family.config_dir), *QUICK, "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "not a checkpoint: the file is a PNG image" in err
    assert "pickle" not in err


def test_labels_must_match_the_checkpoints(family, tmp_path, capsys):
    code = main(["probe", *map(str, family.checkpoints[:2]), "--labels", "one", "--out", str(tmp_path / "o")])
    assert code == 2 and "--labels: 1 labels for 2 checkpoints" in capsys.readouterr().err


def test_batch_size_flag_reaches_the_host(family, tmp_path):
    code = main(["-q", "probe", *map(str, family.checkpoints[:2]), "--config-dir", str(family.config_dir),
                 *QUICK, "--batch-size", "2", "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 0 and len(read_result(tmp_path / "o" / "grid.png").rows) == 2
