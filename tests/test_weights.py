"""The weight-space view on a tiny SD 1.x family of known lineage, built here.

Shapes and key names are the demo's tiny SD 1.x architecture (``cfgsim.standalone.demo``'s
configs, read through diffusers' own model classes); the weights are random per member, so the
truth is known: copies (fp16, bf16, EMA-pruned, diffusers folder, renamed .ckpt), a fine-tune, a
block-weighted merge with a different ratio in every block, an add-difference merge and two
unrelated roots.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from cfgsim.cli import main  # noqa: E402
from cfgsim.standalone import keymap  # noqa: E402
from cfgsim.standalone.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX  # noqa: E402
from cfgsim.standalone.demo import CLIP_CONFIG, UNET_CONFIG, VAE_CONFIG  # noqa: E402
from cfgsim.weights import WeightsInputError, compare_checkpoints  # noqa: E402
from cfgsim.weights.identity import DIFFERENT, IDENTICAL, UP_TO_PRECISION  # noqa: E402
from cfgsim.weights.keys import block_of  # noqa: E402

ADD_ALPHA = 0.7
TEXT_ALPHA = 0.3


# -- building the family ---------------------------------------------------------------------------


def _shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    clip = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in CLIP_CONFIG.items() if k != "architectures"}))
    return {
        "unet": {k: tuple(v.shape) for k, v in unet.state_dict().items()},
        "vae": {k: tuple(v.shape) for k, v in vae.state_dict().items()},
        "clip": {k: tuple(v.shape) for k, v in clip.state_dict().items() if not k.endswith("position_ids")},
    }


def _random(shapes, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {
        part: {
            k: torch.randn(s, generator=g) * 0.1 + (1.0 if k.endswith("norm.weight") else 0.0)
            for k, s in d.items()
        }
        for part, d in shapes.items()
    }


def _maps(parts):
    return {
        "unet": keymap.key_map(parts["unet"], keymap.unet_pairs(UNET_CONFIG), UNET_PREFIX),
        "vae": keymap.key_map(parts["vae"], keymap.vae_pairs(VAE_CONFIG), VAE_PREFIX),
        "clip": keymap.clip_key_map(parts["clip"]),
    }


def _ldm(parts, dtype=torch.float32) -> dict[str, torch.Tensor]:
    maps = _maps(parts)
    state = {}
    for part in ("unet", "vae", "clip"):
        state.update(keymap.to_ldm(parts[part], maps[part]))
    state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _blocks(parts) -> dict[str, dict[str, str]]:
    """{part: {diffusers key: merge block}} via the ldm name."""
    maps = _maps(parts)
    comp = {"unet": "unet", "vae": "vae", "clip": "text"}
    out = {}
    for part, m in maps.items():
        out[part] = {k: block_of(comp[part], v) for k, v in m.items()}
    out["unet"] = {k: ("OUT05" if b == "OUT" else b) for k, b in out["unet"].items()}
    return out


def _save(path: Path, state, metadata=None) -> Path:
    save_file(state, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family")
    shapes = _shapes()
    base, other, other2 = _random(shapes, 1), _random(shapes, 2), _random(shapes, 3)
    other["vae"] = base["vae"]  # roots share the VAE (most SD 1.x models carry the same one) …
    other2["vae"] = _random(shapes, 4)["vae"]  # … except this one
    g = torch.Generator().manual_seed(11)
    finetune = {
        p: {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in d.items()} for p, d in base.items()
    }
    finetune["vae"] = base["vae"]  # fine-tunes train the UNet and the text encoder
    blocks = _blocks(base)
    unet_blocks = sorted(set(blocks["unet"].values()))
    ratios = {b: round(0.1 + 0.8 * i / (len(unet_blocks) - 1), 4) for i, b in enumerate(unet_blocks)}
    ratios["BASE"] = TEXT_ALPHA
    ratios["VAE"] = 0.0
    mbw = {
        p: {k: (1 - ratios[blocks[p][k]]) * base[p][k] + ratios[blocks[p][k]] * other[p][k] for k in d}
        for p, d in base.items()
    }
    adddiff = {
        p: {k: other[p][k] + ADD_ALPHA * (finetune[p][k] - base[p][k]) for k in d} for p, d in base.items()
    }

    paths = {}
    ema = {
        "model_ema." + k[len("model.") :].replace(".", ""): v + 0.02
        for k, v in _ldm(base).items()
        if k.startswith(UNET_PREFIX)
    }
    ema["model_ema.num_updates"] = torch.tensor(1000)
    paths["base"] = _save(
        folder / "base.safetensors", {**_ldm(base), **ema}, {"format": "pt", "note": "original"}
    )
    paths["base-fp16"] = _save(folder / "base-fp16.safetensors", _ldm(base, torch.float16))
    paths["base-bf16"] = _save(folder / "base-bf16.safetensors", _ldm(base, torch.bfloat16))
    paths["base-pruned"] = _save(folder / "base-pruned.safetensors", _ldm(base), {"pruned": "yes"})
    torch.save(_ldm(base), folder / "my-favourite-model.ckpt")
    paths["renamed"] = folder / "my-favourite-model.ckpt"
    dif = folder / "base-diffusers"
    for sub, part, name in (
        ("unet", "unet", "diffusion_pytorch_model"),
        ("vae", "vae", "diffusion_pytorch_model"),
        ("text_encoder", "clip", "model"),
    ):
        (dif / sub).mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in base[part].items()}, str(dif / sub / f"{name}.safetensors"))
    paths["base-diffusers"] = dif
    paths["finetune"] = _save(folder / "finetune.safetensors", _ldm(finetune, torch.float16))
    paths["mbw"] = _save(folder / "mbw.safetensors", _ldm(mbw, torch.float16))
    paths["adddiff"] = _save(folder / "adddiff.safetensors", _ldm(adddiff, torch.float16))
    paths["other"] = _save(folder / "other.safetensors", _ldm(other, torch.float16))
    paths["other2"] = _save(folder / "other2.safetensors", _ldm(other2, torch.float16))
    vae_dir = folder / "vaes"
    vae_dir.mkdir()
    vae_ldm = {k[len(VAE_PREFIX) :]: v for k, v in _ldm(base).items() if k.startswith(VAE_PREFIX)}
    _save(vae_dir / "vae-ft-tiny.safetensors", vae_ldm)
    _save(
        vae_dir / "vae-other.safetensors",
        {k[len(VAE_PREFIX) :]: v for k, v in _ldm(other2).items() if k.startswith(VAE_PREFIX)},
    )
    return {"paths": paths, "ratios": ratios, "folder": folder, "vae_dir": vae_dir, "base": base}


@pytest.fixture(scope="module")
def copies(family):
    p = family["paths"]
    names = [
        "base",
        "base-fp16",
        "base-bf16",
        "base-pruned",
        "renamed",
        "base-diffusers",
        "finetune",
        "other",
    ]
    return compare_checkpoints([p[n] for n in names], vae_dir=family["vae_dir"])


# -- identity ----------------------------------------------------------------------------------------


def test_copies_share_the_base_fingerprints(copies):
    by_label = {s.label: s for s in copies.sources}
    base = by_label["base"].components
    assert set(base) == {"unet", "text", "vae"}
    for name in ("base-fp16", "base-pruned", "my-favourite-model", "base-diffusers"):
        for component in ("unet", "text", "vae"):
            assert by_label[name].components[component]["fingerprint"] == base[component]["fingerprint"], (
                name,
                component,
            )
    # Different weights, different fingerprints; the fine-tune shares only the VAE.
    assert by_label["finetune"].components["unet"]["fingerprint"] != base["unet"]["fingerprint"]
    assert by_label["finetune"].components["vae"]["fingerprint"] == base["vae"]["fingerprint"]
    assert by_label["base"].set_aside["EMA weights"] > 0


def test_identity_verdicts(copies):
    labels = copies.labels
    verdict = {(labels[p.a], labels[p.b], p.component): p.verdict for p in copies.identities}
    assert verdict[("base", "base-pruned", "unet")] == IDENTICAL
    assert verdict[("base", "my-favourite-model", "unet")] == IDENTICAL
    assert verdict[("base", "base-diffusers", "vae")] == IDENTICAL
    assert verdict[("base", "base-fp16", "unet")] == UP_TO_PRECISION
    assert verdict[("base", "base-bf16", "unet")] == UP_TO_PRECISION  # value by value, within bf16 rounding
    assert verdict[("base-fp16", "base-bf16", "text")] == UP_TO_PRECISION
    assert verdict[("base", "finetune", "unet")] == DIFFERENT
    assert verdict[("base", "other", "unet")] == DIFFERENT
    assert verdict[("base", "other", "vae")] == UP_TO_PRECISION  # fp32 vs fp16 file, one VAE
    assert verdict[("finetune", "other", "vae")] == IDENTICAL  # both fp16
    lines = copies.identity_lines()
    unet = next(line for line in lines if line.startswith("UNet"))
    for name in ("base", "base-fp16", "base-bf16", "base-pruned", "my-favourite-model", "base-diffusers"):
        assert name in unet
    assert "finetune" not in unet and "other" not in unet
    vae = next(line for line in lines if line.startswith("VAE"))
    assert "identical to vae-ft-tiny" in vae and "vae-other" not in vae


def test_similarity_matrix_and_result(copies):
    result = copies.result()
    assert set(result.scores) == {"weights-unet", "weights-text", "weights-vae"}
    m = result.scores["weights-unet"].per_row[0]
    labels = result.labels
    i, f, o = labels.index("base"), labels.index("finetune"), labels.index("other")
    assert m[i, labels.index("base-fp16")] > 0.99999
    assert 0.9 < m[i, f] < 0.9999
    assert abs(m[i, o]) < 0.2
    assert result.lineage is not None
    # The lineage puts the base's copies in one clade, apart from the unrelated root.
    assert result.cells == [] and len(result.rows) == 1


def test_weights_result_is_not_a_probe(copies):
    from cfgsim.result import ProbeResult

    result = copies.result()
    assert result.kind == "weights"
    data = result.to_dict()
    assert data["kind"] == "weights" and data["is_probe"] is False and data["schema_version"] == 2
    back = ProbeResult.from_dict(json.loads(json.dumps(data)))
    assert back.kind == "weights" and back.to_dict()["is_probe"] is False
    # Documents written before the field existed are probe results.
    del data["kind"]
    assert ProbeResult.from_dict(data).kind == "probe"


# -- recipes -------------------------------------------------------------------------------------------


def test_block_weighted_merge_recovered_per_block(family):
    p = family["paths"]
    report = compare_checkpoints(
        [p["base"], p["other"], p["mbw"]], recipe_target=p["mbw"], recipe_parents=[p["base"], p["other"]]
    )
    by_component = {r.component: r for r in report.recipes}
    assert set(by_component) == {"unet", "text", "vae"}
    errors = {}
    assert by_component["unet"].block_weighted  # one ratio per block, no single overall ratio
    assert "block-weighted weighted sum of base, other" in by_component["unet"].summary(report.labels)
    assert not by_component["text"].block_weighted  # one block: 0.70·base + 0.30·other
    assert "0.70·base + 0.30·other" in by_component["text"].summary(report.labels)
    for component, recipe in by_component.items():
        assert recipe.explained
        for block, fit in recipe.blocks.items():
            if component == "vae":
                continue  # base and other share the VAE: any split is the same weights
            weight_of_other = fit.coefficients[fit.parents.index(1)]
            errors[block] = abs(weight_of_other - family["ratios"][block])
    assert len(errors) >= 12
    assert max(errors.values()) <= 0.02, errors


def test_add_difference_recovered(family):
    p = family["paths"]
    report = compare_checkpoints(
        [p["other"], p["finetune"], p["base"], p["adddiff"]],
        recipe_target=p["adddiff"],
        recipe_parents=[p["other"], p["finetune"], p["base"]],
    )
    unet = next(r for r in report.recipes if r.component == "unet")
    assert unet.overall.kind == "add difference"
    assert [report.labels[i] for i in unet.overall.parents] == ["other", "finetune", "base"]
    for block, fit in unet.blocks.items():
        assert abs(fit.coefficients[0] - ADD_ALPHA) <= 0.02, (block, fit.coefficients)
    assert "other + 0.70·(finetune − base)" in unet.summary(report.labels)


def test_unrelated_root_not_explained_and_search(family):
    p = family["paths"]
    report = compare_checkpoints(
        [p["base"], p["other"], p["other2"]],
        recipe_target=p["other2"],
        recipe_parents=[p["base"], p["other"]],
    )
    unet = next(r for r in report.recipes if r.component == "unet")
    assert not unet.explained
    assert "not explained by these parents" in unet.summary(report.labels)
    # Search mode: the merge's parents are found among the candidates.
    found = compare_checkpoints(
        [p["base"], p["other"], p["other2"], p["finetune"], p["mbw"]], recipe_target=p["mbw"]
    )
    unet = next(r for r in found.recipes if r.component == "unet")
    assert sorted(found.labels[i] for i in unet.overall.parents) == ["base", "other"]


def test_reference_mode_recipes_and_pictures(family, tmp_path):
    p = family["paths"]
    report = compare_checkpoints(
        [p["base"], p["other"], p["mbw"], p["finetune"]], reference=p["base"], base=p["base"]
    )
    targets = {report.labels[r.target] for r in report.recipes}
    assert targets == {"other", "mbw", "finetune"}
    assert "weights-unet-delta" in report.result().scores
    images = report.images()
    assert {"heatmap-weights-unet", "blocks", "blocks-delta"} <= set(images)
    assert all(im.width > 100 and im.height > 100 for im in images.values())
    data = json.loads(report.to_json())
    assert data["reference"] == "base" and data["recipes"]
    rows = report.to_csv().splitlines()
    assert rows[0].startswith("a,b,component,block,cosine")
    assert any(",IN01," in r for r in rows)


def test_rank_agreement_with_image_scores(family):
    from cfgsim.host import Checkpoint
    from cfgsim.result import MetricScores, ProbeResult
    from cfgsim.spec import ProbeSpec

    p = family["paths"]
    report = compare_checkpoints([p["base"], p["finetune"], p["mbw"], p["other"]])
    w = report.result().scores["weights-unet"].per_row[0]
    labels = report.result().labels

    def image_result(matrix):
        items = [Checkpoint(name=f"{x}.safetensors", label=x) for x in labels]
        return ProbeResult(
            ProbeSpec(), items, [1337], scores={"ssim": MetricScores("ssim", "SSIM", per_row=[matrix])}
        )

    # Image scores that order the pairs as the weights do (any monotone map): ρ = 1 over 6 pairs.
    same = report.agree_with(image_result(np.tanh(w) * 0.5 + 0.3))
    unet = next(a for a in same if a.weights_metric == "weights-unet")
    assert (unet.pairs, unet.image_metric) == (6, "ssim") and unet.rho == pytest.approx(1.0)
    # Reversed order: ρ = −1, and the text says so.
    unet = next(a for a in report.agree_with(image_result(-w)) if a.weights_metric == "weights-unet")
    assert unet.rho == pytest.approx(-1.0)
    assert "Spearman ρ = -1.000 over 6 pairs" in report.text()


# -- bad input -----------------------------------------------------------------------------------------


def test_truncated_safetensors(family, tmp_path):
    data = family["paths"]["finetune"].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsInputError, match=r"cut\.safetensors: damaged safetensors file"):
        compare_checkpoints([bad])


def test_header_lies_about_sizes(tmp_path):
    header = json.dumps(
        {
            "model.diffusion_model.input_blocks.0.0.weight": {
                "dtype": "F32",
                "shape": [64, 64],
                "data_offsets": [0, 64],
            }
        }
    ).encode()
    bad = tmp_path / "liar.safetensors"
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64)
    with pytest.raises(WeightsInputError, match=r"liar\.safetensors: damaged safetensors file"):
        compare_checkpoints([bad])


def test_ckpt_needing_pickle_globals_is_refused(tmp_path):
    import argparse

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(2)}, "args": argparse.Namespace(a=1)}, bad)
    with pytest.raises(WeightsInputError, match=r"evil\.ckpt: refused: this \.ckpt needs more than tensors"):
        compare_checkpoints([bad])


def test_lora_is_recognised(tmp_path):
    lora = tmp_path / "style-lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(lora),
    )
    with pytest.raises(
        WeightsInputError,
        match=r"style-lora\.safetensors: a LoRA / LyCORIS network \(1 modules\), not a checkpoint",
    ):
        compare_checkpoints([lora])


def test_sdxl_keyed_file_is_compared_on_shared_components_only(family, tmp_path):
    """An SDXL-keyed file (second text encoder, another UNet) beside SD 1.x: VAE and CLIP-L compared."""
    base = _ldm(family["base"])
    xl = {k: v for k, v in base.items() if k.startswith(VAE_PREFIX)}
    xl.update(
        {
            "conditioner.embedders.0.transformer.text_model." + k[len(CLIP_PREFIX) :]: v
            for k, v in base.items()
            if k.startswith(CLIP_PREFIX) and "position_ids" not in k
        }
    )
    xl["conditioner.embedders.1.model.ln_final.weight"] = torch.ones(1280)
    xl["conditioner.embedders.1.model.token_embedding.weight"] = torch.randn(10, 1280)
    xl[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.randn(320, 4, 3, 3)
    xl[UNET_PREFIX + "label_emb.0.0.weight"] = torch.randn(1280, 2816)
    path = _save(tmp_path / "xl.safetensors", xl)
    report = compare_checkpoints([family["paths"]["base"], path])
    assert report.sources[1].architecture == "sdxl"
    assert any("mixed architectures" in n and "not across all: UNet" in n for n in report.notes), report.notes
    m = report.result().scores
    assert np.isnan(m["weights-unet"].per_row[0][0, 1]) if "weights-unet" in m else True
    assert m["weights-vae"].per_row[0][0, 1] == pytest.approx(1.0)
    assert m["weights-text"].per_row[0][0, 1] == pytest.approx(1.0)
    verdicts = {(p.component): p.verdict for p in report.identities}
    assert verdicts == {"text": IDENTICAL, "vae": IDENTICAL}


def test_not_a_model_and_missing_file(tmp_path):
    other = _save(tmp_path / "random.safetensors", {"foo.weight": torch.zeros(3)})
    with pytest.raises(WeightsInputError, match=r"random\.safetensors: no UNet, text encoder or VAE weights"):
        compare_checkpoints([other])
    with pytest.raises(WeightsInputError, match=r"nothere\.safetensors: no such file"):
        compare_checkpoints([tmp_path / "nothere.safetensors"])


# -- the command line ----------------------------------------------------------------------------------


def test_cli_writes_outputs(family, tmp_path, capsys):
    p = family["paths"]
    out = tmp_path / "out"
    code = main(
        ["weights", "-q", str(p["base"]), str(p["base-fp16"]), str(p["other"]), str(p["mbw"]),
         "--recipe", str(p["mbw"]), "--parents", str(p["base"]), str(p["other"]),
         "--json", str(tmp_path / "w.json"), "--csv", str(tmp_path / "w.csv"), "--out", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "mbw ≈" in text and "UNet: base = base-fp16 (identical up to precision)" in text
    assert (out / "heatmap-weights-unet.png").is_file() and (out / "result.json").is_file()
    assert any(f.name.startswith("recipe-mbw") for f in out.iterdir())
    from cfgsim.api import read_result

    assert read_result(out / "result.json").labels == ["base", "base-fp16", "other", "mbw"]
    assert json.loads((tmp_path / "w.json").read_text())["schema"] == "cfgsim.weights-report"


@pytest.mark.parametrize("kind", ["lora", "truncated", "pickle"])
def test_cli_bad_input_exit_2(tmp_path, capsys, family, kind):
    import argparse

    if kind == "lora":
        bad = _save(
            tmp_path / "x.safetensors",
            {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(2, 2)},
        )
    elif kind == "truncated":
        bad = tmp_path / "x.safetensors"
        bad.write_bytes(family["paths"]["other"].read_bytes()[:5000])
    else:
        bad = tmp_path / "x.ckpt"
        torch.save({"a": argparse.Namespace()}, bad)
    code = main(["weights", "-q", str(family["paths"]["base"]), str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(bad) in err[0], err


def test_light_finetune_is_close_but_not_a_copy(family, tmp_path):
    """Within 1 % of the base, the pair is checked value by value: a real change is "different"."""
    base = family["base"]
    g = torch.Generator().manual_seed(5)
    light = {
        p: {k: v + 0.0005 * torch.randn(v.shape, generator=g) for k, v in d.items()} for p, d in base.items()
    }
    path = _save(tmp_path / "light.safetensors", _ldm(light))
    report = compare_checkpoints([family["paths"]["base"], path])
    unet = next(p for p in report.identities if p.component == "unet")
    assert unet.verdict == DIFFERENT and unet.relative_l2 < 0.01
    assert unet.max_abs_diff is not None and unet.max_abs_diff > 1e-3
    assert "close but not a copy" in unet.detail


def test_progress_can_stop_the_pass(family):
    class Stop(Exception):
        pass

    calls = []

    def progress(fraction, what):
        calls.append((fraction, what))
        if len(calls) == 5:
            raise Stop

    with pytest.raises(Stop):
        compare_checkpoints([family["paths"]["base"], family["paths"]["other"]], progress=progress)
    assert 0 < calls[-1][0] < 1 and calls[0][1].startswith("unet ")
    assert [t.name for t in threading.enumerate() if t.name.startswith("cfgsim-weights")] == []


def test_reading_error_in_the_background_reaches_the_caller(family, tmp_path):
    """A file cut short after it was opened: the reader thread's error is raised by the pass."""
    import shutil

    from cfgsim.weights.gram import gram_pass
    from cfgsim.weights.source import open_source

    path = tmp_path / "cut.safetensors"
    shutil.copy(family["paths"]["other"], path)
    sources = [open_source(family["paths"]["base"]), open_source(path)]
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with pytest.raises(WeightsInputError, match="ends early"):
        gram_pass(sources, budget=1 << 16)  # small slices: many in flight when it fails
    assert [t.name for t in threading.enumerate() if t.name.startswith("cfgsim-weights")] == []


