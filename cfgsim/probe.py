"""The run loop shared by every host: checkpoints × seeds → images → comparison → result.

Cells are executed checkpoint by checkpoint (all seeds of one checkpoint before the next, so each
is loaded once), starting with the checkpoint the host has loaded now; the grid keeps the user's
order. A failing checkpoint becomes failed cells and the run goes on; non-SD1 checkpoints are
skipped with the reason; an interrupt ends the run after the current image and what was done is
still compared.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cfgsim.compare import compare, load_metrics
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, Host, ProbeInterrupted
from cfgsim.result import FAILED, OK, SKIPPED, Cell, ProbeResult, Reference
from cfgsim.spec import ProbeSpec

log = logging.getLogger(__name__)

INTERRUPTED_REASON = "not run: interrupted"


def check_labels(labels: Sequence[str], what: str = "items") -> None:
    """Labels name grid columns and files: they must be unique and not empty."""
    seen: set[str] = set()
    for label in labels:
        if not label.strip():
            raise InputError(f"{what}: an empty label")
        if label in seen:
            raise InputError(f"{what}: the label {label!r} is used twice; labels must be unique")
        seen.add(label)


def execution_order(checkpoints: Sequence[Checkpoint], current: str | None) -> list[int]:
    """Column indices in the order to run them: the loaded checkpoint first, the rest as given."""
    order = list(range(len(checkpoints)))
    for i, checkpoint in enumerate(checkpoints):
        if current is not None and checkpoint.name == current:
            order.remove(i)
            order.insert(0, i)
            break
    return order


def error_text(exc: BaseException) -> str:
    """How a failure reads on a failed cell: "RuntimeError: CUDA out of memory"."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_probe(
    host: Host,
    checkpoints: Sequence[Checkpoint],
    spec: ProbeSpec,
    *,
    metrics: Sequence = (),
    reference: Reference | None = None,
    preset: str = "",
    deviations: Sequence[tuple[str, str, str]] = (),
    lineage_options: Mapping[str, Any] | None = None,
) -> ProbeResult:
    """Probe every checkpoint under ``spec`` for each of its seeds and compare the images.

    ``lineage_options`` (``alpha``, ``replicates``) go to :func:`cfgsim.compare.compare`.

    ``metrics`` are metric objects (see :func:`cfgsim.compare.build_metrics`); they are loaded
    before the first image so that a missing CLIP model fails in seconds, not after the run.
    """
    if not checkpoints:
        raise InputError("checkpoints: select at least one checkpoint to probe")
    check_labels([c.label for c in checkpoints], "checkpoints")
    reference = reference or Reference()
    if reference.kind == "item" and not (
        reference.index is not None and 0 <= reference.index < len(checkpoints)
    ):
        raise InputError(
            f"reference: item {reference.index} is not one of the {len(checkpoints)} checkpoints"
        )
    load_metrics(metrics)

    result = ProbeResult(
        spec=spec,
        items=list(checkpoints),
        rows=list(spec.seeds),
        row_axis="Seed",
        reference=reference,
        environment=dict(host.environment()),
        host=host.name,
        preset=preset,
        deviations=list(deviations),
    )
    cells = {(i, r): Cell(item=i, row=r) for i in range(len(checkpoints)) for r in range(len(spec.seeds))}
    total = len(cells)
    done = 0
    stopped = False
    # Seeds of one checkpoint go to the host together when it can batch them (``generate_many``
    # and ``batch_size``): one UNet call per step for the whole batch.
    batch = max(1, int(getattr(host, "batch_size", 1) or 1)) if hasattr(host, "generate_many") else 1
    for i in execution_order(checkpoints, host.current_checkpoint()):
        checkpoint = checkpoints[i]
        skip = checkpoint.probe_skip_reason
        load_error: str | None = None
        rows = list(range(len(spec.seeds)))
        for start in range(0, len(rows), batch):
            chunk = [cells[(i, r)] for r in rows[start : start + batch]]
            seeds = [spec.seeds[r] for r in rows[start : start + batch]]
            if stopped or (not skip and host.interrupted()):
                stopped = True
                for cell in chunk:
                    cell.status, cell.reason = SKIPPED, INTERRUPTED_REASON
                continue
            if skip or load_error:
                for cell in chunk:
                    cell.status, cell.reason = (SKIPPED, skip) if skip else (FAILED, load_error or "")
                done += len(chunk)
                continue
            what = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
            host.progress(done, total, f"{checkpoint.label} — {what}")
            try:
                if len(seeds) == 1:
                    made = [host.generate(checkpoint, spec, seeds[0])]
                else:
                    made = list(host.generate_many(checkpoint, spec, seeds))  # type: ignore[attr-defined]
            except ProbeInterrupted:
                stopped = True
                for cell in chunk:
                    cell.status, cell.reason = SKIPPED, INTERRUPTED_REASON
                continue
            except CheckpointLoadError as exc:
                load_error = error_text(exc)
                for cell in chunk:
                    cell.status, cell.reason = FAILED, load_error
                log.warning("%s could not be loaded: %s", checkpoint.label, load_error)
            except Exception as exc:  # a failed cell is reported on the grid; the run goes on
                for cell in chunk:
                    cell.status, cell.reason = FAILED, error_text(exc)
                log.warning("%s %s failed: %s", checkpoint.label, what, chunk[0].reason)
            else:
                for cell, generated in zip(chunk, made, strict=True):
                    cell.status, cell.image, cell.infotext = OK, generated.image, generated.infotext
                    for key, value in generated.settings.items():
                        result.environment.setdefault(key, value)
            done += len(chunk)
    host.progress(done, total, "comparing")
    result.interrupted = stopped
    result.cells = [cells[(i, r)] for r in range(len(spec.seeds)) for i in range(len(checkpoints))]
    return compare(result, metrics, **dict(lineage_options or {}))
