"""Tensor names of SD 1.x single-file checkpoints (ldm/CompVis layout) ↔ diffusers' model classes.

The map is derived from the model configuration, the way the two code bases build their modules:
ldm numbers the UNet's blocks sequentially (``input_blocks.N``, ``output_blocks.N``, each a list of
resnet / attention / resampler), diffusers groups them per resolution (``down_blocks.L.resnets.J``).
Both directions use one table of (ldm prefix, diffusers prefix) pairs, built per model from its
config, so loading a WebUI checkpoint and writing one (the demo) cannot drift apart. Every key of
the diffusers model must be mapped; a key that is not is a bug here, reported as such.

Shapes differ in one place: the VAE's mid-block attention uses 1x1 convolutions in ldm and linear
layers in diffusers ([C, C, 1, 1] ↔ [C, C]); :func:`to_diffusers` / :func:`to_ldm` reshape those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cfgsim.standalone.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

if TYPE_CHECKING:
    import torch

Pairs = list[tuple[str, str]]

_UNET_RESNET = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)
_VAE_RESNET = (
    ("norm1.", "norm1."),
    ("conv1.", "conv1."),
    ("norm2.", "norm2."),
    ("conv2.", "conv2."),
    ("nin_shortcut.", "conv_shortcut."),
)
_VAE_ATTENTION = (
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
)


def _expand(ldm: str, diffusers: str, subs: Iterable[tuple[str, str]]) -> Pairs:
    return [(ldm + a, diffusers + b) for a, b in subs]


def _per_block(value: Any, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [int(value)] * n


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type


def unet_pairs(config: Mapping[str, Any]) -> Pairs:
    """(ldm prefix, diffusers prefix) pairs of a ``UNet2DConditionModel`` config, ldm prefix relative
    to ``model.diffusion_model.``. Mirrors ldm's ``UNetModel.__init__`` block numbering."""
    down_types: Sequence[str] = config["down_block_types"]
    up_types: Sequence[str] = config["up_block_types"]
    levels = len(down_types)
    layers = _per_block(config.get("layers_per_block", 2), levels)
    mid_type = config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"UNet mid block {mid_type!r} has no SD 1.x (ldm) layout")

    pairs: Pairs = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ]
    k = 1
    for level, block_type in enumerate(down_types):
        for j in range(layers[level]):
            pairs += _expand(f"input_blocks.{k}.0.", f"down_blocks.{level}.resnets.{j}.", _UNET_RESNET)
            if _has_attention(block_type):
                pairs.append((f"input_blocks.{k}.1.", f"down_blocks.{level}.attentions.{j}."))
            k += 1
        if level != levels - 1:
            pairs.append((f"input_blocks.{k}.0.op.", f"down_blocks.{level}.downsamplers.0.conv."))
            k += 1

    pairs += _expand("middle_block.0.", "mid_block.resnets.0.", _UNET_RESNET)
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += _expand("middle_block.2.", "mid_block.resnets.1.", _UNET_RESNET)

    # ldm builds the decoder from the lowest resolution up, one resnet more per level than the encoder.
    up_layers = list(reversed(layers))
    k = 0
    for i, block_type in enumerate(up_types):
        for j in range(up_layers[i] + 1):
            pairs += _expand(f"output_blocks.{k}.0.", f"up_blocks.{i}.resnets.{j}.", _UNET_RESNET)
            sub = 1
            if _has_attention(block_type):
                pairs.append((f"output_blocks.{k}.1.", f"up_blocks.{i}.attentions.{j}."))
                sub = 2
            if i != levels - 1 and j == up_layers[i]:
                pairs.append((f"output_blocks.{k}.{sub}.conv.", f"up_blocks.{i}.upsamplers.0.conv."))
            k += 1
    return pairs