def test_small_budget_gives_the_same_matrices(family):
    from cfgsim.weights.gram import gram_pass
    from cfgsim.weights.source import open_source

    paths = [family["paths"][k] for k in ("base", "other", "finetune")]
    big = gram_pass([open_source(p) for p in paths])
    small = gram_pass([open_source(p) for p in paths], budget=1 << 16)
    assert big.fingerprint == small.fingerprint and big.exact == small.exact
    for block, g in big.gram.items():
        np.testing.assert_allclose(small.gram[block], g, rtol=1e-5)  # float32 sub-chunk sums


def test_block_chart_draws_and_refuses_bad_input():
    from cfgsim.errors import InputError
    from cfgsim.render.blocks import render_block_chart

    blocks = ["BASE", "IN00", "IN01", "M00", "OUT00", "VAE"]
    image = render_block_chart(
        blocks,
        {"a": [1.0, 0.9, float("nan"), 0.5, 0.4, 1.0], "b": [0.2] * 6},
        title="Per-block",
        y_label="cosine",
        residuals=[0.0, 0.01, 0.02, 0.05, 0.2, 0.0],
    )
    assert image.width > 300 and image.height > 300
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert (0, 114, 178) in colours and (230, 159, 0) in colours  # both series drawn
    with pytest.raises(InputError, match="series 'a' has 2 values for 6 blocks"):
        render_block_chart(blocks, {"a": [1.0, 2.0]}, title="x")
    with pytest.raises(InputError, match="no blocks"):
        render_block_chart([], {}, title="x")


