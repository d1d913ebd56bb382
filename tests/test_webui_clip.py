"""Issue 7: the CLIP metric in the WebUI — a weights file from Settings is read without running code
from it, and the model is loaded after the probe images are made, kept between runs, freed on a
setting.

open_clip is replaced by a small fake shaped like open-clip-torch 2.20 (the WebUIs' pin), whose
file loader is a plain ``torch.load`` that runs whatever a pickle says (torch < 2.6 defaults to
``weights_only=False``); a real open_clip would need a model download.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from test_script import cfgsim_json, run

from cfgsim.errors import ModelLoadError
from cfgsim.metrics import clip as clip_module
from cfgsim.metrics.clip import ClipMetric

torch = pytest.importorskip("torch", reason="the clip metric needs torch")


class TinyClip(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = torch.nn.Linear(3 * 8 * 8, 16)

    def encode_image(self, pixels):
        return self.visual(pixels.flatten(1))


def preprocess(image):
    arr = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@pytest.fixture
def fake_open_clip(monkeypatch):
    """open_clip with one model, "tiny"; records every model it builds (and with which weights)."""
    module = types.ModuleType("open_clip")
    module.created = []
    module.on_create = None

    def create_model_and_transforms(name, pretrained=None, device="cpu", **_):
        if name != "tiny":
            raise RuntimeError(f"Model config for {name} not found.")
        torch.manual_seed(0)
        model = TinyClip()
        if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
            # open-clip-torch 2.20's load_checkpoint: torch.load without weights_only.
            model.load_state_dict(torch.load(pretrained, map_location="cpu", weights_only=False))
        module.created.append(pretrained)
        if module.on_create is not None:
            module.on_create()
        return model.to(device), preprocess, preprocess

    module.create_model_and_transforms = create_model_and_transforms
    module.list_models = lambda: ["tiny"]
    module.list_pretrained_tags_by_model = lambda name: ["laion-test", "openai"] if name == "tiny" else []
    monkeypatch.setitem(sys.modules, "open_clip", module)
    yield module
    clip_module.release_cached_models()


class Payload:
    """A pickle that runs code when loaded: it writes a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_weights_file_that_needs_code_is_refused_without_running_it(fake_open_clip, tmp_path):
    marker = tmp_path / "ran.txt"
    weights = tmp_path / "clip.pt"
    state = TinyClip().state_dict()
    state["payload"] = Payload(str(marker))
    torch.save(state, weights)
    metric = ClipMetric(model="tiny", pretrained=str(weights), device="cpu")
    with pytest.raises(ModelLoadError, match=r"clip\.pt.*needs code to load.*safetensors"):
        metric.load()
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_plain_weights_files_load(fake_open_clip, tmp_path, suffix):
    torch.manual_seed(5)
    source = TinyClip()
    path = tmp_path / f"clip{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    metric = ClipMetric(model="tiny", pretrained=str(path), device="cpu")
    metric.load()
    assert torch.equal(metric._model.visual.weight, source.visual.weight)
    assert fake_open_clip.created == [None]  # built empty, filled by cfgsim's safe reader


def test_weights_that_do_not_fit_the_model_are_named(fake_open_clip, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=r"other\.pt.*do not fit open_clip model 'tiny'"):
        ClipMetric(model="tiny", pretrained=str(path), device="cpu").load()


def test_unknown_model_fails_before_any_image(fake_open_clip, webui, p):
    web = webui()
    web.opts.data["cfgsim_clip_model"] = "ViT-X-99"
    with pytest.raises(ModelLoadError, match="ViT-X-99"):
        run(web, p, ["base", "other"], metrics=["ssim", "clip"])
    assert web.received == []


def test_unknown_pretrained_tag_fails_before_any_image(fake_open_clip, webui, p):
    web = webui()
    web.opts.data["cfgsim_clip_model"] = "tiny"
    web.opts.data["cfgsim_clip_pretrained"] = "laion5b"
    with pytest.raises(
        ModelLoadError, match=r"no pretrained weights 'laion5b' for model 'tiny' \(known: laion-test"
    ):
        run(web, p, ["base", "other"], metrics=["ssim", "clip"])
    assert web.received == [] and fake_open_clip.created == []


def test_webui_loads_clip_after_generation_and_keeps_it_between_runs(fake_open_clip, webui, p):
    web = webui()
    web.opts.data["cfgsim_clip_model"] = "tiny"
    web.opts.data["cfgsim_clip_pretrained"] = "laion-test"
    images_made_at_load = []
    fake_open_clip.on_create = lambda: images_made_at_load.append(len(web.received))
    first = run(web, p, ["base", "other"], metrics=["ssim", "clip"])
    assert images_made_at_load == [2]  # after both probe images, not beside the model during them
    second = run(web, p, ["base", "other"], metrics=["ssim", "clip"])
    assert fake_open_clip.created == ["laion-test"]  # one load for both runs
    assert clip_module.cached_model_count() == 1
    assert cfgsim_json(first)["scores"]["clip"]["mean"] == cfgsim_json(second)["scores"]["clip"]["mean"]


def test_webui_frees_clip_after_the_run_when_set_so(fake_open_clip, webui, p):
    web = webui()
    web.opts.data["cfgsim_clip_model"] = "tiny"
    web.opts.data["cfgsim_clip_pretrained"] = "openai"
    web.opts.data["cfgsim_clip_keep_loaded"] = False
    run(web, p, ["base", "other"], metrics=["clip"])
    assert fake_open_clip.created and clip_module.cached_model_count() == 0
