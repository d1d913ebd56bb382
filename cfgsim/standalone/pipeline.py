"""The probe image of one SD 1.x checkpoint, computed the way the WebUI computes it.

What the WebUI (AUTOMATIC1111 v1.8, txt2img) does for the probe, and what this module does:

1. **Prompt.** ``FrozenCLIPEmbedderWithCustomWords`` tokenises the prompt without special tokens and
   builds 77-token chunks: BOS, up to 75 tokens, EOS padding to the end (SD 1.x pads with EOS, so
   the empty prompt is BOS + 76 × EOS). Clip skip N > 1 takes the CLIP text model's hidden state N
   from the end (``hidden_states[-N]``) and applies the model's ``final_layer_norm`` to it; N = 1 is
   the last hidden state (which already went through that norm). The emphasis step multiplies by
   per-token weights of 1.0 and rescales to the original mean — an exact no-op without ``(...)``.
2. **CFG 1.** ``CFGDenoiser`` returns ``uncond + (cond - uncond) · scale``. At scale 1 that is
   ``cond``: the negative prompt (the probe's zero-weighted one or any other) cannot change the
   result, so the unconditional pass is not run at all (as Forge does). The WebUI still runs it,
   so its images differ from these by float rounding only. ``stock_cfg=True`` runs it the WebUI's
   way, for measurements (``benchmarks/bench_condonly.py``): the negative prompt is encoded too
   (as plain text: its ``(word:0)`` weights are not applied, which at CFG 1 changes nothing but
   rounding), cond and uncond go through the UNet as one batch of two rows per image, and
   ``ε = ε_u + (ε_c − ε_u) · scale`` (the WebUI combines the denoised ``x − σε``: the same sum).
3. **Noise.** One (4, H/8, W/8) tensor per seed (:mod:`.noise`), times the first sigma.
4. **Euler** (k-diffusion ``sample_euler``, no churn) over the discrete schedule (:mod:`.schedule`):
   the UNet sees ``x / sqrt(σ² + 1)`` at the fractional timestep of σ and predicts ε; the denoised
   estimate is ``x - σ·ε`` and the step ``x += (x - denoised) / σ · (σ_next - σ)``.
   **DDIM** (the "prior scan v2" preset) follows the WebUI's timestep-based implementation.
5. **Decode.** ``vae.decode(latent · (1 / 0.18215))``, ``clamp((x + 1) / 2, 0, 1)``, ``255 ·`` and a
   truncating ``astype(uint8)`` — not rounding, as the WebUI does.

Precision: float32 on the CPU, float16 on CUDA (the WebUI's defaults for each).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cfgsim.errors import InputError
from cfgsim.host import CheckpointLoadError
from cfgsim.standalone import keymap
from cfgsim.standalone.checkpoint import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    detect_architecture,
    load_state_dict,
)
from cfgsim.standalone.configs import ModelConfig
from cfgsim.standalone.noise import initial_noise, latent_shape
from cfgsim.standalone.schedule import DiscreteSchedule, alphas_cumprod, ddim_timesteps

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from cfgsim.spec import ProbeSpec

# The WebUI's prompt chunk: 75 tokens between BOS and EOS.
CHUNK_LENGTH = 75
SAMPLERS = ("Euler", "DDIM")
# Prompt syntax the WebUI interprets (attention weights, scheduling, alternation, BREAK, AND,
# extra networks, escapes). The standalone runner reproduces plain prompts only.
_PROMPT_SYNTAX = re.compile(r"[()\[\]<>\\|]|\bBREAK\b|\bAND\b")

StepCallback = Callable[[int, int], None]


def check_spec(spec: ProbeSpec) -> None:
    """An :class:`InputError` (before anything loads) for settings this runner cannot reproduce."""
    problems = []
    if spec.sampler not in SAMPLERS:
        problems.append(
            f"sampler {spec.sampler} is not supported by the standalone runner ({', '.join(SAMPLERS)})"
        )
    if spec.scheduler not in ("Automatic", ""):
        problems.append(
            f"schedule type {spec.scheduler} is not supported (only the sampler's own, Automatic)"
        )
    if spec.cfg_scale != 1:
        problems.append(
            f"CFG scale {spec.cfg_scale:g}: the standalone runner runs the CFG 1 probe only (no uncond pass)"
        )
    if _PROMPT_SYNTAX.search(spec.prompt):
        problems.append(
            "the prompt uses WebUI prompt syntax (weights, BREAK, AND, <extra networks>): only plain prompts "
            "are reproduced"
        )
    if problems:
        raise InputError("; ".join(problems))


# -- text encoder --------------------------------------------------------------------------------


def prompt_chunks(token_ids: list[int], bos: int, eos: int) -> list[list[int]]:
    """The WebUI's 77-token chunks of a plain prompt's token ids (no special tokens in ``token_ids``).

    One chunk for up to 75 tokens (the empty prompt too). Longer prompts are split by the WebUI with
    a comma look-back that this runner does not reproduce: they are refused.
    """
    if len(token_ids) > CHUNK_LENGTH:
        raise InputError(
            f"the prompt has {len(token_ids)} tokens; the standalone runner reproduces prompts of up to "
            f"{CHUNK_LENGTH} tokens (one chunk)"
        )
    return [[bos, *token_ids] + [eos] * (CHUNK_LENGTH + 1 - len(token_ids))]


class TextEncoder:
    """The CLIP text model and tokenizer of a checkpoint, encoding prompts as the WebUI does (module doc)."""

    def __init__(self, model: Any, tokenizer: Any, position_ids: torch.Tensor | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # Checkpoints carry CLIP's position_ids buffer; the WebUI's transformers loads it from the
        # file, truncating float values of damaged merges (75.9999 → 75) on the copy into int64.
        # Newer transformers no longer load it, so it is passed explicitly.
        self.position_ids = position_ids

    @property
    def text_model(self) -> Any:
        # transformers 4 nests the transformer under .text_model; 5 does not.
        return getattr(self.model, "text_model", self.model)

    def token_chunks(self, prompt: str) -> list[list[int]]:
        ids = (
            self.tokenizer(prompt, truncation=False, add_special_tokens=False)["input_ids"] if prompt else []
        )
        return prompt_chunks(list(ids), self.tokenizer.bos_token_id, self.tokenizer.eos_token_id)

    def encode(self, prompt: str, clip_skip: int = 1) -> torch.Tensor:
        """(1, 77·chunks, width) conditioning for ``prompt`` with ``clip_skip`` (1 = last layer)."""
        import torch

        device = next(self.model.parameters()).device
        zs = []
        for chunk in self.token_chunks(prompt):
            ids = torch.tensor([chunk], dtype=torch.int64, device=device)
            kwargs = {}
            if self.position_ids is not None:
                kwargs["position_ids"] = self.position_ids[:, : ids.shape[1]].to(device)
            out = self.model(input_ids=ids, output_hidden_states=clip_skip > 1, **kwargs)
            if clip_skip > 1:
                z = self.text_model.final_layer_norm(out.hidden_states[-clip_skip])
            else:
                z = out.last_hidden_state
            zs.append(z)
        return torch.cat(zs, dim=1)


def load_tokenizer(config: ModelConfig) -> Any:
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(config.tokenizer_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"tokenizer in {config.tokenizer_dir} cannot be loaded ({exc})") from exc


def _clip_config(config: ModelConfig) -> Any:
    from transformers import CLIPTextConfig

    try:
        return CLIPTextConfig.from_pretrained(str(config.text_encoder_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"text encoder config in {config.text_encoder_dir} cannot be read ({exc})") from exc


def build_text_model(config: ModelConfig) -> Any:
    """A CLIP text model from the configuration (random weights), with eager attention.

    Eager attention is the implementation the WebUI's transformers (4.30) always used; the fused
    kernels of newer versions round differently.
    """
    from transformers import CLIPTextModel

    clip_config = _clip_config(config)
    try:
        return CLIPTextModel._from_config(clip_config, attn_implementation="eager")
    except (TypeError, ValueError):  # transformers without the attn_implementation switch
        return CLIPTextModel(clip_config)


# -- models --------------------------------------------------------------------------------------


@dataclass
class SD1Models:
    """One loaded SD 1.x checkpoint: UNet, VAE, text encoder, schedule, and where/how they run."""

    unet: Any
    vae: Any
    text: TextEncoder
    schedule: DiscreteSchedule
    scaling_factor: float
    device: str
    dtype: torch.dtype


def _instantiate(
    cls: Any,
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    pairs: keymap.Pairs,
    prefix: str,
    what: str,
) -> Any:
    """A diffusers model built on the meta device, then given the checkpoint's tensors (no random init)."""
    import torch

    with torch.device("meta"):
        model = cls.from_config(dict(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapping = keymap.key_map(shapes, pairs, prefix)
    try:
        tensors = keymap.to_diffusers(state, mapping, shapes, what)
    except (KeyError, ValueError) as exc:
        raise CheckpointLoadError(str(exc).strip("'\"")) from exc
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except TypeError:  # torch < 2.1 has no assign=: build on the CPU and copy (slower, same result)
        model = cls.from_config(dict(config))
        model.load_state_dict(tensors, strict=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise CheckpointLoadError(f"{what}: the configuration has state the checkpoint does not provide")
    return model.eval().requires_grad_(False)


def load_models(
    path: str | Path,
    config: ModelConfig,
    *,
    tokenizer: Any = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> SD1Models:
    """Load an SD 1.x single-file checkpoint into diffusers' classes with this runner's key map.

    Raises :class:`CheckpointLoadError` with the reason for files that are not SD 1.x checkpoints
    in the original layout or that do not match the configuration.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    state = load_state_dict(
        path, keys=("alphas_cumprod",), prefixes=(UNET_PREFIX, VAE_PREFIX, "cond_stage_model.")
    )
    # Most SD 1.x files carry ldm's schedule buffers. The WebUI loads them over the ones it computed
    # from the yaml (strict=False), so a file's own alphas_cumprod is the one that counts.
    file_alphas = state.pop("alphas_cumprod", None)
    architecture = detect_architecture({k: tuple(v.shape) for k, v in state.items()})
    if architecture != "sd1":
        from cfgsim.host import ARCHITECTURE_NAMES

        if architecture == "unknown":
            raise CheckpointLoadError(
                "not an SD 1.x checkpoint in the original layout (no model.diffusion_model.* UNet with a "
                "cond_stage_model.transformer.* CLIP text encoder)"
            )
        kind = ARCHITECTURE_NAMES.get(architecture, architecture)
        raise CheckpointLoadError(f"{kind} checkpoint: the probe is defined for SD 1.x")
    conv_in = state[UNET_PREFIX + "input_blocks.0.0.weight"]
    if conv_in.shape[1] != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(int(conv_in.shape[1]), "a")
        raise CheckpointLoadError(
            f"{kind} model ({conv_in.shape[1]} UNet input channels): the probe runs plain SD 1.x models"
        )
    if not any(k.startswith(VAE_PREFIX) for k in state):
        raise CheckpointLoadError("the checkpoint has no VAE (first_stage_model.*)")

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    unet_pairs, vae_pairs = keymap.unet_pairs(config.unet), keymap.vae_pairs(config.vae)
    unet = _instantiate(
        UNet2DConditionModel, config.unet, state, pairs=unet_pairs, prefix=UNET_PREFIX, what="UNet"
    )
    vae = _instantiate(AutoencoderKL, config.vae, state, pairs=vae_pairs, prefix=VAE_PREFIX, what="VAE")

    text_model = build_text_model(config)
    text_shapes = {k: tuple(v.shape) for k, v in text_model.state_dict().items()}
    clip_map = keymap.clip_key_map(text_shapes)
    try:
        clip_state = keymap.to_diffusers(state, clip_map, text_shapes, "text encoder")
    except (KeyError, ValueError) as exc:
        raise CheckpointLoadError(str(exc).strip("'\"")) from exc
    text_model.load_state_dict(clip_state, strict=False)
    text_model = text_model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    position_ids = state.get(CLIP_PREFIX + "embeddings.position_ids")
    if position_ids is not None:
        position_ids = position_ids.reshape(1, -1).to(torch.int64)

    if file_alphas is not None and tuple(file_alphas.shape) == (config.num_train_timesteps,):
        ac = file_alphas.to(torch.float32)
    else:
        ac = alphas_cumprod(
            config.beta_start, config.beta_end, config.num_train_timesteps, config.beta_schedule
        )
    return SD1Models(
        unet=unet.to(device),
        vae=vae.to(device),
        text=TextEncoder(text_model, tokenizer, position_ids),
        schedule=DiscreteSchedule(ac),
        scaling_factor=config.scaling_factor,
        device=str(device),
        dtype=dtype,
    )


# -- sampling ------------------------------------------------------------------------------------


def sample_euler(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    schedule: DiscreteSchedule,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler over ``sigmas`` for an ε-prediction model, in k-diffusion's operation order (module doc, 4).

    ``eps_model(x_in, t)`` gets the scaled input and the fractional timestep (shape (1,)).
    """
    # The schedule arithmetic stays on the CPU in float32 (as the WebUI's buffers); only the
    # per-step factors travel to the latent's device.
    sigmas = sigmas.cpu()
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma = sigmas[i].reshape(1)
        c_in = 1 / (sigma**2 + 1) ** 0.5
        t = schedule.sigma_to_t(sigma)
        sigma_x, c_in_x = (v.to(x.device)[:, None, None, None] for v in (sigma, c_in))
        eps = eps_model(x * c_in_x, t.to(x.device))
        denoised = x + eps * -sigma_x
        d = (x - denoised) / sigma_x
        x = x + d * (sigmas[i + 1] - sigma).to(x.device)[:, None, None, None]
        if callback is not None:
            callback(i + 1, steps)
    return x


def sample_ddim(
    eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    timesteps: list[int],
    alphas_cumprod: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The WebUI's DDIM with eta 0 (``sd_samplers_timesteps_impl.ddim``), from the algorithm.

    ``x`` is the unscaled initial noise. The index i runs from the last entry of ``timesteps`` down
    to 1 (index 0 is never visited, so sampling ends at ᾱ of ``timesteps[0]``); the UNet sees
    ``timesteps[i]`` and the step goes to ᾱ_prev = ᾱ at ``timesteps[i - 1]``:
    ``x = sqrt(ᾱ_prev)·x̂₀ + sqrt(1 - ᾱ_prev)·ε`` with ``x̂₀ = (x - sqrt(1 - ᾱ)·ε) / sqrt(ᾱ)``.
    """
    import torch

    ac = alphas_cumprod.cpu().to(torch.float32)
    sqrt_one_minus = torch.sqrt(1 - ac)  # float32, as the WebUI computes it before taking .item()
    steps = len(timesteps) - 1
    device = x.device

    def factor(value: float) -> torch.Tensor:
        return torch.full((1, 1, 1, 1), value, dtype=torch.float32, device=device)

    for done, index in enumerate(range(len(timesteps) - 1, 0, -1), start=1):
        t = timesteps[index]
        a_t, a_prev = factor(float(ac[t])), factor(float(ac[timesteps[index - 1]]))
        eps = eps_model(x, torch.full((1,), float(t), device=device))
        pred_x0 = (x - factor(float(sqrt_one_minus[t])) * eps) / a_t.sqrt()
        dir_xt = (1.0 - a_prev).sqrt() * eps
        x = a_prev.sqrt() * pred_x0 + dir_xt
        if callback is not None:
            callback(done, steps)
    return x


def decode_image(vae: Any, latent: torch.Tensor, scaling_factor: float) -> Image.Image:
    """The VAE decode and 8-bit conversion of the WebUI (module doc, 5)."""
    import torch
    from PIL import Image

    decoded = vae.decode(latent.to(next(vae.parameters()).dtype) * (1.0 / scaling_factor)).sample
    x = torch.clamp((decoded[0].float() + 1.0) / 2.0, min=0.0, max=1.0)
    array = 255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)
    return Image.fromarray(array.astype(np.uint8))


def generate(
    models: SD1Models,
    spec: ProbeSpec,
    seed: int,
    *,
    rng: str = "cpu",
    callback: StepCallback | None = None,
    stock_cfg: bool = False,
) -> Image.Image:
    """The probe image of the loaded checkpoint for ``seed`` under ``spec`` (CFG 1, no uncond pass;
    ``stock_cfg``: with it, as the WebUI does — module doc, 2)."""
    return generate_batch(models, spec, [seed], rng=rng, callback=callback, stock_cfg=stock_cfg)[0]


def generate_batch(
    models: SD1Models,
    spec: ProbeSpec,
    seeds: Sequence[int],
    *,
    rng: str = "cpu",
    callback: StepCallback | None = None,
    stock_cfg: bool = False,
) -> list[Image.Image]:
    """The probe images of the loaded checkpoint for several ``seeds`` in one batch.

    Each seed's initial latent is drawn on its own, exactly as for a single image (the WebUI's
    per-image noise), then the latents are stacked and sampled together: one UNet call per step
    for the whole batch. Sampling is element-wise, so each image is the one made alone up to the
    batch-size dependence of the floating-point kernels (measured in the tests and the benchmark).
    ``stock_cfg``: run the unconditional pass too, as the WebUI does (module doc, 2).
    """
    import torch

    check_spec(spec)
    if not seeds:
        return []
    with torch.inference_mode():
        cond = models.text.encode(spec.prompt, spec.clip_skip).to(models.dtype)
        batch_cond = cond.expand(len(seeds), *cond.shape[1:])
        if stock_cfg:
            uncond = models.text.encode(spec.negative_prompt, spec.clip_skip).to(models.dtype)
            if uncond.shape != cond.shape:
                raise InputError("stock CFG: the negative prompt must fit one 75-token chunk like the prompt")
            batch_cond = torch.cat([batch_cond, uncond.expand(len(seeds), *uncond.shape[1:])])

        def eps_model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x_in = x_in.to(models.dtype)
            if stock_cfg:  # cond rows then uncond rows, one UNet call, then the CFG combination
                x_in = torch.cat([x_in, x_in])
            out = models.unet(x_in, t.to(models.device), encoder_hidden_states=batch_cond).sample.float()
            if stock_cfg:
                eps_c, eps_u = out.chunk(2)
                return eps_u + (eps_c - eps_u) * float(spec.cfg_scale)
            return out

        shape = latent_shape(spec.width, spec.height)
        noise = torch.cat([initial_noise(seed, shape, rng, models.device) for seed in seeds])
        steps = spec.effective_steps
        if spec.sampler == "DDIM":
            timesteps = ddim_timesteps(steps, len(models.schedule.alphas_cumprod))
            latent = sample_ddim(eps_model, noise, timesteps, models.schedule.alphas_cumprod, callback)
        else:
            sigmas = models.schedule.get_sigmas(steps)
            latent = sample_euler(
                eps_model, noise * sigmas[0].to(noise.device), sigmas, models.schedule, callback
            )
        # Decoded one by one: the VAE at 512x512 is the memory peak, and a batch of one is what a
        # single image gets.
        return [decode_image(models.vae, latent[k : k + 1], models.scaling_factor) for k in range(len(seeds))]
