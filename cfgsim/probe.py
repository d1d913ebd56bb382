"""The run loop shared by every host: checkpoints × seeds → images → comparison → result.

Cells are executed checkpoint by checkpoint (all seeds of one checkpoint before the next, so each
is loaded once), starting with the checkpoint the host has loaded now; the grid keeps the user's
order. A failing checkpoint becomes failed cells and the run goes on; non-SD1 checkpoints are
skipped with the reason; an interrupt ends the run after the current image and what was done is
still compared.

The work is cut into :class:`Job`\\ s — one per checkpoint, its seeds that are still to be made —
and handed to an *executor*: :class:`LocalExecutor` runs them one after another on the host (the
WebUI script, the standalone runner); :mod:`cfgsim.remote` spreads them over several WebUI servers
and :mod:`cfgsim.distributed` over a Ray cluster. Every executor reports into one :class:`Sink`,
which fills the cells, writes each finished image into the probe library at once (so a crash or
an interrupt keeps it) and drives the progress display.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cfgsim.compare import compare, load_metrics
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, Host, ProbeInterrupted
from cfgsim.result import FAILED, OK, SKIPPED, Cell, ProbeResult, Reference
from cfgsim.spec import ProbeSpec

if TYPE_CHECKING:
    from cfgsim.library import ProbeLibrary

log = logging.getLogger(__name__)

INTERRUPTED_REASON = "not run: interrupted"
LIBRARY_ORIGIN = "library"


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


@dataclass
class Job:
    """One checkpoint's images still to make: its grid column and the rows (seeds) not yet done."""

    column: int
    checkpoint: Checkpoint
    rows: list[int]
    seeds: list[int]

    def describe(self, seeds: Sequence[int] | None = None) -> str:
        seeds = list(self.seeds if seeds is None else seeds)
        what = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        return f"{self.checkpoint.label} — {what}"


@dataclass
class Sink:
    """Where executors report finished, failed and skipped cells (thread-safe).

    ``deliver`` fills a cell and stores the image in the library straight away; ``progress`` goes
    to the host's progress display; ``stopped`` is true once the user asked to stop (the host's
    interrupt, or a :class:`ProbeInterrupted` raised during an image).
    """

    host: Host
    spec: ProbeSpec
    cells: dict[tuple[int, int], Cell]
    result: ProbeResult
    library: ProbeLibrary | None = None
    library_key: str = ""
    identities: dict[int, str] = field(default_factory=dict)
    done: int = 0
    _stop: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def total(self) -> int:
        return len(self.cells)

    def stopped(self) -> bool:
        if not self._stop and self.host.interrupted():
            self._stop = True
        return self._stop

    def stop(self) -> None:
        self._stop = True

    def progress(self, job: str) -> None:
        with self._lock:
            self.host.progress(self.done, self.total, job)

    def deliver(self, job: Job, row: int, generated: Generated) -> None:
        with self._lock:
            cell = self.cells[(job.column, row)]
            cell.status, cell.reason = OK, ""
            cell.image, cell.infotext = generated.image, generated.infotext
            for key, value in generated.settings.items():
                self.result.environment.setdefault(key, value)
            self.done += 1
            identity = self.identities.get(job.column)
            if self.library is not None and identity:
                self.library.store(
                    identity,
                    self.library_key,
                    self.spec.seeds[row],
                    generated,
                    checkpoint=job.checkpoint,
                )

    def fail(self, job: Job, rows: Sequence[int], reason: str) -> None:
        self._mark(job, rows, FAILED, reason, count=True)

    def skip(self, job: Job, rows: Sequence[int], reason: str, *, count: bool = True) -> None:
        self._mark(job, rows, SKIPPED, reason, count=count)

    def _mark(self, job: Job, rows: Sequence[int], status: str, reason: str, *, count: bool) -> None:
        with self._lock:
            for row in rows:
                cell = self.cells[(job.column, row)]
                cell.status, cell.reason = status, reason
            if count:
                self.done += len(rows)