def test_readme_example_runs(family, monkeypatch, tmp_path):
    """The README's weight-space example, on this family's files (it names a.safetensors … c.ckpt)."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Weight-space view", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    p = family["paths"]
    monkeypatch.chdir(tmp_path)
    for name, source in (("a.safetensors", p["base"]), ("b.safetensors", p["mbw"]), ("c.ckpt", p["renamed"])):
        (tmp_path / name).symlink_to(source)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    report = scope["report"]
    assert report.reference == 0 and "heatmap-weights-unet" in report.images()
    assert any("a = c" in line for line in report.identity_lines())


def test_search_with_copies_among_the_candidates(family):
    """Two copies of one parent among the candidates: no add difference of a model with itself."""
    p = family["paths"]
    report = compare_checkpoints([p["base"], p["base-fp16"], p["other"], p["mbw"]], recipe_target=p["mbw"])
    text = next(r for r in report.recipes if r.component == "text")
    parents = {report.labels[i] for i in text.overall.parents}
    assert text.explained and "other" in parents and parents & {"base", "base-fp16"}


def test_diffusers_single_file_and_diffusers_vae(family, tmp_path):
    """One file with unet./text_encoder./vae. prefixes, and a diffusers-layout VAE in --vae-dir."""
    base = family["base"]
    single = {
        f"{prefix}{k}": v.half()
        for prefix, part in (("unet.", "unet"), ("text_encoder.", "clip"), ("vae.", "vae"))
        for k, v in base[part].items()
    }
    path = _save(tmp_path / "diffusers-single.safetensors", single)
    vaes = tmp_path / "vaes"
    vaes.mkdir()
    _save(vaes / "diffusers-vae.safetensors", {k: v.contiguous() for k, v in base["vae"].items()})
    report = compare_checkpoints([family["paths"]["base"], path], vae_dir=vaes)
    assert report.sources[1].layout == "diffusers"
    for c in ("unet", "text", "vae"):
        assert (
            report.sources[0].components[c]["fingerprint"] == report.sources[1].components[c]["fingerprint"]
        )
    assert (
        report.sources[2].components["vae"]["fingerprint"]
        == report.sources[0].components["vae"]["fingerprint"]
    )
    assert any(
        line.startswith("VAE:") and "identical to diffusers-vae" in line for line in report.identity_lines()
    )
