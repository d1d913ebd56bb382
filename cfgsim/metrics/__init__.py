"""Similarity metrics and their registry.

Every metric scores a pair of images as a similarity where 1.0 means identical (see
:class:`~cfgsim.metrics.base.Metric` for the interface and each class's ``description`` for direction
and range). Metrics are looked up by name::

    metric = get_metric("ssim")
    matrix = metric.matrix(metric.prepare(images))   # N×N, symmetric, diagonal 1.0

Raw-value helpers shaped like scikit-image's live in the submodules:
:func:`cfgsim.metrics.ssim.ssim`, :func:`cfgsim.metrics.pixel.psnr`, :func:`cfgsim.metrics.pixel.rmse`,
:func:`cfgsim.metrics.phash.phash`. Importing this package loads no model and imports no torch.
"""

from __future__ import annotations

import inspect
from typing import Any

from cfgsim.errors import InputError
from cfgsim.metrics.base import Metric
from cfgsim.metrics.clip import ClipMetric
from cfgsim.metrics.phash import PhashMetric
from cfgsim.metrics.pixel import PsnrMetric, RmseMetric
from cfgsim.metrics.ssim import SsimMetric

__all__ = [
    "METRICS",
    "ClipMetric",
    "Metric",
    "PhashMetric",
    "PsnrMetric",
    "RmseMetric",
    "SsimMetric",
    "available_metrics",
    "get_metric",
]

#: Metric classes by name, in the order they are offered to users.
METRICS: dict[str, type[Metric]] = {
    cls.name: cls for cls in (SsimMetric, ClipMetric, PhashMetric, PsnrMetric, RmseMetric)
}


def available_metrics() -> list[str]:
    """Names of the registered metrics, in registry order."""
    return list(METRICS)


def get_metric(name: str, **options: Any) -> Metric:
    """A new metric object for ``name`` with keyword ``options``.

    Unknown names and options raise :class:`~cfgsim.errors.InputError` listing what is known.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    cls = METRICS.get(key)
    if cls is None:
        raise InputError(f"metric {name!r} is unknown (known: {', '.join(METRICS)})")
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"metric {key!r}: unknown option(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(accepted) or 'none'})"
        )
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"metric {key!r}: {exc}") from None
