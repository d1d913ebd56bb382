"""``cfgsim demo``: a tiny SD 1.x model family of known lineage, built in seconds and probed for real.

Five checkpoints with the SD 1.x architecture (UNet with cross-attention, KL VAE with four
resolution levels, CLIP text model with the real CLIP tokenizer), just very narrow and with random
weights from fixed seeds, so that they are built offline in seconds:

* ``base`` — the "original" model;
* ``finetune`` — ``base`` plus small weight noise (a light fine-tune);
* ``merge`` — the 50/50 weighted sum of ``base`` and ``unrelated`` (UNet and text encoder);
* ``unrelated``, ``unrelated-2`` — independent models.

All five share one VAE, as most SD 1.x models share the original one. They are written as
single-file ``.safetensors`` checkpoints in the WebUI's layout (original ldm key names), each with a
``<name>.yaml`` LDM config beside it, so the WebUI can load them as they are; plus the
diffusers-layout configuration folder the standalone runner needs. Then the real runner probes them
(512x512, Euler, 256 steps, CFG 1, seed 1337 by default) against ``base``.

A random network does not denoise: its ε prediction carries a pattern of its own, and the Euler
integration accumulates it over the steps. ``UNET_OUTPUT_GAIN`` sets how strongly that pattern
shows against the shared initial noise: large enough that unrelated models look different, small
enough that the images stay in range. The lineage is then visible in the pictures and the scores:
fine-tune ≈ base, merge in between, unrelated far (SSIM vs base at the defaults: 0.985, 0.52,
0.39 / 0.29; the order holds for every seed tried). The shared VAE decodes smoothly (blurred
kernels), so the pictures are soft colour fields rather than pixel noise.

Verified against the real AUTOMATIC1111 v1.8 WebUI (CPU, noise source CPU): the WebUI loads these
files with their yaml and its probe image of ``base`` agrees with the standalone runner's to
SSIM 1.0000 (at most 1/255 on 0.006 % of the pixels).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfgsim.standalone import keymap
from cfgsim.standalone.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from cfgsim.standalone.schedule import SD1_BETA_END, SD1_BETA_START, SD1_TRAIN_TIMESTEPS
from cfgsim.standalone.tokenizer import write_clip_tokenizer

if TYPE_CHECKING:
    import torch

    from cfgsim.result import ProbeResult

DEMO_MODELS = ("base", "finetune", "merge", "unrelated", "unrelated-2")
DEFAULT_OUT = "cfgsim-demo"

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

# Seeds of the independent weight sets and the lineage operations (see module doc).
SEEDS = {"base": 1, "unrelated": 2, "unrelated-2": 3, "vae": 100, "finetune-noise": 11}
FINETUNE_NOISE = 0.05  # weight noise of the fine-tune, relative to each tensor's own std
UNET_OUTPUT_GAIN = 4.0  # scale of the random UNet's ε prediction (see module doc)
# Residual branches (resnets' second conv, transformers' output projection) scaled down, like a
# network initialised near identity: with fewer stacked non-linearities a 50/50 merge stays
# recognisably half of each parent instead of becoming a third, unrelated function.
UNET_RESIDUAL_GAIN = 0.3
VAE_OUTPUT_GAIN = 0.5  # keeps the decoded colours mostly inside [0, 255] instead of clipped


@dataclass
class DemoFamily:
    """Where :func:`build_family` wrote the models: checkpoint files in :data:`DEMO_MODELS` order."""

    root: Path
    checkpoints: list[Path]
    config_dir: Path


# -- weights -------------------------------------------------------------------------------------


def _random_unet(seed: int) -> dict[str, torch.Tensor]:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    for key in state:
        if key.endswith(("conv2.weight", "proj_out.weight")):
            state[key] *= UNET_RESIDUAL_GAIN
    state["conv_out.weight"] *= UNET_OUTPUT_GAIN
    state["conv_out.bias"] *= UNET_OUTPUT_GAIN
    return state


def _random_clip(seed: int) -> dict[str, torch.Tensor]:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in CLIP_CONFIG.items() if k != "architectures"}))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    # A fresh LayerNorm (weight 1, bias 0) makes the text encoder's output average to zero — for
    # some weights to the last bit — and the WebUI's emphasis step divides by that average
    # (original_mean / new_mean): NaN, and A1111 refuses the image. Trained encoders have norm
    # parameters away from (1, 0); give these the same.
    generator = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        if "layer_norm" in key:
            jitter = 0.1 * torch.randn(value.shape, generator=generator)
            state[key] = value + jitter if key.endswith(".weight") else jitter
    return state


def _random_vae(seed: int) -> dict[str, torch.Tensor]:
    """A random VAE whose decoder is a smooth upsampler (see ``_smooth_kernel``), so that the probe
    pictures are soft colour fields rather than pixel noise. The encoder is never used."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    state = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    for key, value in state.items():
        if (
            key.startswith("decoder.")
            and key.endswith(".weight")
            and value.ndim == 4
            and value.shape[-2:] == (3, 3)
        ):
            state[key] = _smooth_kernel(value)
    state["decoder.conv_out.weight"] *= VAE_OUTPUT_GAIN
    return state


