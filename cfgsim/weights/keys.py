"""Tensor names → (component, canonical name, block), for every layout a checkpoint comes in.

The canonical name of a tensor is its name in the WebUI's single-file (ldm) layout: diffusers-layout
files are mapped with the project's key map (:mod:`cfgsim.standalone.keymap`), whose configuration
is read off the key names themselves (which down blocks have attention, how many resnets each has).
Shapes are compared without trailing 1-sized dimensions, so the VAE's 1x1-convolution attention
(ldm) and linear attention (diffusers) are the same tensor.

Components: ``unet``, ``text`` (SD 1.x's CLIP ViT-L text model, which SDXL carries as its first
text encoder), ``text2`` (SD 2.x's OpenCLIP and SDXL's second encoder) and ``vae``. Everything else
— EMA copies (``model_ema.*``), noise-schedule buffers, ``position_ids`` — is set aside.

Blocks follow the WebUI merge convention (merge-block-weighted, supermerger): ``BASE`` = the text
encoder, ``IN00``–``IN11``, ``M00``, ``OUT00``–``OUT11``; ``time_embed`` counts as ``IN00`` and the
final ``out.*`` as the last OUT block, as block-weighted mergers assign them; plus ``VAE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cfgsim.standalone import keymap
from cfgsim.standalone.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, normalize_key

UNET, TEXT, TEXT2, VAE = "unet", "text", "text2", "vae"
COMPONENTS = (UNET, TEXT, TEXT2, VAE)
COMPONENT_NAMES = {UNET: "UNet", TEXT: "text encoder", TEXT2: "second text encoder", VAE: "VAE"}
EMA_PREFIX = "model_ema."
OUT_BLOCK_PLACEHOLDER = "OUT"

SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
SD2_TEXT_PREFIX = "cond_stage_model.model."

_IN = re.compile(r"input_blocks\.(\d+)\.")
_OUT = re.compile(r"output_blocks\.(\d+)\.")

# What a file that is given as a checkpoint but is something else looks like (its key names).
_LORA_MARKERS = (".lora_up.", ".lora_down.", "lora_unet_", "lora_te_", ".lora_A.", ".lora_B.", ".hada_w1_")
_LORA_MARKERS += (".lokr_w1", "lora_te1_", "lora_te2_", ".lora.up.", ".lora.down.")
_LORA_SUFFIX = re.compile(
    r"\.(alpha|dora_scale|lora_up|lora_down|lora_A|lora_B|lora\.up|lora\.down|hada_\w+|lokr_\w+)(\.weight)?$"
)


@dataclass(frozen=True)
class Entry:
    """One weight tensor of a checkpoint: where it is in the file and what it is."""

    raw: str  # the name in the file (in its sub-file for a diffusers folder)
    name: str  # canonical (ldm) name
    component: str
    block: str
    shape: tuple[int, ...]  # canonical: trailing 1-sized dims dropped
    dtype: str  # safetensors dtype name: F16, BF16, F32, F64
    part: str = ""  # sub-file of a diffusers folder ("unet", "text_encoder", "vae"); "" for one file

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def canonical_shape(shape: Sequence[int]) -> tuple[int, ...]:
    out = [int(d) for d in shape]
    while len(out) > 1 and out[-1] == 1:
        out.pop()
    return tuple(out)


def block_of(component: str, name: str) -> str:
    """The WebUI merge block of a canonical tensor name (see the module docstring)."""
    if component == TEXT:
        return "BASE"
    if component == TEXT2:
        return "BASE2"
    if component == VAE:
        return "VAE"
    rest = name[len(UNET_PREFIX) :]
    if m := _IN.match(rest):
        return f"IN{int(m.group(1)):02d}"
    if rest.startswith("middle_block."):
        return "M00"
    if m := _OUT.match(rest):
        return f"OUT{int(m.group(1)):02d}"
    if rest.startswith("time_embed.") or rest.startswith("label_emb."):
        return "IN00"
    if rest.startswith("out."):
        return OUT_BLOCK_PLACEHOLDER  # the last OUT block, set once the file's blocks are known
    return "UNET"


def block_sort_key(block: str) -> tuple[int, int]:
    order = {"BASE": 0, "BASE2": 1, "IN": 2, "M": 3, "OUT": 4, "UNET": 5, "VAE": 6}
    m = re.match(r"([A-Z]+?)(\d*)$", block)
    head, num = (m.group(1), m.group(2)) if m else (block, "")
    if head == "BASE" and num == "2":
        return (1, 0)
    return (order.get(head, 9), int(num) if num else 0)


def classify_ldm(key: str) -> tuple[str, str] | None:
    """(component, canonical name) of a single-file key, or None for what is set aside."""
    key = normalize_key(key)
    if key.startswith(UNET_PREFIX):
        return UNET, key
    if key.startswith(CLIP_PREFIX):
        return None if key.endswith("position_ids") else (TEXT, key)
    if key.startswith(VAE_PREFIX):
        return VAE, key
    if key.startswith(SDXL_TEXT_PREFIX):
        if key.endswith("position_ids"):
            return None
        return TEXT, CLIP_PREFIX + key[len(SDXL_TEXT_PREFIX) :]
    if key.startswith(SDXL_TEXT2_PREFIX):
        return TEXT2, "text2." + key[len(SDXL_TEXT2_PREFIX) :]
    if key.startswith(SD2_TEXT_PREFIX):
        return TEXT2, "text2." + key[len(SD2_TEXT_PREFIX) :]
    return None


def not_a_checkpoint(keys: Iterable[str]) -> str | None:
    """What a file is when its keys say it is not a full model (LoRA, embedding, ControlNet), or None."""
    keys = list(keys)
    lora = [k for k in keys if any(m in k for m in _LORA_MARKERS)]
    if lora:
        modules = {_LORA_SUFFIX.sub("", k) for k in lora}
        kind = f"a LoRA / LyCORIS network ({len(modules)} modules)"
        return f"{kind}, not a checkpoint: merge it into a model first"
    if any(k == "emb_params" or k.startswith("string_to_param") for k in keys):
        return "a textual-inversion embedding, not a checkpoint"
    if keys and all(k.startswith(("clip_l", "clip_g")) for k in keys):
        return "an SDXL textual-inversion embedding, not a checkpoint"
    if any(k.startswith(("control_model.", "controlnet_")) for k in keys):
        return "a ControlNet, not a checkpoint"
    return None


# -- diffusers layout ----------------------------------------------------------------------------

# Older diffusers releases named the VAE's attention projections differently.
_OLD_VAE_ATTENTION = {
    ".query.": ".to_q.",
    ".key.": ".to_k.",
    ".value.": ".to_v.",
    ".proj_attn.": ".to_out.0.",
}


def _levels(keys: Iterable[str], head: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    pattern = re.compile(re.escape(head) + r"\.(\d+)\.(.*)$")
    for key in keys:
        if m := pattern.match(key):
            out.setdefault(int(m.group(1)), set()).add(m.group(2))
    return out


def _count(rests: Iterable[str], part: str) -> int:
    return len({r.split(".")[1] for r in rests if r.startswith(part + ".")})


def unet_config_from_keys(keys: Iterable[str]) -> dict[str, object]:
    """The parts of a ``UNet2DConditionModel`` config the key map needs, read off its key names."""
    keys = list(keys)
    down, up = _levels(keys, "down_blocks"), _levels(keys, "up_blocks")
    if not down or not up:
        raise ValueError("no down_blocks / up_blocks: not a diffusers UNet")
    return {
        "down_block_types": [
            "CrossAttnDownBlock2D" if any(r.startswith("attentions.") for r in down[i]) else "DownBlock2D"
            for i in sorted(down)
        ],
        "up_block_types": [
            "CrossAttnUpBlock2D" if any(r.startswith("attentions.") for r in up[i]) else "UpBlock2D"
            for i in sorted(up)
        ],
        "layers_per_block": [_count(down[i], "resnets") for i in sorted(down)],
        "mid_block_type": "UNetMidBlock2DCrossAttn"
        if any(k.startswith("mid_block.attentions.") for k in keys)
        else "none",
    }


def vae_config_from_keys(keys: Iterable[str]) -> dict[str, object]:
    keys = list(keys)
    down = _levels(keys, "encoder.down_blocks")
    if not down:
        raise ValueError("no encoder.down_blocks: not a diffusers VAE")
    return {"block_out_channels": [0] * len(down), "layers_per_block": _count(down[0], "resnets")}


def diffusers_names(component: str, keys: Sequence[str]) -> dict[str, str]:
    """{diffusers key: canonical name} of one component's keys (prefix-free, as in its own file)."""
    if component == UNET:
        return keymap.key_map(keys, keymap.unet_pairs(unet_config_from_keys(keys)), UNET_PREFIX)
    if component == VAE:
        renamed = {}
        for key in keys:
            new = key
            for old, repl in _OLD_VAE_ATTENTION.items():
                if ".mid_block.attentions." in key and old in key:
                    new = key.replace(old, repl)
            renamed[new] = key
        mapped = keymap.key_map(list(renamed), keymap.vae_pairs(vae_config_from_keys(keys)), VAE_PREFIX)
        return {renamed[k]: v for k, v in mapped.items()}
    if component == TEXT:
        return keymap.clip_key_map(keys)
    raise ValueError(f"no diffusers layout for {component}")


