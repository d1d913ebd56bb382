"""The CLIP metric without network and without cached weights: one clear error, at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("open_clip")


def test_offline_without_cached_weights_fails_fast_once_naming_the_model(tmp_path, monkeypatch):
    from cfgsim.errors import ModelLoadError
    from cfgsim.metrics.clip import ClipMetric, hub_reachable

    if hub_reachable(timeout=2):
        pytest.skip("the model hub is reachable here; this test is about working offline")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        ClipMetric(model="ViT-B-32", pretrained="laion2b_s34b_b79k").load()
    elapsed = time.perf_counter() - started
    text = str(info.value)
    assert "ViT-B-32" in text and "laion2b_s34b_b79k" in text and "cannot be reached" in text
    assert "--clip-pretrained FILE" in text
    assert elapsed < 15, elapsed


def test_the_command_line_says_it_once(tmp_path):
    from cfgsim.metrics.clip import hub_reachable

    if hub_reachable(timeout=2):
        pytest.skip("the model hub is reachable here; this test is about working offline")
    from PIL import Image

    for k in range(2):
        Image.new("RGB", (64, 64), (k * 90, 20, 20)).save(tmp_path / f"{k}.png")
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "cfgsim", "compare", str(tmp_path / "0.png"), str(tmp_path / "1.png"),
         "--metrics", "clip", "--out", str(tmp_path / "g.png")],
        check=False, capture_output=True, text=True,
        env={"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be reached" in lines[0], run.stderr
    assert time.perf_counter() - started < 60
