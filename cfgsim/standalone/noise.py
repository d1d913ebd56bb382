"""The initial latent noise of a seed, from the WebUI's three sources (setting ``randn_source``).

The WebUI (``modules/rng.py``, ``ImageRNG.first``) draws one tensor of shape (4, H/8, W/8) per seed
from a generator seeded with that seed, and Euler draws nothing else that reaches the image, so
this tensor decides the picture. Sources:

* ``cpu`` — ``torch.randn`` from a CPU ``torch.Generator``: the same numbers on every machine.
* ``nv`` — the WebUI's "NV" source: the numbers an NVIDIA GPU's ``torch.randn`` gives for the seed,
  computed on the CPU with Philox 4x32-10 and a Box-Muller transform (``rng_philox.Generator``).
  Implemented here in numpy from the published algorithm. Images made with the WebUI's default
  "GPU" source on an NVIDIA card have this noise.
* ``gpu`` — ``torch.randn`` on the CUDA device itself (only with ``--device cuda``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cfgsim.errors import InputError

if TYPE_CHECKING:
    import torch

RNG_SOURCES = ("cpu", "nv", "gpu")
# The WebUI's names for the sources, as written in its infotext ("RNG: CPU").
RNG_LABELS = {"cpu": "CPU", "nv": "NV", "gpu": "GPU"}

# Philox 4x32 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
# the two round multipliers and the two Weyl-sequence increments of the key schedule.
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF

# Box-Muller maps two uint32 draws to (0, 1) and (0, 2π) with these factors. The reference (the
# WebUI's rng_philox, imitating curand) rounds them to float32 first and then computes in float64;
# copying that choice is what makes the output agree to the last float32 bit.
_INV_2_32 = float(np.float32(2.3283064e-10))
_INV_2_32_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32(counter: Sequence[np.ndarray], key: tuple[int, int], rounds: int = 10) -> list[np.ndarray]:
    """Philox 4x32: four uint32 counter lanes (arrays) and a 64-bit key → four uint32 output lanes."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
        p0 = c0 * np.uint64(_PHILOX_M0)  # < 2**64: exact in uint64
        p1 = c2 * np.uint64(_PHILOX_M1)
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(_MASK32)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(_MASK32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def philox_randn(seed: int, shape: Sequence[int], offset: int = 0) -> np.ndarray:
    """Standard normal float32 numbers as the WebUI's NV source draws them (``rng_philox.Generator.randn``).

    Element i uses the counter (offset, 0, i, 0) and the key (low, high 32 bits of the seed); of the
    four outputs the first two feed one Box-Muller transform, whose sine branch is the number.
    ``offset`` counts earlier draws from the same generator (0 for the initial latent).
    """
    n = math.prod(int(d) for d in shape)
    if n >= 2**32:
        raise InputError(f"NV noise: {n} numbers are more than one Philox counter lane can index")
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    index = np.arange(n, dtype=np.uint64)
    zeros = np.zeros(n, dtype=np.uint64)
    lanes = philox4x32(
        [zeros + np.uint64(offset & _MASK32), zeros, index, zeros], (seed & _MASK32, seed >> 32)
    )
    u = lanes[0].astype(np.float64) * _INV_2_32 + _INV_2_32 / 2
    v = lanes[1].astype(np.float64) * _INV_2_32_2PI + _INV_2_32_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(tuple(shape))


def latent_shape(width: int, height: int, channels: int = 4, factor: int = 8) -> tuple[int, int, int]:
    """(C, H/8, W/8): the shape the WebUI draws per seed."""
    return (channels, height // factor, width // factor)


def initial_noise(seed: int, shape: Sequence[int], source: str = "cpu", device: str = "cpu") -> torch.Tensor:
    """The seed's initial latent, float32, shape (1, *shape), on ``device`` (see module doc for sources).

    The WebUI multiplies it by the first sigma before Euler starts; that is the sampler's business.
    """
    import torch

    shape = tuple(int(d) for d in shape)
    if source == "cpu":
        generator = torch.Generator("cpu").manual_seed(int(seed))
        noise = torch.randn(shape, generator=generator, device="cpu")
    elif source == "nv":
        noise = torch.from_numpy(philox_randn(seed, shape))
    elif source == "gpu":
        if not str(device).startswith("cuda"):
            raise InputError("RNG source 'gpu' draws on the CUDA device: use --device cuda, or --rng nv")
        generator = torch.Generator(device).manual_seed(int(seed))
        noise = torch.randn(shape, generator=generator, device=device)
    else:
        raise InputError(f"RNG source {source!r} is unknown (known: {', '.join(RNG_SOURCES)})")
    return noise.to(device=device, dtype=torch.float32).unsqueeze(0)
