"""The standalone runner's pieces of the WebUI's probe: prompt chunks and clip skip (A1111
``sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords``), Euler (k-diffusion ``sample_euler`` over
``CompVisDenoiser``), DDIM (A1111 ``sd_samplers_timesteps_impl.ddim``) and the 8-bit decode
(A1111 ``processing.process_images_inner``: clamp, ``255 *``, ``astype(uint8)``)."""

from __future__ import annotations

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from cfgsim.errors import InputError  # noqa: E402
from cfgsim.spec import PRESETS, ProbeSpec  # noqa: E402
from cfgsim.standalone.demo import CLIP_CONFIG  # noqa: E402
from cfgsim.standalone.pipeline import (  # noqa: E402
    TextEncoder,
    check_spec,
    decode_image,
    prompt_chunks,
    sample_ddim,
    sample_euler,
)
from cfgsim.standalone.schedule import DiscreteSchedule, alphas_cumprod, ddim_timesteps  # noqa: E402
from cfgsim.standalone.tokenizer import write_clip_tokenizer  # noqa: E402

BOS, EOS = 49406, 49407


def tiny_clip(layers: int = 3, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = {k: v for k, v in CLIP_CONFIG.items() if k != "architectures"}
    return CLIPTextModel(CLIPTextConfig(**{**config, "num_hidden_layers": layers})).eval()


def final_norm(model):
    return getattr(model, "text_model", model).final_layer_norm


class NoTokenizer:
    """The empty prompt never reaches the tokenizer; only its special ids are read."""

    bos_token_id, eos_token_id = BOS, EOS

    def __call__(self, *args, **kwargs):
        raise AssertionError("the empty prompt must not be tokenised")


# -- prompt --------------------------------------------------------------------------------------


def test_empty_prompt_is_bos_then_eos_padding():
    """SD 1.x pads with EOS (id_pad = id_end): the empty prompt is BOS + 76 × EOS, one 77-token chunk."""
    assert prompt_chunks([], BOS, EOS) == [[BOS] + [EOS] * 76]
    chunk = prompt_chunks(list(range(75)), BOS, EOS)[0]
    assert len(chunk) == 77 and chunk[0] == BOS and chunk[-1] == EOS
    with pytest.raises(InputError, match="76 tokens"):
        prompt_chunks(list(range(76)), BOS, EOS)


def test_plain_prompt_tokens(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path)), local_files_only=True)
    encoder = TextEncoder(tiny_clip(), tokenizer)
    # OpenAI CLIP's ids for "a photo of a cat", the reference example of the CLIP tokenizer.
    assert encoder.token_chunks("a photo of a cat") == [[BOS, 320, 1125, 539, 320, 2368] + [EOS] * 71]


# -- clip skip -----------------------------------------------------------------------------------


def test_clip_skip_2_is_penultimate_hidden_state_through_final_layer_norm():
    model = tiny_clip()
    ids = torch.tensor([[BOS] + [EOS] * 76])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        z = TextEncoder(model, NoTokenizer()).encode("", clip_skip=2)
        assert torch.equal(z, final_norm(model)(out.hidden_states[-2]))
        assert torch.equal(TextEncoder(model, NoTokenizer()).encode("", clip_skip=1), out.last_hidden_state)


def test_clip_skip_2_equals_the_model_without_its_last_layer():
    """The usual description of clip skip 2, checked independently: drop the last transformer layer and
    keep the final layer norm."""
    full, short = tiny_clip(layers=3), tiny_clip(layers=2)
    short.load_state_dict({k: v for k, v in full.state_dict().items() if ".layers.2." not in k})
    ids = torch.tensor([[BOS] + [EOS] * 76])
    with torch.no_grad():
        z = TextEncoder(full, NoTokenizer()).encode("", clip_skip=2)
        expected = short(input_ids=ids).last_hidden_state
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-6)


def test_checkpoint_position_ids_are_used_truncated():
    """A damaged merge's float position_ids (75.9999...) act as the truncated integers, as in the WebUI."""
    model = tiny_clip()
    plain = TextEncoder(model, NoTokenizer()).encode("", 2)
    same = TextEncoder(model, NoTokenizer(), torch.arange(77)[None]).encode("", 2)
    assert torch.equal(plain, same)
    damaged = (torch.arange(77, dtype=torch.float32) - 1e-3).clamp(min=0)[None].to(torch.int64)
    assert not torch.equal(plain, TextEncoder(model, NoTokenizer(), damaged).encode("", 2))


# -- spec ----------------------------------------------------------------------------------------


