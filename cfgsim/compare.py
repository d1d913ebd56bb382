"""Comparison: N×N similarity matrices per metric and row, and scores against a reference.

Every image is loaded and prepared once per metric (embeddings, local statistics); matrices and
reference scores are then cheap. Images of different sizes are brought to one size first
(:func:`cfgsim.imageio.common_size`) and the policy is recorded in the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from cfgsim.errors import InputError
from cfgsim.imageio import common_size, to_array
from cfgsim.metrics import METRICS, get_metric
from cfgsim.result import MetricScores, ProbeResult

DEFAULT_METRICS = ("ssim",)


def parse_metric_names(names: str | Sequence[str]) -> list[str]:
    """``"ssim,clip"`` or ``["ssim", "clip"]`` → validated, de-duplicated names in order."""
    if isinstance(names, str):
        names = [n for n in (part.strip().lower() for part in names.split(",")) if n]
    out: list[str] = []
    for name in names:
        if name not in METRICS:
            raise InputError(f"metric {name!r} is unknown (known: {', '.join(METRICS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise InputError("metrics: at least one metric is needed")
    return out


def build_metrics(names: Sequence[str], options: dict[str, dict] | None = None) -> list:
    """Metric objects for ``names``; ``options[name]`` are keyword options for that metric."""
    options = options or {}
    return [get_metric(name, **options.get(name, {})) for name in parse_metric_names(names)]


def load_metrics(metrics: Sequence) -> None:
    """Load what each metric needs (the CLIP model) now, so a missing model fails before a long run."""
    for metric in metrics:
        load = getattr(metric, "load", None)
        if callable(load):
            load()


def compare(
    result: ProbeResult,
    metrics: Sequence,
    *,
    progress: Callable[[Sequence], Iterable] | None = None,
) -> ProbeResult:
    """Fill ``result.scores`` (one :class:`MetricScores` per metric) from the result's cell images.

    Per row: an N×N matrix over all items, NaN where an item has no image in that row. With a
    reference, each item's score against it per row (NaN for the reference item itself).
    """
    n = len(result.items)
    ok_cells = [c for c in result.cells if c.ok]
    arrays = [to_array(c.image) for c in ok_cells]
    ref = result.reference
    external = ref.kind == "image"
    if external:
        if ref.image is None:
            raise InputError(f"reference {ref.label or ref.file!r}: no image")
        arrays.append(to_array(ref.image))
    if not arrays:
        result.scores = {}
        return result
    arrays, result.size_policy = common_size(arrays)
    position = {(c.item, c.row): k for k, c in enumerate(ok_cells)}

    scores: dict[str, MetricScores] = {}
    for metric in progress(metrics) if progress else metrics:
        prepared = metric.prepare(arrays)
        per_row: list[np.ndarray] = []
        vs_reference: list[np.ndarray] | None = [] if ref.kind in ("item", "image") else None
        for row in range(len(result.rows)):
            present = [i for i in range(n) if (i, row) in position]
            matrix = np.full((n, n), np.nan)
            if present:
                sub = metric.matrix([prepared[position[(i, row)]] for i in present])
                matrix[np.ix_(present, present)] = sub
            per_row.append(matrix)
            if vs_reference is not None:
                if external:
                    vec = np.full(n, np.nan)
                    for i in present:
                        vec[i] = metric.score(prepared[-1], prepared[position[(i, row)]])
                else:
                    vec = matrix[ref.index].copy()
                    vec[ref.index] = np.nan
                vs_reference.append(vec)
        scores[metric.name] = MetricScores(
            metric=metric.name,
            label=getattr(metric, "label", metric.name.upper()),
            description=getattr(metric, "description", ""),
            per_row=per_row,
            vs_reference=vs_reference,
        )
    result.scores = scores
    return result