def _smooth_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution kernel with the same channel mixing but a binomial blur as spatial shape.

    Each output/input channel pair keeps its random weight (the sum over the 3x3 taps, rescaled
    to the std of one tap) and spreads it as [1 2 1]ᵀ[1 2 1] / 16 · 9: a low-pass filter.
    """
    import torch

    ramp = torch.tensor([1.0, 2.0, 1.0])
    blur = ramp[:, None] * ramp[None, :] / 16.0
    mixing = weight.sum(dim=(2, 3), keepdim=True) / 3.0
    return mixing * blur * 9.0


def finetune(state: Mapping[str, torch.Tensor], strength: float, seed: int) -> dict[str, torch.Tensor]:
    """``state`` plus Gaussian noise of ``strength`` × each tensor's standard deviation (constant
    tensors, e.g. fresh norm weights, stay as they are)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point() and value.numel() > 1:
            noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
            out[key] = value + strength * float(value.float().std()) * noise.to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def merge(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float = 0.5
) -> dict[str, torch.Tensor]:
    """The WebUI checkpoint merger's "weighted sum": ``(1 - alpha)·a + alpha·b`` per tensor."""
    return {k: (1 - alpha) * a[k] + alpha * b[k] if a[k].is_floating_point() else a[k].clone() for k in a}


def family_weights() -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{model: {"unet"/"clip"/"vae": diffusers-layout state}} of the whole family (deterministic)."""
    vae = _random_vae(SEEDS["vae"])
    base = {"unet": _random_unet(SEEDS["base"]), "clip": _random_clip(SEEDS["base"])}
    other = {"unet": _random_unet(SEEDS["unrelated"]), "clip": _random_clip(SEEDS["unrelated"])}
    other2 = {"unet": _random_unet(SEEDS["unrelated-2"]), "clip": _random_clip(SEEDS["unrelated-2"])}
    tuned = {
        part: finetune(base[part], FINETUNE_NOISE, SEEDS["finetune-noise"] + i) for i, part in enumerate(base)
    }
    merged = {part: merge(base[part], other[part]) for part in base}
    models = {"base": base, "finetune": tuned, "merge": merged, "unrelated": other, "unrelated-2": other2}
    return {name: {**parts, "vae": vae} for name, parts in models.items()}


# -- writing -------------------------------------------------------------------------------------


def ldm_state_dict(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One checkpoint in the WebUI's single-file layout from diffusers-layout UNet / VAE / CLIP states."""
    import torch

    unet_map = keymap.key_map(parts["unet"], keymap.unet_pairs(UNET_CONFIG), UNET_PREFIX)
    vae_map = keymap.key_map(parts["vae"], keymap.vae_pairs(VAE_CONFIG), VAE_PREFIX)
    clip_map = keymap.clip_key_map(parts["clip"])
    state = {
        **keymap.to_ldm(parts["unet"], unet_map),
        **keymap.to_ldm(parts["vae"], vae_map),
        **keymap.to_ldm(parts["clip"], clip_map),
    }
    # Real SD 1.x files carry CLIP's position_ids buffer; so do these.
    state[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(CLIP_CONFIG["max_position_embeddings"])[
        None
    ]
    return {k: v.contiguous() for k, v in sorted(state.items())}


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


def build_family(root: str | os.PathLike[str], *, dtype: str = "float16") -> DemoFamily:
    """Write the demo family under ``root``: ``models/<name>.safetensors`` + ``.yaml``, ``config/``.

    Weights are stored in float16 (as most published SD 1.x checkpoints are); both runners compute
    in float32 on the CPU. Deterministic: the same files every time.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    config_dir = write_config_dir(root / "config")
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    paths = []
    for name, parts in family_weights().items():
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in ldm_state_dict(parts).items()}
        path = models_dir / f"{name}.safetensors"
        save_file(state, str(path), metadata={"format": "pt", "cfgsim_demo": name})
        (models_dir / f"{name}.yaml").write_text(
            webui_yaml((config_dir / "text_encoder").resolve()), encoding="utf-8"
        )
        paths.append(path)
    return DemoFamily(root=root, checkpoints=paths, config_dir=config_dir)


# -- running -------------------------------------------------------------------------------------


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    steps: int | None = None,
    seeds: Sequence[int] | str | None = None,
    size: int | None = None,
    device: str = "cpu",
    rng: str = "cpu",
    quiet: bool = False,
    write: bool = True,
) -> tuple[ProbeResult, dict[str, Path]]:
    """Build the family in ``out_dir``, probe it against ``base`` and write grid, heatmaps and metadata.

    ``steps``/``seeds``/``size`` change the cfg1 preset (256 steps, seed 1337, 512x512); the
    differences are recorded in the result as deviations from the preset.
    """
    from cfgsim.compare import build_metrics
    from cfgsim.output import write_outputs
    from cfgsim.probe import run_probe
    from cfgsim.result import Reference
    from cfgsim.spec import DEFAULT_PRESET, get_preset
    from cfgsim.standalone.host import StandaloneHost

    preset = get_preset(DEFAULT_PRESET)
    changes: dict[str, object] = {}
    if steps is not None:
        changes["steps"] = steps
    if seeds is not None:
        changes["seeds"] = seeds
    if size is not None:
        changes["width"] = changes["height"] = size
    spec = preset.replace(**changes) if changes else preset

    family = build_family(out_dir)
    host = StandaloneHost(
        family.checkpoints, config_dir=family.config_dir, device=device, rng=rng, quiet=quiet
    )
    result = run_probe(
        host,
        host.checkpoints(),
        spec,
        metrics=build_metrics(["ssim"]),
        reference=Reference("item", 0, "base"),
        preset=DEFAULT_PRESET,
        deviations=preset.differences(spec),
    )
    written = write_outputs(result, out_dir) if write else {}
    return result, written
