"""The standalone runner's sigma schedule and initial noise against the WebUI's algorithms.

References (read, not copied): k-diffusion ``external.DiscreteSchedule`` (``get_sigmas``,
``t_to_sigma``, ``sigma_to_t``) and ``DiscreteEpsDDPMDenoiser`` (sigma = sqrt((1 - ᾱ) / ᾱ)) at the
commit AUTOMATIC1111 v1.8 pins (ab527a9a); ldm ``make_beta_schedule("linear")`` /
``register_schedule``; A1111 ``modules/rng.py`` (``ImageRNG``, ``create_generator``, ``randn``) and
``modules/rng_philox.py`` (``Generator.randn``); A1111 ``sd_samplers_timesteps.CompVisSampler.get_timesteps``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cfgsim.errors import InputError  # noqa: E402
from cfgsim.standalone.noise import initial_noise, latent_shape, philox4x32, philox_randn  # noqa: E402
from cfgsim.standalone.schedule import DiscreteSchedule, alphas_cumprod, ddim_timesteps  # noqa: E402


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(alphas_cumprod())


def reference_alphas_cumprod() -> np.ndarray:
    """ldm ``register_schedule``: float64 betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)², cumprod of
    1 - β in float64, stored as float32."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


def reference_sigmas(n: int) -> np.ndarray:
    """k-diffusion ``DiscreteSchedule.get_sigmas(n)`` in numpy: timesteps linspace(999, 0, n), log-sigma
    interpolated between floor(t) and ceil(t) (``t_to_sigma``), then a final 0 (``append_zero``)."""
    ac = reference_alphas_cumprod()
    log_sigmas = np.log(((1 - ac) / ac) ** 0.5).astype(np.float64)
    t = np.linspace(999, 0, n)
    low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
    w = t - low
    return np.append(np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high]), 0.0)


def test_alphas_cumprod_is_ldm_schedule():
    np.testing.assert_array_equal(alphas_cumprod().numpy(), reference_alphas_cumprod())


@pytest.mark.parametrize("n", [1, 2, 20, 256, 1000])
def test_get_sigmas_matches_k_diffusion_algorithm(schedule, n):
    sigmas = schedule.get_sigmas(n)
    assert sigmas.dtype == torch.float32 and len(sigmas) == n + 1 and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas.numpy(), reference_sigmas(n), rtol=2e-6)
    assert bool((sigmas[:-1] > sigmas[1:]).all())


def test_pinned_sigmas_for_the_probe(schedule):
    """256 Euler steps: sigma_max ≈ 14.6146 (the first sigma, the initial noise scale), sigma_min ≈ 0.0292
    (last non-zero); values as the WebUI prints them with ``Sigmas`` debugging."""
    sigmas = schedule.get_sigmas(256)
    assert schedule.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert schedule.sigma_min == pytest.approx(0.0292, abs=1e-4)
    np.testing.assert_allclose(sigmas[:4].numpy(), [14.614643, 14.272205, 13.939630, 13.616589], atol=2e-6)
    np.testing.assert_allclose(sigmas[-3:].numpy(), [0.0650282, 0.0291675, 0.0], atol=2e-7)


def reference_sigma_to_t(sigma: np.ndarray) -> np.ndarray:
    """k-diffusion ``DiscreteSchedule.sigma_to_t`` (quantize=False) in numpy float32, as its buffers
    are: log_sigmas = log(sqrt((1 - ᾱ) / ᾱ)); the level below is where ``(log σ - log_sigmas >= 0)
    .cumsum(0).argmax(0)`` lands (the last level at or below log σ, 0 when none), clamped to
    n - 2; w = (low - log σ) / (low - high) clamped to [0, 1]; t = (1 - w)·low_idx + w·high_idx."""
    ac = reference_alphas_cumprod()
    log_sigmas = np.log(((1 - ac) / ac) ** np.float32(0.5)).astype(np.float32)
    log_sigma = np.log(np.asarray(sigma, dtype=np.float32))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low_idx = np.minimum(np.argmax(np.cumsum(dists >= 0, axis=0), axis=0), log_sigmas.size - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).astype(np.float32)


def test_sigma_to_t_matches_k_diffusion(schedule):
    """The fractional timesteps the UNet receives, against k-diffusion's formula written out above
    (not against the schedule's own t_to_sigma): the probe's 256 Euler sigmas and random ones over
    and beyond the trained range."""
    sigmas = reference_sigmas(256)[:-1].astype(np.float32)
    ours = schedule.sigma_to_t(torch.from_numpy(sigmas)).numpy()
    np.testing.assert_allclose(ours, reference_sigma_to_t(sigmas), atol=2e-4)
    # The first timesteps of the probe, from the reference: 999 and then about 3.92 apart.
    np.testing.assert_allclose(reference_sigma_to_t(sigmas[:3]), [999.0, 995.08228, 991.16473], atol=2e-4)
    rng = np.random.default_rng(0)
    random = np.exp(rng.uniform(np.log(0.005), np.log(40.0), 500)).astype(np.float32)
    np.testing.assert_allclose(
        schedule.sigma_to_t(torch.from_numpy(random)).numpy(), reference_sigma_to_t(random), atol=2e-4
    )


