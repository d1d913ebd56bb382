"""The full demo family: recipes written as files the way a user meets them (EMA-carrying base, fp16
and pruned copies), a truth that matches the recipes in weight space, and a probe that recovers it
(reduced size, a few seeds); ``cfgsim probe`` finds the demo's config beside its checkpoints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from cfgsim.cli import main
from cfgsim.errors import InputError
from cfgsim.standalone.checkpoint import detect_architecture, read_safetensors_header
from cfgsim.standalone.demo import (
    DEMO_FAMILIES,
    DEMO_MODELS,
    REDUCED_SIZE,
    REDUCED_STEPS,
    build_family,
    demo_spec,
    family_weights,
    get_family,
    run_demo,
)
from cfgsim.standalone.keymap import key_map, unet_pairs

FULL = DEMO_FAMILIES["full"]
PROBE_SEEDS = (1, 2)


def _safetensors_meta(path):
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size)).get("__metadata__", {})


def _distance(a, b):
    """Weight-space distance of two members: RMS over UNet tensors of (a - b) / std(a), over the
    tensors that are random (constant ones, e.g. fresh norm weights, are the same in every model)."""
    total = []
    for key, value in a["unet"].items():
        scale = float(value.float().std()) if value.is_floating_point() and value.numel() > 1 else 0.0
        if scale > 0:
            total.append(float((a["unet"][key] - b["unet"][key]).float().pow(2).mean()) / scale**2)
    return math.sqrt(sum(total) / len(total))


def test_families_are_consistent():
    """Every name in a truth is a member; parents come from the family; merges weigh to 1."""
    assert get_family("small").names == DEMO_MODELS
    for spec in DEMO_FAMILIES.values():
        names = set(spec.names)
        assert len(names) == len(spec.names) and spec.reference in names
        truth = spec.truth
        mentioned = set().union(*truth.same_model, *truth.clades, truth.unrelated)
        mentioned |= set(truth.nearest) | set().union(*truth.nearest.values())
        mentioned |= {x for triple in truth.equally_related for x in triple}
        mentioned |= set(truth.merge_parents) | {p for pair in truth.merge_parents.values() for p in pair}
        assert mentioned <= names, mentioned - names
        for m in spec.members:
            assert set(m.parents) <= names and m.recipe
            if m.kind == "merge":
                assert math.isclose(sum(m.weights), 1.0)
    assert len(FULL.names) >= 12
    kinds = [m.kind for m in FULL.members]
    assert kinds.count("root") >= 3 and kinds.count("merge") >= 4 and kinds.count("copy") == 2


@pytest.mark.parametrize("weight_seed", [0, 3])
def test_truth_holds_in_weight_space(weight_seed):
    """The expected tree is what the recipes make: checked on the weights themselves, for the
    documented family and an independent draw."""
    w = family_weights("full", weight_seed=weight_seed)
    truth = FULL.truth
    names = FULL.names
    d = {(a, b): _distance(w[a], w[b]) for a in names for b in names if a != b}
    for group in truth.same_model:
        assert all(d[a, b] == 0 for a in group for b in group if a != b)
    for item, nearest in truth.nearest.items():
        best = min(d[item, b] for b in nearest if b != item)
        others = [d[item, b] for b in names if b not in nearest and b != item]
        assert best < 0.9 * min(others), item
    for clade in truth.clades:
        inside = max(d[a, b] for a in clade for b in clade if a != b)
        outside = min(d[a, b] for a in clade for b in names if b not in clade)
        assert inside < outside, clade
    for item, (near, far) in truth.merge_parents.items():
        assert d[item, near] < 0.5 * d[item, far], item
    for a, b, c in truth.equally_related:
        assert math.isclose(d[a, b], d[a, c], rel_tol=0.1), (a, b, c)
    # An independent draw really is independent.
    other = family_weights("full", weight_seed=weight_seed + 1)
    assert _distance(w["base"], other["base"]) > 1.0


def test_full_family_files(tmp_path):
    family = build_family(tmp_path, family="full")
    models = tmp_path / "models"
    assert [p.stem for p in family.checkpoints] == list(FULL.names)
    base, fp16, pruned = (read_safetensors_header(models / f"{n}.safetensors") for n in FULL.names[:3])
    ema = {k for k in base if k.startswith("model_ema.")}
    # ldm's LitEma naming: one entry per UNet parameter, dots removed, plus its bookkeeping.
    assert "model_ema.diffusion_modelinput_blocks00weight" in ema and "model_ema.decay" in ema
    unet_keys = [k for k in base if k.startswith("model.diffusion_model.")]
    assert len(ema) == len(unet_keys) + 2
    assert set(pruned) == set(base) - ema and set(fp16) == set(base)
    for name in FULL.names:
        path = models / f"{name}.safetensors"
        assert detect_architecture(read_safetensors_header(path)) == "sd1"
        meta = _safetensors_meta(path)
        assert meta["cfgsim_demo"] == name and meta["cfgsim_demo_family"] == "full"
        assert meta["cfgsim_demo_recipe"] == FULL.member(name).recipe
        assert (models / f"{name}.yaml").is_file()
    # Pruned: the same weights, a smaller file; fp16: half the bytes, the weights rounded.
    from safetensors.torch import load_file

    b, p, h = (load_file(models / f"{n}.safetensors") for n in ("base", "base-pruned", "base-fp16"))
    assert all(b[k].equal(p[k]) for k in p)
    assert (models / "base-pruned.safetensors").stat().st_size < (models / "base.safetensors").stat().st_size
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert b[key].dtype.is_floating_point and str(b[key].dtype) == "torch.float32"
    assert str(h[key].dtype) == "torch.float16" and float((h[key].float() - b[key]).abs().max()) < 1e-3
    # The EMA copy is not the model's weights (a loader that took it would draw another picture).
    ema_key = "model_ema.diffusion_modelinput_blocks00weight"
    assert not b[ema_key].equal(b[key]) and b[ema_key].shape == b[key].shape
    # Deterministic: the same weight seed gives the same files.
    again = build_family(tmp_path / "again", family="full")
    assert all(
        a.read_bytes() == c.read_bytes() for a, c in zip(family.checkpoints, again.checkpoints, strict=True)
    )


def test_ema_keys_map_to_the_unet():
    """The EMA names are the UNet's ldm names without dots (every UNet parameter has one)."""
    from cfgsim.standalone.demo import UNET_CONFIG, ema_state_dict

    w = family_weights("small")
    mapping = key_map(w["base"]["unet"], unet_pairs(UNET_CONFIG), "model.diffusion_model.")
    ldm = {mapping[k]: v for k, v in w["base"]["unet"].items()}
    ema = ema_state_dict(ldm, seed=0)
    for key, value in ldm.items():
        assert ema["model_ema." + key[len("model.") :].replace(".", "")].shape == value.shape


