"""Perceptual hash (DCT pHash): similarity of the coarse layout, robust to resizing and JPEG.

The hash is ``imagehash.phash`` (the ImageHash library, after Neal Krawetz's "Looks Like It"), used
as it is so that cfgsim's hashes are the ones other tools compute and publish:

1. greyscale (ITU-R 601-2 luma, Pillow's ``convert("L")``, 8-bit);
2. resize to (4·hash_size)² pixels with Lanczos (32×32 for the default 8);
3. 2-D DCT-II (``scipy.fftpack.dct`` along columns, then rows; unnormalised);
4. keep the hash_size × hash_size lowest frequencies, the DC term included;
5. each bit: coefficient above the block's median; bits in row order, first bit most significant
   in the hexadecimal form (``str(imagehash.ImageHash)``).

Similarity = 1 − Hamming distance / bits: 1.0 identical, about 0.5 for unrelated images, 0 for a
hash and its complement. It ignores fine texture entirely, so it complements SSIM: two probes with
the same composition but different rendering score high here and lower in SSIM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.metrics.base import Metric, check_images

__all__ = ["PhashMetric", "phash", "phash_hex"]


def phash(image: np.ndarray | Image.Image, *, hash_size: int = 8) -> np.ndarray:
    """The perceptual hash of ``image`` (uint8 (H, W, 3) array or PIL image) as hash_size² booleans,
    exactly ``imagehash.phash(image, hash_size).hash`` flattened in row order."""
    import imagehash  # imports scipy.fftpack and PyWavelets: only when a hash is wanted

    if not isinstance(hash_size, (int, np.integer)) or hash_size < 2:
        raise ValueError(f"hash_size must be an integer >= 2, not {hash_size!r}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(check_images([image], metric="phash", same_size=False)[0])
    return np.asarray(imagehash.phash(image, hash_size=int(hash_size)).hash, dtype=bool).reshape(-1)


def phash_hex(bits: np.ndarray) -> str:
    """A hash from :func:`phash` as hexadecimal text, as ``str(imagehash.ImageHash)`` writes it: the
    bits in row order as one binary number, first bit most significant (16 digits for 64 bits)."""
    bits = np.asarray(bits, dtype=bool).reshape(-1)
    if bits.size == 0:
        return ""
    value = int("".join("1" if b else "0" for b in bits), 2)
    return f"{value:0{math.ceil(bits.size / 4)}x}"


class PhashMetric(Metric):
    """DCT perceptual hash similarity, ``1 − Hamming / bits``; images may differ in size.

    Option: ``hash_size`` (default 8: 64 bits).
    """

    name = "phash"
    label = "pHash"
    description = (
        "DCT perceptual hash, 1 - Hamming/bits (64 bits): higher is more similar, 0..1, "
        "1 = identical hash, about 0.5 for unrelated images"
    )
    same_size = False

    def __init__(self, *, hash_size: int = 8) -> None:
        if not isinstance(hash_size, (int, np.integer)) or hash_size < 2:
            raise InputError(f"phash: hash_size must be an integer >= 2, not {hash_size!r}")
        self.hash_size = int(hash_size)

    def settings(self) -> dict[str, Any]:
        return {"hash_size": self.hash_size}

    def prepare(self, images: Sequence[Any]) -> list[np.ndarray]:
        arrays = check_images(images, metric=self.name, same_size=False)
        return [phash(arr, hash_size=self.hash_size) for arr in arrays]

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        if a.shape != b.shape:
            raise InputError(f"phash: hashes of different lengths ({a.size} and {b.size} bits)")
        return 1.0 - float(np.count_nonzero(a != b)) / a.size

    def matrix(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        n = len(prepared)
        if n == 0:
            return np.eye(0)
        bits = np.stack(prepared).astype(np.float64)
        # Hamming distances of all pairs at once: disagreements are 1·0 or 0·1 products.
        distance = bits @ (1.0 - bits).T
        distance += distance.T
        out = 1.0 - distance / bits.shape[1]
        np.fill_diagonal(out, 1.0)
        return out