class Executor(Protocol):
    """Runs jobs on a host and reports each cell into the sink; returns when all are settled."""

    def execute(self, host: Host, spec: ProbeSpec, jobs: Sequence[Job], sink: Sink) -> None: ...


class LocalExecutor:
    """Jobs one after another on the host, each checkpoint's seeds in batches of the host's
    ``batch_size`` when it can batch them (``generate_many``): one UNet call per step per batch."""

    def execute(self, host: Host, spec: ProbeSpec, jobs: Sequence[Job], sink: Sink) -> None:
        batch = host_batch_size(host)
        for job in jobs:
            run_job(host, spec, job, sink, batch)


def host_batch_size(host: Host) -> int:
    """Seeds per call: the host's ``batch_size`` when it can batch (``generate_many``), else 1."""
    return max(1, int(getattr(host, "batch_size", 1) or 1)) if hasattr(host, "generate_many") else 1


def make_images(host: Host, checkpoint: Checkpoint, spec: ProbeSpec, seeds: Sequence[int]) -> list[Generated]:
    """The images of ``seeds`` (one batch) from the host: ``generate`` for one, ``generate_many``
    for more."""
    if len(seeds) == 1:
        return [host.generate(checkpoint, spec, seeds[0])]
    return list(host.generate_many(checkpoint, spec, list(seeds)))  # type: ignore[attr-defined]


def run_job(host: Host, spec: ProbeSpec, job: Job, sink: Sink, batch: int = 1) -> None:
    """One checkpoint's job on one host, in batches; failures become failed cells, a load error
    fails the rest of the checkpoint at once, an interrupt skips what is left."""
    load_error: str | None = None
    for start in range(0, len(job.rows), batch):
        rows = job.rows[start : start + batch]
        seeds = [spec.seeds[r] for r in rows]
        if sink.stopped():
            sink.skip(job, rows, INTERRUPTED_REASON, count=False)
            continue
        if load_error:
            sink.fail(job, rows, load_error)
            continue
        sink.progress(job.describe(seeds))
        try:
            made = make_images(host, job.checkpoint, spec, seeds)
        except ProbeInterrupted:
            sink.stop()
            sink.skip(job, rows, INTERRUPTED_REASON, count=False)
            continue
        except CheckpointLoadError as exc:
            load_error = error_text(exc)
            sink.fail(job, rows, load_error)
            log.warning("%s could not be loaded: %s", job.checkpoint.label, load_error)
        except Exception as exc:  # a failed cell is reported on the grid; the run goes on
            sink.fail(job, rows, error_text(exc))
            log.warning("%s %s failed: %s", job.checkpoint.label, job.describe(seeds), error_text(exc))
        else:
            for row, generated in zip(rows, made, strict=True):
                sink.deliver(job, row, generated)


def library_checkpoints(library: ProbeLibrary, key: str, known: set[str]) -> list[Checkpoint]:
    """Checkpoints probed before under the same settings and host (``key``), not among ``known``
    content identities: labelled as from the library."""
    extra = []
    for entry in library.checkpoints(key):
        if entry.sha256 in known:
            continue
        extra.append(
            Checkpoint(
                name=entry.name,
                label=f"{entry.label} (library)",
                model_hash=entry.model_hash,
                sha256=entry.sha256,
                architecture=entry.architecture,
                origin=LIBRARY_ORIGIN,
            )
        )
    return extra