def test_sigma_to_t_at_training_levels_and_out_of_range(schedule):
    levels = torch.tensor([0, 1, 500, 998, 999])
    np.testing.assert_allclose(
        schedule.sigma_to_t(schedule.sigmas[levels]).numpy(), levels.numpy(), atol=1e-3
    )
    # Outside the trained range the weight is clamped: timestep 0 below sigma_min, 999 above sigma_max.
    assert float(schedule.sigma_to_t(torch.tensor([1e-4]))) == 0.0
    assert float(schedule.sigma_to_t(torch.tensor([100.0]))) == 999.0


def test_get_sigmas_rejects_zero_steps(schedule):
    with pytest.raises(InputError):
        schedule.get_sigmas(0)


def test_ddim_timesteps_are_the_webuis():
    """``range(0, 1000, 1000 // steps) + 1`` clipped to 999: at 1000 steps the last one repeats."""
    assert ddim_timesteps(20) == list(range(1, 1000, 50))
    full = ddim_timesteps(1000)
    assert len(full) == 1000 and full[:3] == [1, 2, 3] and full[-2:] == [999, 999]
    with pytest.raises(InputError):
        ddim_timesteps(1001)


# -- noise ---------------------------------------------------------------------------------------


def test_cpu_noise_is_torch_cpu_randn_per_seed():
    """A1111 ``rng.create_generator`` with randn_source CPU: ``torch.Generator('cpu').manual_seed(seed)``,
    then ``torch.randn((4, H/8, W/8))``; pinned first values computed with plain torch."""
    noise = initial_noise(1337, latent_shape(512, 512), "cpu")
    assert noise.shape == (1, 4, 64, 64) and noise.dtype == torch.float32
    expected = torch.randn((4, 64, 64), generator=torch.Generator("cpu").manual_seed(1337))
    assert torch.equal(noise[0], expected)
    np.testing.assert_allclose(
        noise.flatten()[:6].numpy(),
        [0.18077159, -0.06998809, -0.35962349, -0.91520447, 0.62576532, 0.02550992],
        atol=1e-7,
    )


def test_philox_known_answer_vectors():
    """Philox4x32-10 known-answer tests of the Random123 distribution (kat_vectors)."""
    zero = np.zeros(1, dtype=np.uint64)
    ones = np.full(1, 0xFFFFFFFF, dtype=np.uint64)
    pi = [np.array([v], dtype=np.uint64) for v in (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344)]
    cases = [
        ([zero] * 4, (0, 0), [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([ones] * 4, (0xFFFFFFFF, 0xFFFFFFFF), [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (pi, (0xA4093822, 0x299F31D0), [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for counter, key, expected in cases:
        assert [int(lane[0]) for lane in philox4x32(counter, key)] == expected


def test_nv_noise_matches_published_values():
    """``rng_philox`` documents ``Generator(seed=0).randn(shape=(3, 4))`` (the numbers torch.randn gives on
    an NVIDIA GPU); the CPU imitation agrees with them to a few float32 ulps."""
    published = [
        [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
        [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
    ]
    np.testing.assert_allclose(philox_randn(0, (3, 4)), published, atol=5e-7)


def test_nv_noise_pinned_bit_exact_values():
    """Seed 1337, shape (4, 64, 64): values of the WebUI's ``rng_philox.Generator(1337).randn`` run with
    numpy (float32-rounded Box-Muller constants, float64 arithmetic), which this implementation
    reproduces bit for bit."""
    noise = philox_randn(1337, (4, 64, 64))
    assert noise.dtype == np.float32
    np.testing.assert_array_equal(
        noise.flatten()[:6],
        np.array([-0.21431197, -0.50009036, 0.49224854, 1.2005985, -0.8337596, -0.8490455], dtype=np.float32),
    )
    np.testing.assert_array_equal(
        noise[3, 63, 60:], np.array([-2.030706, 1.2511104, -1.1305195, -0.10543453], dtype=np.float32)
    )
    assert torch.equal(initial_noise(1337, (4, 64, 64), "nv")[0], torch.from_numpy(noise))


def test_nv_noise_is_standard_normal_and_uses_64_bit_seeds():
    noise = philox_randn(42, (4, 128, 128))
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    # The key is the full 64-bit seed: seeds 5 and 2**32 + 5 differ.
    assert not np.array_equal(philox_randn(5, (16,)), philox_randn(2**32 + 5, (16,)))
    # The offset (later draws of the same generator) changes the counter, not the key.
    assert not np.array_equal(philox_randn(5, (16,)), philox_randn(5, (16,), offset=1))


def test_noise_source_errors():
    with pytest.raises(InputError, match="cuda"):
        initial_noise(1, (4, 8, 8), "gpu", device="cpu")
    with pytest.raises(InputError, match="unknown"):
        initial_noise(1, (4, 8, 8), "mps")


def test_latent_shape():
    assert latent_shape(512, 768) == (4, 96, 64)
    assert math.prod(latent_shape(64, 64)) == 256
