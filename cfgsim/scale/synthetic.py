"""Synthetic probe-like images in families, for the scale tests and ``benchmarks/bench_scale.py``.

A probe image of a checkpoint is a picture shared, more or less, by its relatives. The stand-in:

* a **family** has a base: a smooth random colour field, the sum of Gaussian noise upsampled
  (bicubic) from 8², 32² and 128² to the image size, so it has structure at coarse, middle and fine
  scales as a picture does;
* a family has a few **branches** (fine-tunes of the base): base + 0.35 · a new field;
* a **member** is its branch plus a perturbation of log-uniform strength 0.08 … 1.2 (a new field),
  plus pixel noise (σ = 3 of 255); one member in ten is a **merge**: a mix of its branch and another
  family's base.

So a member's nearest relatives by SSIM are mostly its own family, the less perturbed first, with
merges linking families: "nearest relatives" is meaningful and not trivial. Everything is drawn
from one seed; :func:`family_image` makes item ``i`` alone (so a loader can make items on demand).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["FamilySet", "family_set", "smooth_field"]


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(grid.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BICUBIC)
    )


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float field of unit scale with structure at three scales."""
    field = np.zeros((size, size, 3), dtype=np.float32)
    for grid, weight in ((8, 1.0), (32, 0.5), (128, 0.3)):
        cells = min(grid, size)
        for c in range(3):
            field[:, :, c] += weight * _upsample(rng.normal(size=(cells, cells)), size)
    return field


@dataclass(frozen=True)
class FamilySet:
    """The recipe of ``n`` synthetic items: per item its family, branch, strength and merge partner."""

    n: int
    size: int
    seed: int
    family: np.ndarray  # (n,) family of each item
    branch: np.ndarray  # (n,) branch within the family
    strength: np.ndarray  # (n,) perturbation strength
    partner: np.ndarray  # (n,) the other family of a merge, -1 if none

    def image(self, index: int) -> np.ndarray:
        """Item ``index`` as a uint8 (size, size, 3) array; the same every time."""
        return family_image(self, index)


def family_set(n: int, size: int = 512, seed: int = 0, family_size: tuple[int, int] = (8, 32)) -> FamilySet:
    """The recipe of ``n`` items in families of ``family_size`` members (uniform, inclusive)."""
    rng = np.random.default_rng(seed)
    family = []
    f = 0
    while len(family) < n:
        family += [f] * int(rng.integers(family_size[0], family_size[1] + 1))
        f += 1
    fam = np.asarray(family[:n])
    n_families = int(fam.max()) + 1
    branch = rng.integers(0, 3, size=n)
    strength = np.exp(rng.uniform(np.log(0.08), np.log(1.2), size=n))
    merge = rng.random(n) < 0.1
    other = (fam + rng.integers(1, max(2, n_families), size=n)) % max(1, n_families)
    partner = np.where(merge & (n_families > 1), other, -1)
    return FamilySet(n, size, seed, fam, branch, strength, partner)


def _field(seed: int, size: int, *key: int) -> np.ndarray:
    return smooth_field(np.random.default_rng([seed, *key]), size)


def family_image(fs: FamilySet, index: int) -> np.ndarray:
    f, b = int(fs.family[index]), int(fs.branch[index])
    base = _field(fs.seed, fs.size, 1, f)
    field = base + 0.35 * _field(fs.seed, fs.size, 2, f, b)
    if fs.partner[index] >= 0:
        field = 0.6 * field + 0.4 * _field(fs.seed, fs.size, 1, int(fs.partner[index]))
    rng = np.random.default_rng([fs.seed, 3, index])
    field = field + float(fs.strength[index]) * smooth_field(rng, fs.size)
    pixels = 128.0 + 45.0 * field + rng.normal(0.0, 3.0, field.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
