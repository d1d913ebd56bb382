"""Comparison: N×N similarity matrices per metric and row, and scores against a reference.

Every image is loaded and prepared once per metric (embeddings, local statistics); matrices and
reference scores are then cheap. Images of different sizes are brought to one size first
(:func:`cfgsim.imageio.common_size`) and the policy is recorded in the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from cfgsim import lineage
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
    alpha: float = lineage.DEFAULT_ALPHA,
    replicates: int = lineage.DEFAULT_REPLICATES,
    margin: float = lineage.DEFAULT_MARGIN,
) -> ProbeResult:
    """Fill ``result.scores`` (one :class:`MetricScores` per metric) from the result's cell images.

    Per row: an N×N matrix over all items, NaN where an item has no image in that row. With a
    reference, each item's score against it per row (NaN for the reference item itself).
    """
    n = len(result.items)
    ref = result.reference
    external = ref.kind == "image"
    if external and ref.image is None:
        raise InputError(f"reference {ref.label or ref.file!r}: no image")
    by_row: dict[int, dict[int, object]] = {}
    for cell in result.cells:
        if cell.ok:
            by_row.setdefault(cell.row, {})[cell.item] = cell.image
    if not by_row:
        result.scores = {}
        result.lineage = None
        return result
    ref_array = to_array(ref.image) if external else None

    # Row by row: a seed's images are brought to one size (the size policy applies per seed, so
    # seeds of different sizes are never stretched into each other) and prepared, compared, freed.
    # Memory is bounded by one row's prepared images, not the whole run's.
    rows_data: list[tuple[list[int], list[np.ndarray], dict]] = []
    for row in range(len(result.rows)):
        present = sorted(by_row.get(row, {}))
        arrays = [to_array(by_row[row][i]) for i in present]
        if ref_array is not None and present:
            arrays.append(ref_array)
        policy: dict = {}
        if arrays:
            arrays, policy = common_size(arrays)
        rows_data.append((present, arrays, policy))
    result.size_policy = _size_policy(result, [p for _, _, p in rows_data])

    scores: dict[str, MetricScores] = {}
    for metric in progress(metrics) if progress else metrics:
        per_row: list[np.ndarray] = []
        vs_reference: list[np.ndarray] | None = [] if ref.kind in ("item", "image") else None
        for present, arrays, _policy in rows_data:
            matrix = np.full((n, n), np.nan)
            vec = np.full(n, np.nan)
            if present:
                prepared = metric.prepare(arrays)
                matrix[np.ix_(present, present)] = metric.matrix(prepared[: len(present)])
                if external:
                    for k, i in enumerate(present):
                        vec[i] = metric.score(prepared[-1], prepared[k])
                del prepared
            if vs_reference is not None:
                if not external:
                    vec = matrix[ref.index].copy()
                    vec[ref.index] = np.nan
                vs_reference.append(vec)
            per_row.append(matrix)
        scores[metric.name] = MetricScores(
            metric=metric.name,
            label=getattr(metric, "label", metric.name.upper()),
            description=getattr(metric, "description", ""),
            per_row=per_row,
            vs_reference=vs_reference,
        )
    result.scores = scores
    result.lineage = lineage.analyse(result, alpha=alpha, replicates=replicates, margin=margin)
    return result


def _size_policy(result: ProbeResult, policies: Sequence[dict]) -> dict:
    """One record when every seed agrees (the common case); else what was done per seed."""
    used = [p for p in policies if p]
    if not used:
        return {}
    if len(used) == 1 or all(p == used[0] for p in used):
        return dict(used[0])
    return {
        "policy": "per-seed",
        "rows": [{"row": result.rows[r], **p} for r, p in enumerate(policies) if p],
    }
