"""``StandaloneHost`` in the shared run loop and ``cfgsim probe``: real (tiny) checkpoints, skipped and
failed columns with their reasons, configuration errors, the reference image's settings, and the
import guarantee (``cfgsim`` and the standalone commands load without torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from cfgsim.cli import main  # noqa: E402
from cfgsim.errors import InputError  # noqa: E402
from cfgsim.host import Host  # noqa: E402
from cfgsim.infotext import Infotext  # noqa: E402
from cfgsim.probe import run_probe  # noqa: E402
from cfgsim.result import FAILED, OK, SKIPPED, Reference  # noqa: E402
from cfgsim.spec import ProbeSpec  # noqa: E402
from cfgsim.standalone.configs import find_cached_config, resolve_config  # noqa: E402
from cfgsim.standalone.demo import build_family  # noqa: E402
from cfgsim.standalone.host import StandaloneHost  # noqa: E402
from cfgsim.standalone.pipeline import generate, load_models, load_tokenizer  # noqa: E402

SMALL = ProbeSpec(steps=4, width=64, height=64)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_family(tmp_path_factory.mktemp("family"))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """An SD 2.x-keyed file, a damaged file and a diffusers-layout UNet file."""
    root = tmp_path_factory.mktemp("odd")
    sd2 = root / "sd2-model.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
            "cond_stage_model.model.ln_final.weight": torch.zeros(1024),
        },
        str(sd2),
    )
    broken = root / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint" * 100)
    diffusers_file = root / "diffusers-unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(32, 4, 3, 3)}, str(diffusers_file))
    return sd2, broken, diffusers_file


def test_host_implements_the_interface(family):
    host = StandaloneHost(family.checkpoints[:1], config_dir=family.config_dir, quiet=True)
    assert isinstance(host, Host)
    (checkpoint,) = host.checkpoints()
    assert checkpoint.label == "base" and checkpoint.architecture == "sd1" and len(checkpoint.model_hash) == 8
    env = host.environment()
    assert env["randn_source"] == "CPU" and env["precision"] == "fp32" and env["device"] == "cpu"


def test_run_probe_with_skipped_and_failed_columns(family, odd_files):
    sd2, broken, diffusers_file = odd_files
    paths = [family.checkpoints[0], family.checkpoints[1], sd2, broken, diffusers_file]
    host = StandaloneHost(paths, config_dir=family.config_dir, quiet=True)
    from cfgsim.compare import build_metrics

    result = run_probe(
        host,
        host.checkpoints(),
        SMALL,
        metrics=build_metrics(["ssim"]),
        reference=Reference("item", 0, "base"),
    )
    cells = {result.items[c.item].label: c for c in result.cells}
    assert cells["base"].status == OK and cells["sd2-model"].status == SKIPPED
    assert "SD 2.x" in cells["sd2-model"].reason
    assert cells["broken"].status == FAILED and "not a safetensors file" in cells["broken"].reason
    assert cells["diffusers-unet"].status == FAILED and "original layout" in cells["diffusers-unet"].reason
    score = result.scores["ssim"].reference_mean[1]
    assert 0.9 < score < 1.0
    info = Infotext.parse(cells["base"].infotext)
    assert info.params["Model"] == "base" and info.params["RNG"] == "CPU"
    assert ProbeSpec.from_infotext(info).replace(extra=()) == SMALL.replace(extra=())


def test_host_image_is_the_pipeline_image_and_deterministic(family):
    host = StandaloneHost(family.checkpoints[:1], config_dir=family.config_dir, quiet=True)
    (checkpoint,) = host.checkpoints()
    first = np.asarray(host.generate(checkpoint, SMALL, 7).image)
    again = np.asarray(host.generate(checkpoint, SMALL, 7).image)
    assert first.shape == (64, 64, 3) and np.array_equal(first, again)
    models = load_models(family.checkpoints[0], host.config, tokenizer=load_tokenizer(host.config))
    assert np.array_equal(first, np.asarray(generate(models, SMALL, 7)))
    nv = np.asarray(generate(models, SMALL, 7, rng="nv"))
    assert not np.array_equal(first, nv)


def test_ddim_preset_runs(family):
    host = StandaloneHost(family.checkpoints[:1], config_dir=family.config_dir, quiet=True)
    spec = ProbeSpec(sampler="DDIM", negative_prompt="", steps=5, width=64, height=64)
    image = host.generate(host.checkpoints()[0], spec, 1).image
    assert image.size == (64, 64)


def test_missing_config_is_a_clear_error(tmp_path, family):
    with pytest.raises(InputError, match="--config-dir"):
        StandaloneHost(family.checkpoints[:1], config_dir=tmp_path / "nowhere")
    # Offline, with an empty hub cache: say what to provide.
    assert find_cached_config(tmp_path / "empty-cache") is None
    with pytest.raises(InputError, match="--config-dir DIR"):
        resolve_config(None, cache_dir=tmp_path / "empty-cache")
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"vae/config\.json.*tokenizer/vocab\.json"):
        resolve_config(partial)


def test_config_is_found_in_the_hub_cache(tmp_path, family):
    """A cached stable-diffusion-v1-5 snapshot (configs only) is used when --config-dir is not given."""
    import shutil

    repo = tmp_path / "models--stable-diffusion-v1-5--stable-diffusion-v1-5"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(family.config_dir, repo / "snapshots" / ("0" * 40))
    found = find_cached_config(tmp_path)
    assert found is not None and (found / "unet" / "config.json").is_file()
    assert resolve_config(None, cache_dir=tmp_path).source.startswith("Hugging Face cache")


def test_host_argument_errors(family):
    with pytest.raises(InputError, match="no such file"):
        StandaloneHost([family.root / "missing.safetensors"], config_dir=family.config_dir)
    with pytest.raises(InputError, match="--rng gpu"):
        StandaloneHost(family.checkpoints[:1], config_dir=family.config_dir, device="cpu", rng="gpu")


def _reference_png(path: Path, infotext: str) -> Path:
    info = PngInfo()
    info.add_text("parameters", infotext)
    Image.new("RGB", (64, 64), (120, 90, 200)).save(path, pnginfo=info)
    return path


def test_cli_probe_with_reference_settings(family, tmp_path, capsys):
    """The reference image's infotext sets the probe (here a small, quick one); the differences from the
    preset are printed and recorded."""
    ref = _reference_png(
        tmp_path / "ref.png",
        "Negative prompt: (bad:0)\n"
        "Steps: 3, Sampler: Euler, CFG scale: 1, Seed: 5, Size: 64x64, Clip skip: 2, RNG: NV",
    )
    out = tmp_path / "out"
    args = ["-q", "probe", *map(str, family.checkpoints[:2]), "--config-dir", str(family.config_dir)]
    code = main([*args, "--reference", str(ref), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "Steps" in printed and "note:" in printed
    document = json.loads((out / "result.json").read_text())
    assert document["spec"]["steps"] == 3 and document["spec"]["seeds"] == [5]
    assert document["environment"]["randn_source"] == "NV"  # from the reference's "RNG: NV"
    assert ["Steps", "256", "3"] in document["deviations"]
    assert (out / "grid.png").is_file()


def test_cli_probe_errors(family, tmp_path, capsys):
    code = main(["probe", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    code = main(
        ["probe", str(family.checkpoints[0]), "--config-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]
    )
    assert code == 2 and "--config-dir" in capsys.readouterr().err
    ref = _reference_png(
        tmp_path / "cfg7.png", "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    )
    code = main(["probe", str(family.checkpoints[0]), "--reference", str(ref), "--out", str(tmp_path / "o")])
    assert code == 2 and "CFG 1 probe only" in capsys.readouterr().err
    code = main(["probe", str(family.checkpoints[0]), "--reference-index", "1", "--out", str(tmp_path / "o")])
    assert code == 2 and "--reference-index 1: there are 1 checkpoints" in capsys.readouterr().err


def test_imports_without_torch():
    """``cfgsim`` (its CLI parser included) and the standalone commands import with torch, diffusers and
    transformers unavailable; the commands fail only when run, with the install hint."""
    code = """