def test_unknown_family_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--family", "huge", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "huge" in err and "full" in err
    with pytest.raises(InputError, match="huge"):
        get_family("huge")


def test_reduced_spec():
    spec = demo_spec(reduced=True, seeds="1-8")
    assert (spec.width, spec.height, spec.steps) == (REDUCED_SIZE, REDUCED_SIZE, REDUCED_STEPS)
    assert spec.seeds == tuple(range(1, 9))
    assert demo_spec(reduced=True, size=64).width == 64
    assert demo_spec().steps == 256


@pytest.fixture(scope="module")
def full_probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result, _ = run_demo(out, family="full", reduced=True, seeds=PROBE_SEEDS, quiet=True, write=False)
    return result


@pytest.mark.slow
def test_probe_recovers_the_known_tree(full_probe):
    """Reduced probe (128x128, 16 steps), two seeds: copies are the same picture, each unambiguous
    nearest relative is found, clades hold on the mean SSIM matrix, merges lean to the heavier parent."""
    result = full_probe
    truth = FULL.truth
    assert result.labels == list(FULL.names) and not result.failures
    per_seed = np.stack(result.scores["ssim"].per_row)
    mean = per_seed.mean(axis=0)
    idx = {name: i for i, name in enumerate(result.labels)}

    def s(a, b):
        return mean[idx[a], idx[b]]

    for group in truth.same_model:
        for a in group:
            for b in group - {a}:
                assert per_seed[:, idx[a], idx[b]].min() >= 0.99, (a, b)
    assert truth.violations(result.labels, mean) == []
    for item, (near, far) in truth.merge_parents.items():
        assert s(item, near) > s(item, far) + 0.1, item
    # The check itself sees a wrong tree: swap ft2 and unrel2 in the labels.
    swapped = [{"ft2": "unrel2", "unrel2": "ft2"}.get(label, label) for label in result.labels]
    assert any("ft1" in line for line in truth.violations(swapped, mean))
    # The chain is closer to itself than to any merge or root.
    chain = ("base", "ft1", "ft2")
    weakest = min(s(a, b) for a in chain for b in chain if a != b)
    assert weakest > max(s(a, m) for a in chain for m in FULL.names if m.startswith(("merge-base", "unrel")))


@pytest.mark.slow
def test_demo_command_full_family(tmp_path, capsys):
    out = tmp_path / "d"
    code = main(["-q", "demo", "--family", "full", "--out", str(out), "--size", "64", "--steps", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "merge-base75-unrel25" in printed and "0.75 base + 0.25 unrel" in printed
    assert "copy of base" in printed
    assert sorted(p.stem for p in (out / "models").glob("*.safetensors")) == sorted(FULL.names)


@pytest.mark.slow
def test_probe_finds_the_demo_config_beside_its_checkpoints(tmp_path, capsys, monkeypatch):
    """Issue 8.4: `cfgsim probe cfgsim-demo/models/*.safetensors` works offline with no --config-dir."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    build_family(tmp_path / "demo")
    models = sorted((tmp_path / "demo" / "models").glob("*.safetensors"))[:2]
    out = tmp_path / "probe"
    code = main(["probe", *map(str, models), "--out", str(out), "--steps-override", "1", "--no-overlays"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "found beside the checkpoints" in printed and (out / "result.json").is_file()


def test_config_beside_checkpoints_is_found_only_when_complete(tmp_path):
    from cfgsim.standalone.configs import find_config_beside
    from cfgsim.standalone.demo import write_config_dir

    (tmp_path / "a" / "models").mkdir(parents=True)
    ckpt = tmp_path / "a" / "models" / "m.safetensors"
    ckpt.write_bytes(b"")
    assert find_config_beside([ckpt]) is None
    (tmp_path / "a" / "config" / "unet").mkdir(parents=True)  # incomplete: not taken
    assert find_config_beside([ckpt]) is None
    write_config_dir(tmp_path / "a" / "config")
    assert find_config_beside([ckpt]) == (tmp_path / "a" / "config").resolve()
    # A config folder in the checkpoints' own folder is found too; two different folders are not one.
    (tmp_path / "b").mkdir()
    other = tmp_path / "b" / "n.safetensors"
    other.write_bytes(b"")
    write_config_dir(tmp_path / "b" / "config")
    assert find_config_beside([other]) == (tmp_path / "b" / "config").resolve()
    assert find_config_beside([ckpt, other]) is None
