"""``cfgsim demo``: tiny SD 1.x model families of known lineage, built in seconds and probed for real.

Checkpoints with the SD 1.x architecture (UNet with cross-attention, KL VAE with four resolution
levels, CLIP text model with the real CLIP tokenizer), just very narrow and with random weights
from fixed seeds, so that they are built offline in seconds. Two families (:data:`DEMO_FAMILIES`,
each with its members' recipes and the expected tree, :class:`FamilyTruth`):

``small`` (the default, five checkpoints):

* ``base`` — the "original" model;
* ``finetune`` — ``base`` plus small weight noise (a light fine-tune);
* ``merge`` — the 50/50 weighted sum of ``base`` and ``unrelated`` (UNet and text encoder);
* ``unrelated``, ``unrelated-2`` — independent models.

``full`` (13 checkpoints): ``base`` stored fp32 with an EMA copy of its UNet, its fp16 copy and its
EMA-pruned copy (same weights); the chain ``base`` > ``ft1`` > ``ft2``; a second fine-tune ``ft1b``
and the 50/50 merge ``merge-ft1-ft1b`` of the two fine-tunes (equally related to both, and to
``base``: the midpoint of two independent perturbations); ``merge-base75-unrel25``,
``merge-base50-unrel50``, ``merge-base25-unrel75``; the unrelated root ``unrel`` with its
fine-tune ``unrel-ft``, and a second unrelated root ``unrel2``. ``weight_seed`` draws independent
families of the same recipe (for calibration over many families).

All members share one VAE, as most SD 1.x models share the original one. They are written as
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfgsim.standalone import keymap
from cfgsim.standalone.checkpoint import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from cfgsim.standalone.demo_config import (  # noqa: F401 (the demo's public names)
    CLIP_CONFIG,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    VAE_CONFIG,
    webui_yaml,
    write_config_dir,
)
from cfgsim.standalone.families import (  # noqa: F401 (the demo's public names)
    DEFAULT_FAMILY,
    DEMO_FAMILIES,
    DEMO_MODELS,
    FINETUNE_NOISE,
    FULL_FT1_NOISE,
    FULL_FT2_NOISE,
    SEEDS,
    FamilySpec,
    FamilyTruth,
    Member,
    get_family,
)

if TYPE_CHECKING:
    import torch

    from cfgsim.result import ProbeResult
    from cfgsim.spec import ProbeSpec

DEFAULT_OUT = "cfgsim-demo"


UNET_OUTPUT_GAIN = 4.0  # scale of the random UNet's ε prediction (see module doc)
# Residual branches (resnets' second conv, transformers' output projection) scaled down, like a
# network initialised near identity: with fewer stacked non-linearities a 50/50 merge stays
# recognisably half of each parent instead of becoming a third, unrelated function.
UNET_RESIDUAL_GAIN = 0.3
VAE_OUTPUT_GAIN = 0.5  # keeps the decoded colours mostly inside [0, 255] instead of clipped
# ``weight_seed=k`` draws an independent family of the same recipe: every seed above (and each
# member's own) is shifted by k x this stride (k = 0: the seeds as listed).
WEIGHT_SEED_STRIDE = 10007
# EMA weights written into checkpoints saved ``ema=True`` (ldm's ``model_ema.*``): the UNet's own
# weights plus this much noise, so that a loader that wrongly took them would draw another picture.
EMA_NOISE = 0.02
# Reduced probe for tests and calibration runs: same family, smaller and fewer-step pictures.
REDUCED_SIZE = 128
REDUCED_STEPS = 16


@dataclass
class DemoFamily:
    """Where :func:`build_family` wrote the models: checkpoint files in the family's member order."""

    root: Path
    checkpoints: list[Path]
    config_dir: Path
    spec: FamilySpec = DEMO_FAMILIES[DEFAULT_FAMILY]
    weight_seed: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        return self.spec.names

    @property
    def truth(self) -> FamilyTruth:
        return self.spec.truth


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


