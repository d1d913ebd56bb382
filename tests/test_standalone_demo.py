"""``cfgsim demo``: the tiny model family is built offline, written in the WebUI's layout with its
configs, probed by the real runner, and its scores show the lineage (reduced steps and size to stay
fast; the default run is 512x512, 256 steps)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from cfgsim.cli import main
from cfgsim.standalone.checkpoint import (
    detect_architecture,
    read_safetensors_header,
)
from cfgsim.standalone.configs import load_config_dir
from cfgsim.standalone.demo import DEMO_MODELS, run_demo

SEEDS = (1337, 42, 7)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result, written = run_demo(out, steps=16, size=128, seeds=SEEDS, quiet=True)
    return out, result, written


def test_lineage_order_per_seed(demo_run):
    """Fine-tune closest to the base, then the merge, then both unrelated models — for every seed."""
    _, result, _ = demo_run
    assert result.labels == list(DEMO_MODELS)
    scores = result.scores["ssim"]
    for row, seed in enumerate(result.rows):
        by_label = dict(zip(result.labels, scores.vs_reference[row], strict=True))
        assert math.isnan(by_label["base"])
        unrelated = max(by_label["unrelated"], by_label["unrelated-2"])
        assert by_label["finetune"] > 0.9, seed
        assert by_label["finetune"] > by_label["merge"] > unrelated + 0.03, (seed, by_label)


def test_demo_outputs(demo_run):
    _, result, written = demo_run
    assert {"grid", "json", "csv"} <= set(written) and written["grid"].is_file()
    assert len([k for k in written if k.startswith("cell:")]) == len(DEMO_MODELS) * len(SEEDS)
    assert result.host == "standalone" and not result.failures
    # The preset's settings that the demo changed are recorded as deviations.
    labels = {label for label, _, _ in result.deviations}
    assert {"Steps", "Size"} <= labels


def test_demo_checkpoints_are_webui_files(demo_run):
    out, _, _ = demo_run
    config = load_config_dir(out / "config")
    for name in DEMO_MODELS:
        path = out / "models" / f"{name}.safetensors"
        keys = read_safetensors_header(path)
        assert detect_architecture(keys) == "sd1"
        assert "model.diffusion_model.input_blocks.0.0.weight" in keys
        assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in keys
        yaml = (out / "models" / f"{name}.yaml").read_text()
        assert "target: ldm.models.diffusion.ddpm.LatentDiffusion" in yaml
        assert "FrozenCLIPEmbedder" in yaml and "context_dim: 32" in yaml
    # The yaml's CLIP "version" folder holds what the WebUI's FrozenCLIPEmbedder loads.
    version = yaml.split("version:", 1)[1].strip().strip('"')
    assert version == str((config.text_encoder_dir).resolve())
    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (config.text_encoder_dir / name).is_file()


def test_demo_command(tmp_path, capsys):
    code = main(["-q", "demo", "--out", str(tmp_path / "d"), "--steps", "2", "--size", "64"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "finetune" in printed and "unrelated-2" in printed and "grid.png" in printed


def test_text_encoders_do_not_average_to_zero():
    """A1111's "Original" emphasis rescales the text encoder's output by original_mean / new_mean
    (modules/sd_emphasis.py, EmphasisOriginal.after_transformers): an output averaging to exactly
    zero — what fresh LayerNorms (weight 1, bias 0) gave the demo's merge — turns into NaN there and
    the WebUI refuses the image. Every demo text encoder must stay clear of that."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from cfgsim.standalone.demo import CLIP_CONFIG, family_weights

    config = CLIPTextConfig(**{k: v for k, v in CLIP_CONFIG.items() if k != "architectures"})
    ids = torch.tensor([[49406] + [49407] * 76])  # the empty prompt: BOS, then EOS padding
    for name, parts in family_weights().items():
        model = CLIPTextModel(config)
        model.load_state_dict(parts["clip"], strict=False)
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[-2]
            z = getattr(model, "text_model", model).final_layer_norm(hidden)  # transformers 4 | 5
        assert abs(float(z.float().mean())) > 1e-3, name
