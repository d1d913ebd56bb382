"""``cfgsim compare`` with folders as multi-seed items, and the lineage it reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cfgsim.cli import main
from cfgsim.metadata import read_result
from cfgsim.spec import ProbeSpec
from tests.helpers import smooth_image

SIZE = (64, 64)


def family_image(model: str, seed: int, size=SIZE) -> Image.Image:
    """A family with a known tree: every model starts from the seed's picture (the shared noise);
    ``base`` adds its own pattern, ``copy`` is base re-saved, ``ft`` drifts a little from base,
    ``merge`` is half base and half ``other``; ``other`` and ``far`` are unrelated roots."""
    noise = np.asarray(smooth_image(seed, size), dtype=float)

    def own(tag: int) -> np.ndarray:
        return np.asarray(smooth_image(seed * 7919 + tag, size), dtype=float)

    base = 0.5 * noise + 0.5 * own(1)
    other = 0.5 * noise + 0.5 * own(2)
    pictures = {
        "base": base,
        "copy": base + 0.5,  # rounding-level difference
        "ft": 0.85 * base + 0.15 * own(3),
        "merge": 0.5 * base + 0.5 * other,
        "other": other,
        "far": 0.5 * noise + 0.5 * own(4),
    }
    return Image.fromarray(np.clip(pictures[model], 0, 255).astype(np.uint8), "RGB")


def write_folder(root: Path, model: str, seeds, *, infotext=True, name="{seed}.png", size=SIZE) -> Path:
    folder = root / model
    folder.mkdir(parents=True, exist_ok=True)
    for k, seed in enumerate(seeds):
        info = PngInfo()
        if infotext:
            info.add_text("parameters", str(ProbeSpec(seeds=(seed,)).to_infotext(extra={"Model": model})))
        path = folder / name.format(seed=seed, k=k, model=model)
        family_image(model, seed, size).save(path, pnginfo=info)
    return folder


def run(*argv: str) -> int:
    return main(["-q", *argv])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


MODELS = ["base", "copy", "ft", "merge", "other", "far"]


@pytest.fixture
def family(tmp_path):
    return [write_folder(tmp_path / "in", m, range(1, 9)) for m in MODELS]


def test_folders_are_items_paired_by_seed_with_a_verdict(family, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(
        ["compare", *map(str, family), "--out", str(out), "--json", str(tmp_path / "r.json"),
         "--csv", str(tmp_path / "s.csv"), "--replicates", "200"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "paired 8 seeds across 6 items by infotext Seed" in printed
    assert "Lineage (SSIM, 8 seeds" in printed and "same model as base" in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["schema_version"] == 2 and data["rows"] == list(range(1, 9))
    lin = data["lineage"]
    assert lin["tree"].endswith(";") and "copy" in lin["tree"]
    rel = {r["label"]: r for r in lin["relatives"]}
    for key in ("nearest", "similarity", "ci", "runner_up", "p_value", "seeds_won", "support", "verdict"):
        assert key in rel["ft"]
    assert rel["copy"]["nearest"] == "base" and rel["copy"]["band"] == "same model"
    assert rel["ft"]["nearest"] in ("base", "copy")
    assert rel["merge"]["nearest"] in ("base", "copy", "other")
    # The tree: base with its copy, then the fine-tune, in one well-supported clade.
    clades = {frozenset(data["items"][m]["label"] for m in c["members"]): c["support"] for c in lin["clades"]}
    assert clades[frozenset({"base", "copy"})] >= 0.95
    assert clades[frozenset({"base", "copy", "ft"})] >= 0.95
    # The outputs: tree picture, heatmap, CSV of the verdicts, grid columns in tree order.
    assert (tmp_path / "grid-tree.png").exists() and (tmp_path / "grid-heatmap-ssim.png").exists()
    rows = list(csv.reader((tmp_path / "s-lineage.csv").open()))
    assert rows[0][:3] == ["item", "nearest", "similarity"] and len([r for r in rows[1:] if r]) == 7
    stored = read_result(out)
    assert stored.lineage is not None
    order = [stored.items[i].label for i in stored.tree_order()]
    assert abs(order.index("base") - order.index("copy")) == 1


def test_pairing_falls_back_to_file_name_numbers_then_sorted_order(tmp_path, capsys):
    a = write_folder(tmp_path / "n", "base", [5, 7, 9], infotext=False, name="00012-{seed}.png")
    b = write_folder(tmp_path / "n", "ft", [9, 7, 5], infotext=False, name="img-{seed}.png")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "g.png")]) == 0
    assert "by number in the file name" in capsys.readouterr().out
    stored = read_result(tmp_path / "g.png")
    assert stored.rows == [5, 7, 9] and stored.row_axis == "Seed"
    assert stored.cell(1, 0).file.endswith("img-5.png")

    c, d = tmp_path / "o" / "base", tmp_path / "o" / "ft"
    c.mkdir(parents=True)
    d.mkdir()
    for k, name in enumerate(["apple", "banana"]):  # no infotext, no number: sorted order
        family_image("base", k + 1).save(c / f"{name}.png")
        family_image("ft", k + 1).save(d / f"{name}-x.png")
    assert main(["compare", str(c), str(d), "--out", str(tmp_path / "h.png")]) == 0
    assert "by sorted file order" in capsys.readouterr().out
    assert read_result(tmp_path / "h.png").row_axis == "Image"


def test_seeds_missing_from_an_item_are_reported_and_left_out(tmp_path, capsys):
    a = write_folder(tmp_path, "base", [1, 2, 3, 4])
    b = write_folder(tmp_path, "ft", [2, 3, 4, 5])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out
    assert "left out seed 1: only in base" in out and "left out seed 5: only in ft" in out
    assert read_result(tmp_path / "g.png").rows == [2, 3, 4]


def test_disjoint_seeds_name_each_items_seeds(tmp_path, capsys):
    a = write_folder(tmp_path, "base", [1, 2])
    b = write_folder(tmp_path, "ft", [3, 4])
    assert run("compare", str(a), str(b), "--out", str(tmp_path / "g.png")) == 2
    line = one_error_line(capsys)
    assert "no seed is present in every item" in line and "base: 1, 2" in line and "ft: 3, 4" in line
    assert not (tmp_path / "g.png").exists()


def test_empty_folder_is_named(tmp_path, capsys):
    a = write_folder(tmp_path, "base", [1, 2])
    (tmp_path / "empty").mkdir()
    assert run("compare", str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "g.png")) == 2
    assert "empty: folder holds no images" in one_error_line(capsys)


def test_a_seed_present_twice_in_one_folder_is_refused(tmp_path, capsys):
    a = write_folder(tmp_path, "base", [1, 2])
    b = write_folder(tmp_path, "ft", [1, 2])
    family_image("ft", 1).save(b / "again.png", pnginfo=_seed_info(1))
    assert run("compare", str(a), str(b), "--out", str(tmp_path / "g.png")) == 2
    line = one_error_line(capsys)
    assert "seed 1 is present twice" in line and "again.png" in line


def _seed_info(seed: int) -> PngInfo:
    info = PngInfo()
    info.add_text("parameters", str(ProbeSpec(seeds=(seed,)).to_infotext()))
    return info


def test_mixed_sizes_across_seeds_are_compared_per_seed_without_resizing(tmp_path):
    a = write_folder(tmp_path, "base", [1])
    b = write_folder(tmp_path, "ft", [1])
    write_folder(tmp_path, "base", [2], size=(48, 48))
    write_folder(tmp_path, "ft", [2], size=(48, 48))
    assert (
        run("compare", str(a), str(b), "--out", str(tmp_path / "g.png"), "--json", str(tmp_path / "r.json"))
        == 0
    )
    policy = json.loads((tmp_path / "r.json").read_text())["size_policy"]
    assert policy["policy"] == "per-seed"
    assert [(r["row"], r["policy"], r["size"]) for r in policy["rows"]] == [
        (1, "none", [64, 64]),
        (2, "none", [48, 48]),
    ]


def test_one_seed_folders_give_a_tree_without_support(tmp_path, capsys):
    folders = [write_folder(tmp_path, m, [3]) for m in ("base", "ft", "far")]
    assert main(["compare", *map(str, folders), "--out", str(tmp_path / "g.png")]) == 0
    assert "one seed: no confidence intervals" in capsys.readouterr().out
    lin = read_result(tmp_path / "g.png").lineage
    assert lin.replicates == 0 and all(c.support is None for c in lin.clades)


def test_version_1_documents_are_still_read(tmp_path, family):
    out = tmp_path / "grid.png"
    assert run("compare", *map(str, family[:3]), "--out", str(out), "--json", str(tmp_path / "r.json")) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    data["schema_version"] = 1
    del data["lineage"]
    from cfgsim.metadata import parse_json
    from cfgsim.result import ProbeResult

    old = ProbeResult.from_dict(parse_json(json.dumps(data)))
    assert old.lineage is None and old.labels == ["base", "copy", "ft"]


def test_replicates_below_200_are_refused(family, tmp_path, capsys):
    assert run("compare", *map(str, family[:3]), "--out", str(tmp_path / "g.png"), "--replicates", "50") == 2
    assert "at least 200" in one_error_line(capsys)


def test_a_cfgsim_grid_split_by_column_gives_folders_that_compare_again(family, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert (
        run("compare", *map(str, family[:4]), "--out", str(out), "--no-overlays", "--replicates", "200") == 0
    )
    first = read_result(out)
    cells = tmp_path / "cells"
    assert run("split-grid", str(out), "--out", str(cells), "--by-column") == 0
    folders = sorted(p for p in cells.iterdir() if p.is_dir())
    # The grid is drawn in tree order; its recorded layout names each column by its item.
    assert sorted(p.name for p in folders) == sorted(first.labels)
    assert sorted(f.name for f in folders[0].iterdir()) == sorted(f"{s}.png" for s in first.rows)
    again = tmp_path / "again.png"
    capsys.readouterr()
    assert main(["compare", *map(str, folders), "--out", str(again), "--replicates", "200"]) == 0
    assert "by number in the file name" in capsys.readouterr().out
    second = read_result(again)
    assert second.rows == first.rows
    order = [second.labels.index(label) for label in first.labels]
    mean1 = first.scores["ssim"].mean
    mean2 = second.scores["ssim"].mean[np.ix_(order, order)]
    # The cells were cut from the drawn grid (resized to the grid's cell size): close, not exact.
    assert np.nanmax(np.abs(mean1 - mean2)) < 0.1
    assert second.lineage.relative_of(second.labels.index("copy")).nearest_label == "base"
