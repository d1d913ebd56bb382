"""The demo's tiny SD 1.x architecture and the configuration files written beside its checkpoints:
the WebUI's LDM yaml per checkpoint, and the diffusers-layout folder the standalone runner reads
offline (configs plus a local CLIP tokenizer)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from cfgsim.standalone.schedule import SD1_BETA_END, SD1_BETA_START, SD1_TRAIN_TIMESTEPS
from cfgsim.standalone.tokenizer import write_clip_tokenizer

# The tiny architecture. Channel counts are multiples of 32 because ldm's GroupNorm uses 32 groups
# everywhere; the VAE keeps SD's four levels (latent = image / 8). The UNet has three levels with
# cross-attention only at the lowest (16x16 for a 512 image) and in the middle block: attention at
# 64x64 or 32x32 latents would dominate the run time (one UNet call ≈ 17 ms on two CPU cores).
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "use_linear_projection": False,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
CLIP_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    # SD's CLIP config carries these legacy ids; the tokenizer's BOS/EOS (49406/49407) are what count.
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": SD1_BETA_START,
    "beta_end": SD1_BETA_END,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": SD1_TRAIN_TIMESTEPS,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "linspace",
}


def webui_yaml(clip_dir: Path) -> str:
    """The LDM config the WebUI reads from ``<checkpoint>.yaml`` (its v1-inference.yaml, made tiny).

    ``cond_stage_config.params.version`` is the local folder with the CLIP text config and
    tokenizer, so the WebUI needs no download either.
    """
    u, v = UNET_CONFIG, VAE_CONFIG
    channels = u["block_out_channels"]
    mult = [c // channels[0] for c in channels]
    attention = [2**i for i, t in enumerate(u["down_block_types"]) if "Attn" in t]
    ch_mult = [c // v["block_out_channels"][0] for c in v["block_out_channels"]]
    return f"""# cfgsim demo: a tiny SD 1.x-architecture model (random weights). WebUI / ldm config.
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: {SD1_BETA_START}
    linear_end: {SD1_BETA_END}
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: {SD1_TRAIN_TIMESTEPS}
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 64
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: {v["scaling_factor"]}
    use_ema: False

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32
        in_channels: {u["in_channels"]}
        out_channels: {u["out_channels"]}
        model_channels: {channels[0]}
        attention_resolutions: {attention}
        num_res_blocks: {u["layers_per_block"]}
        channel_mult: {mult}
        num_heads: {u["attention_head_dim"]}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: {u["cross_attention_dim"]}
        use_checkpoint: False
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {v["latent_channels"]}
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: {v["latent_channels"]}
          resolution: 256
          in_channels: {v["in_channels"]}
          out_ch: {v["out_channels"]}
          ch: {v["block_out_channels"][0]}
          ch_mult: {ch_mult}
          num_res_blocks: {v["layers_per_block"]}
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        version: {json.dumps(str(clip_dir))}
"""


def write_config_dir(folder: Path) -> Path:
    """The diffusers-layout configuration folder of the demo architecture (see :mod:`.configs`).

    ``text_encoder/`` also holds the tokenizer files: it is the folder the WebUI's yaml points to,
    and the WebUI loads CLIP's config and tokenizer from one place.
    """
    import diffusers

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **UNET_CONFIG})
    _write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", **VAE_CONFIG})
    _write_json(folder / "text_encoder" / "config.json", CLIP_CONFIG)
    _write_json(folder / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
    write_clip_tokenizer(folder / "tokenizer")
    for name in os.listdir(folder / "tokenizer"):
        shutil.copyfile(folder / "tokenizer" / name, folder / "text_encoder" / name)
    _write_json(
        folder / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    return folder


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
