"""Checkpoint files: the WebUI's hashes, safe loading (.safetensors, .ckpt weights-only, refusing code),
architecture detection from key names, and clear errors for files that are not checkpoints."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import save_file  # noqa: E402

from cfgsim.errors import InputError  # noqa: E402
from cfgsim.host import Checkpoint, CheckpointLoadError  # noqa: E402
from cfgsim.standalone.checkpoint import (  # noqa: E402
    CheckpointFileError,
    check_checkpoint_path,
    describe_checkpoint,
    detect_architecture,
    file_sha256,
    legacy_model_hash,
    load_state_dict,
    normalize_keys,
    read_safetensors_header,
    read_shapes,
)

UNET = "model.diffusion_model."
SD1_KEYS = {
    UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
    UNET + "out.2.weight": (4, 320, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
}


def sd1_tensors() -> dict[str, torch.Tensor]:
    return {k: torch.full(shape, float(i)) for i, (k, shape) in enumerate(SD1_KEYS.items())}


# -- hashes --------------------------------------------------------------------------------------


def test_legacy_hash_is_sha256_of_64k_at_1m(tmp_path):
    """A1111 ``sd_models.model_hash``: seek(0x100000), read(0x10000), sha256, first 8 hex digits."""
    data = os.urandom(0x100000 + 0x18000)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_legacy_hash_of_a_small_file_is_the_empty_hash(tmp_path):
    path = tmp_path / "tiny.ckpt"
    path.write_bytes(b"x" * 1000)
    assert legacy_model_hash(path) == "e3b0c442"  # sha256(b"")


# -- architecture --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (SD1_KEYS, "sd1"),
        (
            {
                UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
                "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
                "cond_stage_model.model.ln_final.weight": (1024,),
            },
            "sd2",
        ),
        (
            {
                UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
                "conditioner.embedders.1.model.ln_final.weight": (1280,),
            },
            "sdxl",
        ),
        ({"conditioner.embedders.0.model.ln_final.weight": (1280,)}, "sdxl-refiner"),
        ({"conditioner.embedders.0.model.ln_final.weight": (1024,)}, "sd2"),  # SD 2.1 Turbo (SGM format)
        ({UNET + "joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}, "sd3"),
        ({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "flux"),
        ({"down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}, "unknown"),  # a diffusers UNet file
        ({UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)}, "unknown"),  # a UNet without text encoder
        ({}, "unknown"),
    ],
)
def test_detect_architecture(keys, expected):
    assert detect_architecture(keys) == expected


def test_non_sd1_architectures_are_skipped_by_the_probe():
    assert Checkpoint("a", architecture="sd1").probe_skip_reason is None
    assert "SD 2" in Checkpoint("a", architecture="sd2").probe_skip_reason
    assert "SDXL" in Checkpoint("a", architecture="sdxl").probe_skip_reason


# -- reading -------------------------------------------------------------------------------------


def test_safetensors_header_and_load(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(sd1_tensors(), str(path))
    assert read_safetensors_header(path) == SD1_KEYS
    only = load_state_dict(path, prefixes=(UNET,))
    assert set(only) == {k for k in SD1_KEYS if k.startswith(UNET)}
    assert torch.equal(only[UNET + "out.2.weight"], torch.full((4, 320, 3, 3), 1.0))
    assert set(load_state_dict(path)) == set(SD1_KEYS)


def test_old_clip_layout_and_lightning_wrapper_are_normalised():
    state = {
        "state_dict": {
            "cond_stage_model.transformer.embeddings.token_embedding.weight": 1,
            "cond_stage_model.transformer.final_layer_norm.bias": 2,
            UNET + "out.2.bias": 3,
        },
        "global_step": 10,
    }
    assert normalize_keys(state) == {
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": 1,
        "cond_stage_model.transformer.text_model.final_layer_norm.bias": 2,
        UNET + "out.2.bias": 3,
    }


def test_ckpt_with_tensors_only_loads(tmp_path):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": sd1_tensors(), "global_step": 1234, "epoch": 3}, path)
    state = load_state_dict(path)
    assert set(state) == set(SD1_KEYS)
    assert detect_architecture(read_shapes(path)) == "sd1"


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled without restrictions."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ckpt_that_needs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd1_tensors(), "callback": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointFileError, match="refused"):
        load_state_dict(path)
    assert not marker.exists()
    # describe() does not fail the run: the file becomes an "unknown" column whose load reports why.
    assert describe_checkpoint(path, full_hash=False).architecture == "unknown"
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_is_refused_too(tmp_path):
    path = tmp_path / "old.ckpt"
    with open(path, "wb") as file:
        pickle.dump({"state_dict": {}, "fn": os.getcwd}, file)
    with pytest.raises(CheckpointLoadError):
        load_state_dict(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 7,
        b"not a safetensors file at all, just text" * 10,
        (10**9).to_bytes(8, "little") + b"{}",
    ],
)
def test_damaged_safetensors_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointFileError, match=r"bad\.safetensors"):
        load_state_dict(path)
    assert describe_checkpoint(path, full_hash=False).architecture == "unknown"


def test_damaged_ckpt_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointFileError, match=r"bad\.ckpt"):
        load_state_dict(path)


def test_path_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        check_checkpoint_path(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="folder"):
        check_checkpoint_path(tmp_path)
    other = tmp_path / "image.png"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="not a checkpoint"):
        check_checkpoint_path(other)


def test_describe_checkpoint(tmp_path):
    path = tmp_path / "My Model v2.safetensors"
    save_file(sd1_tensors(), str(path))
    checkpoint = describe_checkpoint(path)
    assert checkpoint.label == "My Model v2"
    assert checkpoint.architecture == "sd1"
    assert checkpoint.model_hash == legacy_model_hash(path) and len(checkpoint.model_hash) == 8
    assert checkpoint.sha256 == file_sha256(path)
    assert Path(checkpoint.file) == path.resolve()


def test_describe_reads_a_file_once_for_both_hashes_and_not_again_while_unchanged(tmp_path, monkeypatch):
    import cfgsim.host
    from cfgsim.host import HashCache

    path = tmp_path / "m.safetensors"
    data = os.urandom(0x120000)
    path.write_bytes(data)
    calls = []
    real = cfgsim.host.file_hashes
    monkeypatch.setattr(cfgsim.host, "file_hashes", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    cache = HashCache(tmp_path / "hashes.json")
    first = describe_checkpoint(path, hash_cache=cache)
    again = describe_checkpoint(path, hash_cache=HashCache(tmp_path / "hashes.json"))  # a later run
    assert len(calls) == 1
    assert first.sha256 == again.sha256 == hashlib.sha256(data).hexdigest()
    assert first.model_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    path.write_bytes(data[:-1] + b"x")  # changed: hashed again
    assert describe_checkpoint(path, hash_cache=cache).sha256 != first.sha256 and len(calls) == 2