def unique_labels(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Library columns whose label clashes get the short hash appended."""
    seen = {c.label for c in checkpoints if c.origin != LIBRARY_ORIGIN}
    out = []
    for checkpoint in checkpoints:
        c = checkpoint
        if c.origin == LIBRARY_ORIGIN and c.label in seen:
            c = dataclasses.replace(c, label=f"{c.label} [{(c.sha256 or '')[:10]}]")
        seen.add(c.label)
        out.append(c)
    return out


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
    executor: Executor | None = None,
    library: ProbeLibrary | None = None,
    with_library: bool = False,
) -> ProbeResult:
    """Probe every checkpoint under ``spec`` for each of its seeds and compare the images.

    ``lineage_options`` (``alpha``, ``replicates``) go to :func:`cfgsim.compare.compare`.

    ``metrics`` are metric objects (see :func:`cfgsim.compare.build_metrics`); they are loaded
    before the first image so that a missing CLIP model fails in seconds, not after the run.

    ``library``: a :class:`cfgsim.library.ProbeLibrary`. Cells it holds for the checkpoint's content
    (sha256) under the same settings and host are taken from it (such a checkpoint is not even
    loaded when all its seeds are there); every new image is stored in it as soon as it is made.
    ``with_library``: also compare every checkpoint the library holds under the same settings and
    host, labelled "(library)".
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

    environment = dict(host.environment())
    key = ""
    identities: dict[int, str] = {}
    checkpoints = list(checkpoints)
    if library is not None:
        from cfgsim.library import settings_key

        key = settings_key(spec, host.name, environment)
        for i, checkpoint in enumerate(checkpoints):
            if checkpoint.probe_skip_reason:
                continue
            identity = library.identity(checkpoint, getattr(host, "file_of", lambda c: c.file)(checkpoint))
            if identity:
                identities[i] = identity
        if with_library:
            extra = library_checkpoints(library, key, set(identities.values()))
            checkpoints = unique_labels(checkpoints + extra)
            for i in range(len(checkpoints) - len(extra), len(checkpoints)):
                identities[i] = checkpoints[i].sha256 or ""

    result = ProbeResult(
        spec=spec,
        items=checkpoints,
        rows=list(spec.seeds),
        row_axis="Seed",
        reference=reference,
        environment=environment,
        host=host.name,
        preset=preset,
        deviations=list(deviations),
    )
    cells = {(i, r): Cell(item=i, row=r) for i in range(len(checkpoints)) for r in range(len(spec.seeds))}
    sink = Sink(host, spec, cells, result, library, key, identities)

    jobs: list[Job] = []
    from_library = 0
    for i in execution_order(checkpoints, host.current_checkpoint()):
        checkpoint = checkpoints[i]
        job = Job(i, checkpoint, [], [])
        skip = checkpoint.probe_skip_reason
        if skip:
            sink.skip(job, range(len(spec.seeds)), skip)
            continue
        for row, seed in enumerate(spec.seeds):
            hit = None
            if library is not None and i in identities:
                hit = library.lookup(identities[i], key, seed)
            if hit is not None:
                cell = cells[(i, row)]
                cell.status, cell.image, cell.infotext = OK, hit.image, hit.infotext
                cell.origin = LIBRARY_ORIGIN
                sink.done += 1
                from_library += 1
            elif checkpoint.origin == LIBRARY_ORIGIN:
                sink.skip(job, [row], f"not in the library for seed {seed}")
            else:
                job.rows.append(row)
                job.seeds.append(seed)
        if job.rows:
            jobs.append(job)
    if from_library:
        log.info("%d of %d images from the probe library (%s)", from_library, len(cells), library.root)

    (executor or LocalExecutor()).execute(host, spec, jobs, sink)
    for job in jobs:  # anything an executor left unsettled (a stop before it started) is skipped
        rest = [r for r in job.rows if not cells[(job.column, r)].ok and cells[(job.column, r)].status == OK]
        if rest:
            sink.skip(job, rest, INTERRUPTED_REASON, count=False)
    host.progress(sink.done, sink.total, "comparing")
    result.interrupted = sink._stop
    result.cells = [cells[(i, r)] for r in range(len(spec.seeds)) for i in range(len(checkpoints))]
    return compare(result, metrics, **dict(lineage_options or {}))
