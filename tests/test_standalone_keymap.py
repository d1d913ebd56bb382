"""The ldm ↔ diffusers key map: checked against diffusers' own single-file conversion, both on SD 1.5's
real architecture (key names only, on the meta device) and end to end on a tiny checkpoint written
in the WebUI's layout and read back by diffusers' ``from_single_file``."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors.torch import save_file  # noqa: E402

from cfgsim.standalone import demo, keymap  # noqa: E402
from cfgsim.standalone.checkpoint import UNET_PREFIX, VAE_PREFIX  # noqa: E402
from cfgsim.standalone.configs import load_config_dir  # noqa: E402
from cfgsim.standalone.pipeline import load_models  # noqa: E402

# SD 1.5's UNet and VAE configurations (diffusers' unet/config.json and vae/config.json).
SD15_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "sample_size": 64,
}
SD15_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "sample_size": 512,
}


def meta_state(cls, config):
    with torch.device("meta"):
        return cls.from_config(config).state_dict()


def test_sd15_unet_names_agree_with_diffusers_conversion():
    """Every SD 1.5 UNet tensor, renamed to ldm by our map, comes back to the same diffusers name through
    diffusers' ``convert_ldm_unet_checkpoint`` (tensors compared by identity, no data needed)."""
    state = meta_state(UNet2DConditionModel, SD15_UNET)
    mapping = keymap.key_map(state, keymap.unet_pairs(SD15_UNET), UNET_PREFIX)
    ldm = keymap.to_ldm(state, mapping)
    back = convert_ldm_unet_checkpoint(ldm, dict(SD15_UNET))
    assert set(back) == set(state)
    assert all(back[k] is state[k] for k in state)


@pytest.mark.parametrize(
    ("diffusers_key", "ldm_key"),
    [
        ("conv_in.weight", "input_blocks.0.0.weight"),
        ("down_blocks.0.attentions.1.proj_in.weight", "input_blocks.2.1.proj_in.weight"),
        ("down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
        ("down_blocks.3.resnets.1.time_emb_proj.bias", "input_blocks.11.0.emb_layers.1.bias"),
        (
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        ),
        ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
        ("up_blocks.1.upsamplers.0.conv.weight", "output_blocks.5.2.conv.weight"),
        ("up_blocks.3.resnets.2.conv2.weight", "output_blocks.11.0.out_layers.3.weight"),
        ("up_blocks.3.resnets.0.conv_shortcut.weight", "output_blocks.9.0.skip_connection.weight"),
        ("conv_norm_out.weight", "out.0.weight"),
        ("time_embedding.linear_2.weight", "time_embed.2.weight"),
    ],
)
def test_sd15_unet_known_names(diffusers_key, ldm_key):
    state = meta_state(UNet2DConditionModel, SD15_UNET)
    mapping = keymap.key_map(state, keymap.unet_pairs(SD15_UNET), UNET_PREFIX)
    assert mapping[diffusers_key] == UNET_PREFIX + ldm_key


def test_sd15_vae_names_agree_with_diffusers_conversion():
    state = meta_state(AutoencoderKL, SD15_VAE)
    mapping = keymap.key_map(state, keymap.vae_pairs(SD15_VAE), VAE_PREFIX)
    assert (
        mapping["decoder.up_blocks.0.resnets.2.conv1.weight"]
        == VAE_PREFIX + "decoder.up.3.block.2.conv1.weight"
    )
    assert (
        mapping["encoder.mid_block.attentions.0.to_out.0.weight"]
        == VAE_PREFIX + "encoder.mid.attn_1.proj_out.weight"
    )
    ldm = keymap.to_ldm(state, mapping)
    # Attention weights are 1x1 convolutions in ldm files; to_ldm gives them that shape.
    assert tuple(ldm[VAE_PREFIX + "decoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(ldm[VAE_PREFIX + "decoder.mid.attn_1.norm.weight"].shape) == (512,)
    back = convert_ldm_vae_checkpoint(ldm, dict(SD15_VAE))
    assert set(back) == set(state)
    assert all(tuple(back[k].shape) == tuple(state[k].shape) for k in state)


def test_unmapped_key_is_reported():
    with pytest.raises(ValueError, match="no ldm name"):
        keymap.key_map(["conv_in.weight", "some_new_block.weight"], keymap.unet_pairs(SD15_UNET), UNET_PREFIX)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """One tiny SD 1.x checkpoint in the WebUI's layout (float32) and its configuration folder."""
    root = tmp_path_factory.mktemp("tiny")
    config_dir = demo.write_config_dir(root / "config")
    parts = {"unet": demo._random_unet(7), "clip": demo._random_clip(7), "vae": demo._random_vae(8)}
    path = root / "tiny.safetensors"
    save_file(demo.ldm_state_dict(parts), str(path))
    return path, config_dir, parts


def assert_same(state, reference, what):
    assert set(state) == set(reference), what
    for key, value in reference.items():
        assert torch.equal(state[key].float(), value.float()), f"{what}: {key}"


def test_written_checkpoint_loads_in_diffusers_single_file_loader(tiny_checkpoint):
    """Our diffusers→ldm map round-trips through diffusers' own single-file loading."""
    path, config_dir, parts = tiny_checkpoint
    unet = UNet2DConditionModel.from_single_file(
        str(path), config=str(config_dir), subfolder="unet", local_files_only=True
    )
    vae = AutoencoderKL.from_single_file(
        str(path), config=str(config_dir), subfolder="vae", local_files_only=True
    )
    assert_same(unet.state_dict(), parts["unet"], "unet")
    assert_same(vae.state_dict(), parts["vae"], "vae")


def test_written_checkpoint_text_encoder_in_diffusers_pipeline(tiny_checkpoint):
    from diffusers import StableDiffusionPipeline

    path, config_dir, parts = tiny_checkpoint
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, safety_checker=None
    )
    state = {k.removeprefix("text_model."): v for k, v in pipe.text_encoder.state_dict().items()}
    assert_same(
        {k: v for k, v in state.items() if not k.endswith("position_ids")}, parts["clip"], "text encoder"
    )


def test_own_loader_reads_the_same_weights(tiny_checkpoint):
    path, config_dir, parts = tiny_checkpoint
    models = load_models(path, load_config_dir(config_dir))
    assert_same(models.unet.state_dict(), parts["unet"], "unet")
    assert_same(models.vae.state_dict(), parts["vae"], "vae")
    text = {k.removeprefix("text_model."): v for k, v in models.text.model.state_dict().items()}
    assert_same(
        {k: v for k, v in text.items() if not k.endswith("position_ids")}, parts["clip"], "text encoder"
    )
    assert torch.equal(models.text.position_ids, torch.arange(77)[None])