DIFFUSERS_PREFIXES = {"unet.": UNET, "text_encoder.": TEXT, "vae.": VAE}


def is_diffusers_vae(keys: Iterable[str]) -> bool:
    return any(k.startswith("encoder.down_blocks.") for k in keys)


def is_bare_ldm_vae(keys: Iterable[str]) -> bool:
    return any(k.startswith("encoder.down.") for k in keys)


def map_names(keys: Mapping[str, tuple[str, tuple[int, ...]]]) -> tuple[dict[str, tuple[str, str]], str]:
    """{raw key: (component, canonical name)} of a single file's keys and the layout's name.

    ``keys`` is {raw key: (dtype, shape)}. Recognises the ldm single-file layout (SD 1.x, SD 2.x,
    SDXL), a diffusers-layout single file (``unet.``/``text_encoder.``/``vae.`` prefixes) and
    stand-alone VAE files in either layout. Raises ValueError with the reason for anything else.
    """
    names = list(keys)
    if any(k.startswith(tuple(DIFFUSERS_PREFIXES)) for k in names) and not any(
        k.startswith(UNET_PREFIX) for k in names
    ):
        out: dict[str, tuple[str, str]] = {}
        for prefix, component in DIFFUSERS_PREFIXES.items():
            part = [k[len(prefix) :] for k in names if k.startswith(prefix)]
            if part:
                for key, name in diffusers_names(component, part).items():
                    out[prefix + key] = (component, name)
        return out, "diffusers"
    if is_diffusers_vae(names) and not any(k.startswith(VAE_PREFIX) for k in names):
        return {k: (VAE, v) for k, v in diffusers_names(VAE, names).items()}, "diffusers VAE"
    if is_bare_ldm_vae(names) and not any(k.startswith(VAE_PREFIX) for k in names):
        out = {}
        for k in names:
            if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
                out[k] = (VAE, VAE_PREFIX + k)
        return out, "VAE"
    out = {}
    for k in names:
        hit = classify_ldm(k)
        if hit is not None:
            out[k] = hit
    return out, "single file"