def vae_pairs(config: Mapping[str, Any]) -> Pairs:
    """(ldm prefix, diffusers prefix) pairs of an ``AutoencoderKL`` config (ldm relative to
    ``first_stage_model.``). Mirrors ldm's ``Encoder`` / ``Decoder`` module names."""
    levels = len(config["block_out_channels"])
    layers = int(config.get("layers_per_block", 2))
    pairs: Pairs = [
        ("quant_conv.", "quant_conv."),
        ("post_quant_conv.", "post_quant_conv."),
    ]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in."),
            (f"{part}.norm_out.", f"{part}.conv_norm_out."),
            (f"{part}.conv_out.", f"{part}.conv_out."),
        ]
        pairs += _expand(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", _VAE_RESNET)
        pairs += _expand(f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", _VAE_ATTENTION)
        pairs += _expand(f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", _VAE_RESNET)
    for level in range(levels):
        for j in range(layers):
            pairs += _expand(
                f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", _VAE_RESNET
            )
        if level != levels - 1:
            pairs.append(
                (
                    f"encoder.down.{level}.downsample.conv.",
                    f"encoder.down_blocks.{level}.downsamplers.0.conv.",
                )
            )
    for i in range(levels):
        # ldm indexes decoder.up by resolution level, diffusers its up_blocks in order of use.
        level = levels - 1 - i
        for j in range(layers + 1):
            pairs += _expand(
                f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}.", _VAE_RESNET
            )
        if i != levels - 1:
            pairs.append((f"decoder.up.{level}.upsample.conv.", f"decoder.up_blocks.{i}.upsamplers.0.conv."))
    return pairs


def key_map(diffusers_keys: Iterable[str], pairs: Pairs, ldm_prefix: str) -> dict[str, str]:
    """{diffusers key: full ldm key} for every key of a diffusers model (longest matching prefix wins)."""
    by_length = sorted(pairs, key=lambda pair: -len(pair[1]))
    out: dict[str, str] = {}
    unmapped = []
    for key in diffusers_keys:
        for ldm, diffusers in by_length:
            if key.startswith(diffusers):
                out[key] = ldm_prefix + ldm + key[len(diffusers) :]
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"no ldm name for {len(unmapped)} diffusers keys, e.g. {unmapped[:3]}")
    return out


def clip_key_map(text_model_keys: Iterable[str]) -> dict[str, str]:
    """{text-model key: ldm key}. Keys may or may not start with ``text_model.`` (transformers 4 / 5)."""
    out = {}
    for key in text_model_keys:
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight: handled by the caller (see pipeline.TextEncoder)
        bare = key[len("text_model.") :] if key.startswith("text_model.") else key
        out[key] = CLIP_PREFIX + bare
    return out


def _fit_shape(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``tensor`` reshaped to ``shape`` when they differ only in trailing 1-sized dims (1x1 conv ↔ linear)."""
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    squeezed = list(tensor.shape)
    while squeezed and squeezed[-1] == 1 and len(squeezed) > len(shape):
        squeezed.pop()
    if tuple(squeezed) == tuple(shape) or (
        tuple(shape[: len(tensor.shape)]) == tuple(tensor.shape)
        and all(d == 1 for d in shape[len(tensor.shape) :])
    ):
        return tensor.reshape(tuple(shape))
    raise ValueError(f"shape {tuple(tensor.shape)} does not fit {tuple(shape)}")


def to_diffusers(
    state: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    shapes: Mapping[str, Sequence[int]],
    what: str,
) -> dict[str, torch.Tensor]:
    """The diffusers state dict of one model from a checkpoint's ldm tensors.

    ``mapping`` is {diffusers key: ldm key}, ``shapes`` the diffusers model's own shapes. Raises
    ``KeyError`` naming the missing ldm keys and ``ValueError`` for a shape that does not fit (a
    checkpoint that does not match the configuration).
    """
    missing = [ldm for ldm in mapping.values() if ldm not in state]
    if missing:
        raise KeyError(
            f"{what}: {len(missing)} tensors the configuration expects are missing from the checkpoint "
            f"(e.g. {', '.join(missing[:2])}): the checkpoint does not match the model configuration"
        )
    out = {}
    for key, ldm in mapping.items():
        try:
            out[key] = _fit_shape(state[ldm], shapes[key])
        except ValueError as exc:
            raise ValueError(
                f"{what}: {ldm} has shape {tuple(state[ldm].shape)}, the configuration expects "
                f"{tuple(shapes[key])}: the checkpoint does not match the model configuration"
            ) from exc
    return out


def to_ldm(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`to_diffusers`. VAE attention weights become 1x1 convolutions again."""
    out = {}
    for key, value in state.items():
        if key not in mapping:
            continue
        ldm = mapping[key]
        if (
            ldm.startswith(VAE_PREFIX)
            and ".mid.attn_1." in ldm
            and ldm.endswith(".weight")
            and value.ndim == 2
        ):
            out[ldm] = value.reshape(*value.shape, 1, 1)
        else:
            out[ldm] = value
    return out


__all__ = [
    "CLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "clip_key_map",
    "key_map",
    "to_diffusers",
    "to_ldm",
    "unet_pairs",
    "vae_pairs",
]
