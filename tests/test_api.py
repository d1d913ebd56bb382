"""The public Python API (``import cfgsim``): names, inputs of every kind, the README's examples."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cfgsim
from cfgsim import api
from tests.helpers import item_image

README = Path(__file__).resolve().parents[1] / "README.md"


def test_public_names_are_stable_and_lazy():
    assert set(cfgsim.__all__) == {
        "CfgsimError",
        "InputError",
        "Lineage",
        "ProbeResult",
        "ProbeSpec",
        "__version__",
        "compare_images",
        "probe_checkpoints",
        "read_result",
        "render_result",
        "save_result",
        "similarity_matrix",
    }
    for name in cfgsim.__all__:
        assert getattr(cfgsim, name) is not None
    # Importing cfgsim loads neither the API's dependencies nor torch.
    code = "import sys, cfgsim; print('cfgsim.api' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cfgsim.nope  # noqa: B018


def test_docstring_examples_run():
    failures, tried = doctest.testmod(api, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


def test_similarity_matrix_takes_paths_pil_images_and_arrays(tmp_path):
    pil = item_image(0, 1, (64, 64))
    path = tmp_path / "a.png"
    pil.save(path)
    arr = np.asarray(item_image(3, 1, (64, 64)))
    m = cfgsim.similarity_matrix([path, pil, arr])
    assert m.shape == (3, 3)
    assert m[0, 1] == pytest.approx(1.0)
    assert m[0, 2] < 0.95
    with pytest.raises(cfgsim.InputError, match="expected a file path, a PIL image or a uint8 array"):
        cfgsim.similarity_matrix([pil, 3])


def test_compare_images_over_seeds_gives_a_verdict_and_leaves_out_missing_seeds():
    seeds = range(1, 9)
    images = {
        "base": {s: item_image(0, s, (64, 64)) for s in seeds},
        "copy": {s: item_image(0, s, (64, 64)) for s in seeds},
        "far": {s: item_image(4, s, (64, 64)) for s in [*seeds, 99]},
    }
    result = cfgsim.compare_images(images, replicates=200, reference="base")
    assert result.rows == list(seeds) and result.row_axis == "Seed"
    rel = result.lineage.relative_of(1)
    assert rel.nearest_label == "base" and rel.band == "same model"
    assert result.reference.kind == "item" and result.reference.index == 0


def test_compare_images_with_an_external_reference_image(tmp_path):
    ref = tmp_path / "ref.png"
    item_image(0, 5, (64, 64)).save(ref)
    result = cfgsim.compare_images([item_image(0, 5, (64, 64)), item_image(2, 5, (64, 64))], reference=ref)
    scores = result.scores["ssim"].vs_reference[0]
    assert scores[0] == pytest.approx(1.0) and scores[1] < 0.99


def test_compare_images_refuses_bad_input_with_a_clear_message():
    one = item_image(0, 1, (32, 32))
    with pytest.raises(cfgsim.InputError, match="at least two items"):
        cfgsim.compare_images([one])
    with pytest.raises(cfgsim.InputError, match="no seed is present for every item"):
        cfgsim.compare_images({"a": {1: one}, "b": {2: one}})
    with pytest.raises(cfgsim.InputError, match="reference: item 5"):
        cfgsim.compare_images([one, one], reference=5)
    with pytest.raises(cfgsim.InputError, match="metric 'lpips' is unknown"):
        cfgsim.compare_images([one, one], metrics="lpips")


def test_results_save_and_read_back(tmp_path):
    images = {
        name: [item_image(k, s, (48, 48)) for s in (1, 2, 3)] for name, k in (("a", 0), ("b", 1), ("c", 4))
    }
    result = cfgsim.compare_images(images, replicates=200)
    written = cfgsim.save_result(result, tmp_path / "out")
    assert {"grid", "tree", "heatmap-ssim", "json"} <= set(written)
    for path in (written["grid"], written["json"]):
        back = cfgsim.read_result(path)
        assert back.labels == ["a", "b", "c"]
        assert back.lineage.newick == result.lineage.newick
    pictures = cfgsim.render_result(result)
    assert set(pictures) == {"grid", "tree", "heatmap-ssim"}
    assert all(isinstance(p, Image.Image) for p in pictures.values())


def readme_python_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    examples = readme_python_examples()
    assert examples, "the README's Python API section has no examples"
    monkeypatch.chdir(tmp_path)
    for code in examples:
        if "probe_checkpoints" in code:
            continue  # needs real checkpoints; covered by test_probe_checkpoints_on_demo_models
        exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("name", ["ssim", "phash", "psnr", "rmse"])
def test_a_metric_matrix_takes_pil_images_directly(name):
    from cfgsim.metrics import get_metric

    a, b = item_image(0, 1, (48, 48)), item_image(3, 1, (48, 48))
    metric = get_metric(name)
    assert np.allclose(metric.matrix([a, b, a]), metric.matrix(metric.prepare([a, b, a])))
