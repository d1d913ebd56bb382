"""The metric interface shared by every similarity metric.

A metric turns N images into an N×N similarity matrix in two steps, so that the expensive per-image
work (local statistics, embeddings, hashes) is done once per image however many pairs it is in:

* :meth:`Metric.prepare` takes the images and returns one prepared object per image;
* :meth:`Metric.score` compares two prepared objects; :meth:`Metric.matrix` compares all of them.

Every score is a similarity where 1.0 means identical; each metric's ``description`` states its
direction and range. Metrics never draw and never load anything on import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.imageio import to_array

__all__ = ["Metric", "check_images"]


def check_images(images: Sequence[Any], *, metric: str, same_size: bool) -> list[np.ndarray]:
    """``images`` as uint8 (H, W, 3) arrays (PIL images are converted), validated for ``metric``.

    With ``same_size`` every image must have the first one's size; the error says how to get there.
    """
    arrays: list[np.ndarray] = []
    for index, img in enumerate(images):
        try:
            arrays.append(to_array(img))
        except InputError as exc:
            raise InputError(f"{metric}: image #{index}: {exc}") from None
    if same_size and arrays:
        first = arrays[0].shape
        for index, arr in enumerate(arrays[1:], start=1):
            if arr.shape != first:
                raise InputError(
                    f"{metric} compares pixel by pixel and needs images of one size: image #0 is "
                    f"{first[1]}x{first[0]}, image #{index} is {arr.shape[1]}x{arr.shape[0]} "
                    "(bring them to one size first with cfgsim.imageio.common_size)"
                )
    return arrays


class Metric:
    """Base class of the similarity metrics. Subclasses set the class attributes and implement
    :meth:`prepare` and :meth:`score`; they may override :meth:`matrix` with a faster batched form
    that gives the same values."""

    #: Registry key and the name used on the command line and in metadata.
    name: ClassVar[str] = ""
    #: Short text for image overlays and table headers, e.g. "SSIM".
    label: ClassVar[str] = ""
    #: One line: what is measured, direction and range.
    description: ClassVar[str] = ""
    #: Whether :meth:`prepare` needs all images at one size (pixel-aligned metrics do).
    same_size: ClassVar[bool] = True

    def settings(self) -> dict[str, Any]:
        """The options that determine the scores, JSON-serialisable, for the output metadata."""
        return {}

    def load(self) -> None:
        """Load whatever the metric needs (a model) now rather than on first use; a no-op by default.

        Callers use it to fail early, before a long run, when a model is missing.
        """

    def prepare(self, images: Sequence[Any]) -> list:
        """One prepared object per image (uint8 (H, W, 3) arrays or PIL images)."""
        raise NotImplementedError

    def score(self, a: Any, b: Any) -> float:
        """Similarity of two prepared images; 1.0 means identical."""
        raise NotImplementedError

    def matrix(self, prepared: Sequence[Any]) -> np.ndarray:
        """N×N float64 similarity matrix: symmetric, with a diagonal of exactly 1.0."""
        if any(isinstance(p, Image.Image) for p in prepared):
            prepared = self.prepare(list(prepared))
        n = len(prepared)
        out = np.eye(n, dtype=np.float64)
        for i in range(n):
            for j in range(i + 1, n):
                out[i, j] = out[j, i] = self.score(prepared[i], prepared[j])
        return out

    def compare(self, images: Sequence[Any]) -> np.ndarray:
        """Convenience: ``matrix(prepare(images))``."""
        return self.matrix(self.prepare(images))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # ``matrix`` takes prepared objects; given PIL images (the natural first try) it prepares
        # them itself instead of failing deep inside with "'Image' object has no attribute 'shape'".
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("matrix")
        if own is None:
            return

        def matrix(self: Metric, prepared: Sequence[Any]) -> np.ndarray:
            if any(isinstance(p, Image.Image) for p in prepared):
                prepared = self.prepare(list(prepared))
            return own(self, prepared)

        matrix.__doc__ = own.__doc__
        matrix.__name__ = "matrix"
        cls.matrix = matrix  # type: ignore[method-assign]

    def __repr__(self) -> str:
        options = "".join(f" {k}={v!r}" for k, v in self.settings().items())
        return f"<{type(self).__name__}{options}>"
