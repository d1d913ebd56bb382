"""The WebUI's discrete noise schedule for SD 1.x, written from the algorithm (k-diffusion's).

The WebUI wraps the ldm model in k-diffusion's ``CompVisDenoiser`` (a ``DiscreteSchedule``): the
model's 1000 training noise levels become sigmas, a sampler's N steps are spaced evenly in
*timestep* between 999 and 0 with the log-sigma interpolated linearly between neighbouring levels
(``get_sigmas``/``t_to_sigma``), and the UNet is called with the fractional timestep of each sigma
(``sigma_to_t``, the inverse interpolation). Every step here runs in float32, like the WebUI's
buffers, in the same order of operations, so the sigmas and timesteps agree to the last bit or two.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cfgsim.errors import InputError

if TYPE_CHECKING:
    import torch

# SD 1.x training schedule ("scaled linear" in diffusers, "linear" in ldm's configs).
SD1_BETA_START = 0.00085
SD1_BETA_END = 0.012
SD1_TRAIN_TIMESTEPS = 1000


def alphas_cumprod(
    beta_start: float = SD1_BETA_START,
    beta_end: float = SD1_BETA_END,
    num_train_timesteps: int = SD1_TRAIN_TIMESTEPS,
    beta_schedule: str = "scaled_linear",
) -> torch.Tensor:
    """The model's cumulative alpha products, float32, as ldm's ``register_schedule`` stores them.

    ldm computes the betas in float64 (square of a linear ramp between the square roots for SD's
    "linear" schedule), takes the cumulative product of ``1 - beta`` in float64 and only then
    rounds to float32; so does this.
    """
    import torch

    if beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        raise InputError(f"beta schedule {beta_schedule!r} is not supported (scaled_linear or linear)")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiscreteSchedule:
    """Sigmas of a discrete-time eps-prediction model and the timestep ↔ sigma maps (see module doc).

    ``sigmas[t]`` is ``sqrt((1 - ᾱ_t) / ᾱ_t)`` for training timestep t (ascending in t).
    """

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        import torch

        ac = alphas_cumprod.to(torch.float32)
        self.alphas_cumprod = ac
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def get_sigmas(self, n: int) -> torch.Tensor:
        """``n`` sigmas from the highest noise level down, evenly spaced in timestep, then a final 0."""
        import torch

        if n < 1:
            raise InputError(f"steps {n}: at least one step is needed")
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at fractional timestep ``t``: log-sigma interpolated between the two levels around it."""
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep of ``sigma`` (inverse of :meth:`t_to_sigma`), as the UNet receives it.

        The level below is the last one whose log-sigma is <= log(sigma) (clamped so that a level
        above exists), and the weight is clamped to [0, 1]: sigmas outside the trained range map to
        timestep 0 or 999.
        """
        import torch

        log_sigma = sigma.float().log()
        n = self.log_sigmas.shape[0]
        low_idx = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, n - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma.reshape(-1)) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)


def ddim_timesteps(steps: int, num_train_timesteps: int = SD1_TRAIN_TIMESTEPS) -> list[int]:
    """The WebUI's DDIM timesteps (A1111 ``CompVisSampler.get_timesteps``): uniform, shifted by one.

    ``range(0, T, T // steps) + 1``, clipped to ``T - 1``. At 1000 steps this is 1..999 followed by
    a second 999 (the clip), and the sampler skips index 0: these quirks are the WebUI's, kept so
    that its DDIM images are reproduced.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise InputError(f"DDIM steps {steps}: must be between 1 and {num_train_timesteps}")
    stride = num_train_timesteps // steps
    return [min(max(t + 1, 0), num_train_timesteps - 1) for t in range(0, num_train_timesteps, stride)]