def family_weights(
    family: str | FamilySpec = DEFAULT_FAMILY, *, weight_seed: int = 0
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{member: {"unet"/"clip"/"vae": diffusers-layout state}} of a whole family (deterministic).

    ``weight_seed`` 0 gives the family as documented; any other value an independent draw of the
    same recipe (every seed shifted by ``weight_seed`` x :data:`WEIGHT_SEED_STRIDE`). All members
    share one VAE, as most SD 1.x models share the original one.
    """
    spec = get_family(family)
    shift = weight_seed * WEIGHT_SEED_STRIDE
    vae = _random_vae(SEEDS["vae"] + shift)
    models: dict[str, dict[str, torch.Tensor]] = {}
    for m in _parents_first(spec.members):
        if m.kind == "root":
            models[m.name] = {"unet": _random_unet(m.seed + shift), "clip": _random_clip(m.seed + shift)}
        elif m.kind == "finetune":
            parent = models[m.parents[0]]
            models[m.name] = {
                part: finetune(parent[part], m.strength, m.seed + shift + i) for i, part in enumerate(parent)
            }
        elif m.kind == "merge":
            if len(m.parents) != 2 or abs(sum(m.weights) - 1.0) > 1e-9:
                raise ValueError(f"{m.name}: a merge takes two parents with weights summing to 1")
            a, b = (models[p] for p in m.parents)
            models[m.name] = {part: merge(a[part], b[part], m.weights[1]) for part in a}
        elif m.kind == "copy":
            models[m.name] = models[m.parents[0]]
        else:
            raise ValueError(f"{m.name}: unknown recipe kind {m.kind!r}")
    return {name: {**parts, "vae": vae} for name, parts in models.items()}


def _parents_first(members: Sequence[Member]) -> list[Member]:
    """``members`` reordered so that every parent comes before its children (display order kept
    otherwise); a ValueError for an unknown parent or a cycle."""
    names = {m.name for m in members}
    done: set[str] = set()
    pending, order = list(members), []
    while pending:
        ready = [m for m in pending if all(p in done for p in m.parents)]
        if not ready:
            missing = sorted({p for m in pending for p in m.parents} - names)
            raise ValueError(f"demo family: unknown parents {missing}" if missing else "demo family: a cycle")
        for m in ready:
            order.append(m)
            done.add(m.name)
        pending = [m for m in pending if m.name not in done]
    return order


def ema_state_dict(unet_ldm: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """ldm's EMA copy of a UNet as training checkpoints carry it (``LitEma``): ``model_ema.<name
    without dots>`` per UNet parameter, plus ``model_ema.decay`` and ``model_ema.num_updates``.

    The values are the UNet's own plus :data:`EMA_NOISE` (see there); WebUI-style loaders read
    ``model.diffusion_model.*`` and ignore these keys, so pruning them changes the file, not the picture.
    """
    import torch

    noisy = finetune(unet_ldm, EMA_NOISE, seed)
    state = {
        "model_ema." + key[len("model.") :].replace(".", ""): value.contiguous()
        for key, value in noisy.items()
    }
    state["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    state["model_ema.num_updates"] = torch.tensor(10000, dtype=torch.int32)
    return state


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


def build_family(
    root: str | os.PathLike[str],
    *,
    family: str | FamilySpec = DEFAULT_FAMILY,
    weight_seed: int = 0,
    dtype: str | None = None,
) -> DemoFamily:
    """Write a demo family under ``root``: ``models/<name>.safetensors`` + ``.yaml``, ``config/``.

    ``family`` is a name of :data:`DEMO_FAMILIES` (``small``, the default, or ``full``);
    ``weight_seed`` draws an independent family of the same recipe (0: the documented one).
    Each member is stored in its own precision (``dtype`` overrides it for all): the small family in
    float16, as most published SD 1.x checkpoints are; the full family in float32 but for its fp16
    copy of base. Both runners compute in float32 on the CPU. Deterministic: the same files every time.
    The safetensors metadata names the member, its family and its recipe.
    """
    import torch

    spec = get_family(family)
    root = Path(root)
    config_dir = write_config_dir(root / "config")
    models_dir = root / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    yaml = webui_yaml((config_dir / "text_encoder").resolve())
    weights = family_weights(spec, weight_seed=weight_seed)
    ldm_cache: dict[int, dict[str, torch.Tensor]] = {}
    paths = []
    for index, member in enumerate(spec.members):
        parts = weights[member.name]
        # Copies share their parent's tensors: convert once.
        ldm = ldm_cache.setdefault(id(parts["unet"]), ldm_state_dict(parts))
        state = dict(ldm)
        if member.ema:
            unet = {k: v for k, v in ldm.items() if k.startswith(UNET_PREFIX)}
            state.update(ema_state_dict(unet, seed=1000 + index + weight_seed * WEIGHT_SEED_STRIDE))
        target = getattr(torch, dtype or member.dtype)
        # Everything in the member's precision but ldm's EMA bookkeeping (decay stays float32).
        state = {
            k: v.to(target) if v.is_floating_point() and k != "model_ema.decay" else v
            for k, v in sorted(state.items())
        }
        path = models_dir / f"{member.name}.safetensors"
        metadata = {
            "format": "pt",
            "cfgsim_demo": member.name,
            "cfgsim_demo_family": spec.name,
            "cfgsim_demo_recipe": member.recipe,
            "cfgsim_demo_weight_seed": str(weight_seed),
        }
        _save_safetensors(state, path, metadata)
        (models_dir / f"{member.name}.yaml").write_text(yaml, encoding="utf-8")
        paths.append(path)
    return DemoFamily(root=root, checkpoints=paths, config_dir=config_dir, spec=spec, weight_seed=weight_seed)


def _save_safetensors(state: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    """``safetensors.torch.save`` with the metadata keys in sorted order, so that the same weights give
    the same bytes (and file hashes) every time: safetensors writes its metadata map in random order."""
    from safetensors.torch import save

    data = save(dict(state), metadata=dict(metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(text) <= size:  # the same content reordered: never longer; padded with blanks as safetensors does
        data = data[:8] + text.ljust(size, b" ") + data[8 + size :]
    path.write_bytes(data)


# -- running -------------------------------------------------------------------------------------


def demo_spec(
    *,
    steps: int | None = None,
    seeds: Sequence[int] | str | None = None,
    size: int | None = None,
    reduced: bool = False,
) -> ProbeSpec:
    """The cfg1 probe (256 steps, seed 1337, 512x512) with the demo's changes applied.

    ``reduced`` sets :data:`REDUCED_SIZE` and :data:`REDUCED_STEPS` (explicit ``size``/``steps`` win):
    the probe made small enough for tests and calibration runs over many families.
    """
    from cfgsim.spec import DEFAULT_PRESET, get_preset

    if reduced:
        steps = REDUCED_STEPS if steps is None else steps
        size = REDUCED_SIZE if size is None else size
    changes: dict[str, object] = {}
    if steps is not None:
        changes["steps"] = steps
    if seeds is not None:
        changes["seeds"] = seeds
    if size is not None:
        changes["width"] = changes["height"] = size
    preset = get_preset(DEFAULT_PRESET)
    return preset.replace(**changes) if changes else preset


def probe_family(
    family: DemoFamily,
    spec: ProbeSpec,
    *,
    device: str = "cpu",
    rng: str = "cpu",
    quiet: bool = False,
    metrics: Sequence[str] = ("ssim",),
    batch_size: int | None = None,
    library: Any = None,
    with_library: bool = False,
) -> ProbeResult:
    """Probe a built family with the real standalone runner, scored against the family's reference.

    ``batch_size``: seeds per batch (default: the host's, 1 on the CPU). ``library``/``with_library``:
    the probe library (:mod:`cfgsim.library`), as for :func:`cfgsim.probe.run_probe`."""
    from cfgsim.compare import build_metrics
    from cfgsim.probe import run_probe
    from cfgsim.result import Reference
    from cfgsim.spec import DEFAULT_PRESET, get_preset
    from cfgsim.standalone.host import StandaloneHost

    host = StandaloneHost(
        family.checkpoints,
        config_dir=family.config_dir,
        device=device,
        rng=rng,
        quiet=quiet,
        batch_size=batch_size,
    )
    reference = family.spec.reference
    return run_probe(
        host,
        host.checkpoints(),
        spec,
        metrics=build_metrics(list(metrics)),
        reference=Reference("item", family.names.index(reference), reference),
        preset=DEFAULT_PRESET,
        deviations=get_preset(DEFAULT_PRESET).differences(spec),
        library=library,
        with_library=with_library,
    )


def run_demo(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    family: str | FamilySpec = DEFAULT_FAMILY,
    weight_seed: int = 0,
    steps: int | None = None,
    seeds: Sequence[int] | str | None = None,
    size: int | None = None,
    reduced: bool = False,
    device: str = "cpu",
    rng: str = "cpu",
    quiet: bool = False,
    write: bool = True,
    batch_size: int | None = None,
    library: Any = None,
    with_library: bool = False,
) -> tuple[ProbeResult, dict[str, Path]]:
    """Build a family in ``out_dir``, probe it against its reference (``base``) and write grid,
    heatmaps and metadata (``write=False``: only return the result).

    ``steps``/``seeds``/``size``/``reduced`` change the cfg1 preset (see :func:`demo_spec`); the
    differences are recorded in the result as deviations from the preset. ``family`` and
    ``weight_seed`` as for :func:`build_family`. Calibration over many random families::

        for k in range(50):
            result, _ = run_demo(tmp / str(k), family="full", weight_seed=k, seeds="1-8",
                                 reduced=True, quiet=True, write=False)
    """
    from cfgsim.output import write_outputs

    spec = demo_spec(steps=steps, seeds=seeds, size=size, reduced=reduced)
    built = build_family(out_dir, family=family, weight_seed=weight_seed)
    result = probe_family(
        built,
        spec,
        device=device,
        rng=rng,
        quiet=quiet,
        batch_size=batch_size,
        library=library,
        with_library=with_library,
    )
    written = write_outputs(result, out_dir) if write else {}
    return result, written