import sys
for name in ("torch", "diffusers", "transformers", "safetensors"):
    sys.modules[name] = None  # makes "import name" raise ImportError
import cfgsim.standalone, cfgsim.standalone.commands, cfgsim.standalone.checkpoint
import cfgsim.standalone.configs, cfgsim.standalone.noise, cfgsim.standalone.schedule
import cfgsim.standalone.keymap, cfgsim.standalone.tokenizer, cfgsim.standalone.host
from cfgsim.cli import build_parser, main
build_parser().parse_args(["demo"])
assert main(["demo", "--out", "unused"]) == 2
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and "cfgsim[standalone]" in done.stderr


def test_checkpoint_schedule_buffer_is_used(family, tmp_path):
    """Like the WebUI (which loads the file's ldm buffers over its own), a file's alphas_cumprod wins."""
    from safetensors.torch import load_file

    from cfgsim.standalone.schedule import alphas_cumprod

    state = load_file(str(family.checkpoints[0]))
    changed = alphas_cumprod().half().float()  # e.g. a file saved with fp16 buffers
    state["alphas_cumprod"] = changed
    path = tmp_path / "with-buffers.safetensors"
    save_file(state, str(path))
    host = StandaloneHost([path], config_dir=family.config_dir, quiet=True)
    models = load_models(path, host.config, tokenizer=load_tokenizer(host.config))
    assert torch.equal(models.schedule.alphas_cumprod, changed)
    plain = load_models(family.checkpoints[0], host.config, tokenizer=load_tokenizer(host.config))
    assert torch.equal(plain.schedule.alphas_cumprod, alphas_cumprod())


def test_ctrl_c_ends_the_run_with_what_was_done(family, monkeypatch):
    from cfgsim.host import ProbeInterrupted
    from cfgsim.standalone import pipeline

    host = StandaloneHost(family.checkpoints[:2], config_dir=family.config_dir, quiet=True)
    checkpoints = host.checkpoints()
    first = host.generate(checkpoints[0], SMALL, 1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "generate_batch", interrupted)
    with pytest.raises(ProbeInterrupted):
        host.generate(checkpoints[1], SMALL, 1)
    assert host.interrupted() and first.image.size == (64, 64)


def test_config_that_does_not_fit_the_checkpoint(family, tmp_path):
    """A configuration of another architecture: the column fails with the tensor that does not fit."""
    import shutil

    from cfgsim.host import CheckpointLoadError

    config_dir = tmp_path / "other-config"
    shutil.copytree(family.config_dir, config_dir)
    unet = json.loads((config_dir / "unet" / "config.json").read_text())
    unet["block_out_channels"] = [32, 64, 64]
    (config_dir / "unet" / "config.json").write_text(json.dumps(unet))
    host = StandaloneHost(family.checkpoints[:1], config_dir=config_dir, quiet=True)
    with pytest.raises(CheckpointLoadError, match="does not match the model configuration"):
        host.generate(host.checkpoints()[0], SMALL, 1)