def test_check_spec_accepts_the_presets():
    check_spec(PRESETS["cfg1"])
    check_spec(PRESETS["prior-v2"])
    check_spec(ProbeSpec(prompt="a photo of a cat", clip_skip=1))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cfg_scale": 7.0}, "CFG 1 probe only"),
        ({"sampler": "DPM++ 2M"}, "sampler DPM\\+\\+ 2M"),
        ({"scheduler": "Karras"}, "schedule type"),
        ({"prompt": "(masterpiece:1.2), cat"}, "prompt syntax"),
        ({"prompt": "a cat BREAK a dog"}, "prompt syntax"),
        ({"prompt": "<lora:x:1> cat"}, "prompt syntax"),
    ],
)
def test_check_spec_refuses_what_it_cannot_reproduce(changes, message):
    with pytest.raises(InputError, match=message):
        check_spec(ProbeSpec().replace(**changes))


# -- samplers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schedule():
    return DiscreteSchedule(alphas_cumprod())


def test_euler_inputs_are_scaled_input_and_fractional_timestep(schedule):
    """Each call gets x / sqrt(σ² + 1) and sigma_to_t(σ) for the schedule's σ (as CompVisDenoiser does)."""
    sigmas = schedule.get_sigmas(5)
    seen = []

    def eps_model(x_in, t):
        seen.append((x_in.clone(), float(t)))
        return torch.zeros_like(x_in)

    x0 = torch.ones(1, 4, 2, 2) * sigmas[0]
    out = sample_euler(eps_model, x0, sigmas, schedule)
    assert len(seen) == 5
    torch.testing.assert_close(seen[0][0], x0 / (sigmas[0] ** 2 + 1) ** 0.5)
    assert [t for _, t in seen] == pytest.approx(schedule.sigma_to_t(sigmas[:-1]).tolist(), abs=1e-4)
    assert seen[0][1] == pytest.approx(999.0)
    # ε = 0 means "already clean": Euler leaves x unchanged.
    assert torch.equal(out, x0)


def test_euler_reaches_the_denoised_target(schedule):
    """A denoiser that always predicts μ makes x - μ shrink by σ_next/σ each step: x ends at μ exactly."""
    mu = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = schedule.get_sigmas(30)

    def eps_model(x_in, t):
        sigma = schedule.t_to_sigma(t).reshape(1, 1, 1, 1)
        x = x_in * (sigma**2 + 1) ** 0.5
        return (x - mu) / sigma

    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    out = sample_euler(eps_model, noise * sigmas[0], sigmas, schedule)
    torch.testing.assert_close(out, mu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps", [10, 1000])
def test_ddim_with_a_perfect_denoiser(steps):
    """With ε = the true noise of x = sqrt(ᾱ)·μ + sqrt(1 - ᾱ)·n, each DDIM step moves to the previous level;
    the WebUI's loop stops at ᾱ of timesteps[0] = 1 (index 0 is never visited)."""
    ac = alphas_cumprod()
    mu = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    n = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(6))
    timesteps = ddim_timesteps(steps)
    calls = []

    def eps_model(x, t):
        calls.append(float(t))
        a = ac[int(t)]
        return (x - a.sqrt() * mu) / (1 - a).sqrt()

    a0 = ac[timesteps[-1]]
    out = sample_ddim(eps_model, a0.sqrt() * mu + (1 - a0).sqrt() * n, timesteps, ac)
    a_end = ac[timesteps[0]]
    torch.testing.assert_close(out, a_end.sqrt() * mu + (1 - a_end).sqrt() * n, atol=1e-4, rtol=1e-4)
    assert len(calls) == steps - 1 and calls[0] == timesteps[-1] and calls[-1] == timesteps[1]


def test_decode_truncates_like_the_webui():
    """clamp((x + 1) / 2, 0, 1) · 255 then astype(uint8): 127.99 becomes 127, not 128."""
    values = torch.tensor([-2.0, -1.0, 127.99 / 127.5 - 1, 0.0, 1.0, 3.0])
    decoded = values.reshape(1, 1, 1, 6).expand(1, 3, 1, 6)

    class FakeVae(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen = None

        def decode(self, z):
            self.seen = z
            return types.SimpleNamespace(sample=decoded)

    vae = FakeVae()
    image = decode_image(vae, torch.full((1, 4, 1, 1), 0.18215), 0.18215)
    assert np.asarray(image)[0, :, 0].tolist() == [0, 0, 127, 127, 255, 255]
    torch.testing.assert_close(vae.seen, torch.ones(1, 4, 1, 1))
