"""Writing a result folder: file names from labels, CSV, summary, cell images with infotext."""

from __future__ import annotations

import csv
import io

from PIL import Image

from cfgsim.metadata import read_result
from cfgsim.output import safe_filename, scores_csv, summary_table, unique_filenames, write_outputs
from tests.helpers import make_result


def test_safe_filename_removes_paths_html_and_controls():
    assert safe_filename("../../etc/passwd") == "etc_passwd"
    assert safe_filename("<img src=x onerror=alert(1)>") == "img_src_x_onerror_alert_1"
    assert safe_filename("a/b\\c\x00d") == "a_b_c_d"
    assert safe_filename("...") == "item"
    assert len(safe_filename("x" * 500)) == 80


def test_unique_filenames_never_collide():
    assert unique_filenames(["a/b", "a_b", "A_B"]) == ["a_b", "a_b-2", "A_B-3"]


def test_write_outputs(tmp_path):
    result = make_result(3, seeds=(1337, 42), labels=["base", "<b>tuned</b>", "../other"])
    written = write_outputs(result, tmp_path / "out")
    out = tmp_path / "out"
    assert written["grid"] == out / "grid.png"
    assert (out / "heatmap-ssim.png").is_file() and (out / "result.json").is_file()
    cells = sorted(p.name for p in (out / "cells").iterdir())
    # One file per successful cell (the last item's last seed failed in make_result).
    assert cells == [
        "b_tuned_b-seed1337.png",
        "b_tuned_b-seed42.png",
        "base-seed1337.png",
        "base-seed42.png",
        "other-seed1337.png",
    ]
    stored = read_result(out / "grid.png")
    assert stored.cell(0, 0).file == str(out / "cells" / "base-seed1337.png")
    assert stored.cell(2, 1).status == "failed"


def test_cell_images_keep_their_infotext(tmp_path):
    result = make_result(2, seeds=(7,), with_failure=False)
    result.cells[0].infotext = "Steps: 256, Sampler: Euler, Seed: 7, Model hash: abcd1234"
    write_outputs(result, tmp_path)
    with Image.open(result.cells[0].file) as im:
        assert im.info["parameters"].endswith("Model hash: abcd1234")


def test_scores_csv_and_summary():
    result = make_result(3, seeds=(1, 2), with_failure=False)
    rows = list(csv.DictReader(io.StringIO(scores_csv(result))))
    assert len(rows) == 3 * 2
    ref_rows = [r for r in rows if r["item"] == result.items[0].label]
    assert all(r["score_vs_reference"] == "" and r["rank"] == "" for r in ref_rows)
    assert {r["rank"] for r in rows if r["item"] == result.items[1].label} == {"1"}
    text = summary_table(result)
    assert "ref" in text and result.items[2].label in text
