"""``RayExecutor``: the probe's jobs as Ray tasks, their cells streamed back into the driver's sink.

**One task per job.** A :class:`~cfgsim.probe.Job` is one checkpoint and its seeds still to make; it
becomes one Ray task, so a checkpoint is loaded once, on one node (model loading is the expensive
part of a job on a GPU: seconds per checkpoint against seconds per image). The task builds its own
runner from a small picklable :class:`~cfgsim.distributed.node.NodeSpec` and reads the checkpoint at
the path the driver gave (see :mod:`cfgsim.distributed` for shared vs per-node model folders).

**Streaming.** The task is a Ray *generator* task (:func:`~cfgsim.distributed.node.run_node_job`):
it yields one message per batch of seeds (per seed on the CPU) the moment the batch is made; the
driver waits on all running tasks at once (``ray.wait``) and hands each finished cell to
``sink.deliver`` at once, which writes it into the probe library and moves the progress bar. A
task per (checkpoint, batch) would stream as well but load the model once per batch; an actor per
GPU holding a model cache would avoid that too but leave worker death and retries to us. The
generator keeps one load per checkpoint *and* Ray's task retries.

**Failures.** A worker that dies (killed, out of host memory, node lost) is retried by Ray
(``max_retries``); so are the transient exceptions in ``retry_exceptions`` (default: connection
errors, timeouts, CUDA out of memory). A retried generator is replayed from its start and Ray drops
the messages the driver already has (the driver drops repeats too), so each cell arrives once. A
checkpoint that cannot be loaded on the node is never retried: its cells fail with the reason,
the other checkpoints go on. Any other error fails that batch's cells, as with the local executor.
When the retries are spent, the job's cells not yet made fail with the last error.

**Interrupt.** The driver checks the host's interrupt (and catches Ctrl-C) between waits: it
collects the cells already made, cancels the running tasks and leaves the rest skipped
("not run: interrupted"); what was delivered stays in the result and the library.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cfgsim.distributed.node import NodeSpec, from_png, run_node_job
from cfgsim.errors import InputError
from cfgsim.host import Generated
from cfgsim.probe import INTERRUPTED_REASON, Job, Sink, error_text

if TYPE_CHECKING:
    from cfgsim.host import Host
    from cfgsim.spec import ProbeSpec

log = logging.getLogger(__name__)

# Node environment entries that change pixels: a node that differs from the driver is reported.
COMPARED_SETTINGS = ("device", "precision", "randn_source", "runner")


def default_retry_exceptions() -> tuple[type[BaseException], ...]:
    """Transient errors worth running a task again for: a lost connection (a network file system,
    a remote store), a timeout, and CUDA out of memory (another process on a shared card)."""
    transient: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import torch

        transient.append(torch.cuda.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return tuple(transient)


@dataclass
class _Running:
    """One submitted job: which rows are settled (delivered, failed or skipped) and where it runs."""

    job: Job
    settled: set[int] = field(default_factory=set)
    node: str = ""

    def rest(self) -> list[int]:
        return [r for r in self.job.rows if r not in self.settled]


class RayExecutor:
    """Run the probe's jobs on a Ray cluster (see the module docstring); an :class:`~cfgsim.probe.Executor`.

    ``address``: the cluster (``ray.init(address)``; None: ``RAY_ADDRESS``, else a local instance
    started for this run and stopped after it). A Ray already initialised in this process is used
    as it is. ``num_cpus`` / ``num_gpus``: resources per task (default: one GPU and one CPU for a
    ``cuda`` host, one CPU for a ``cpu`` host). ``threads``: torch threads per CPU task (default:
    its ``num_cpus``). ``max_retries``: runs after a worker's death; ``retry_exceptions``: the
    transient exception types (see :func:`default_retry_exceptions`). ``host_factory``: builds the
    nodes' hosts (see :class:`NodeSpec`).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        threads: int | None = None,
        max_retries: int = 3,
        retry_exceptions: Sequence[type[BaseException]] | None = None,
        host_factory: Any = None,
        poll_seconds: float = 0.25,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.threads = threads
        self.max_retries = max_retries
        self.retry_exceptions = (
            default_retry_exceptions() if retry_exceptions is None else tuple(retry_exceptions)
        )
        self.host_factory = host_factory
        self.poll_seconds = poll_seconds
        self._started_ray = False
        self._warned: set[tuple[str, str]] = set()

    # -- the cluster --------------------------------------------------------------------------------

    def connect(self) -> Any:
        """The ``ray`` module, connected (see ``address``)."""
        from cfgsim.distributed import require_ray

        ray = require_ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS") or None
            options: dict[str, Any] = {"logging_level": logging.WARNING}
            if address is None:
                options["include_dashboard"] = False
            try:
                ray.init(address=address, **options)
            except ConnectionError as exc:
                raise InputError(f"--ray-address {address}: no Ray cluster there ({exc})") from exc
            self._started_ray = address is None
        return ray

    def close(self) -> None:
        """Stop the local Ray instance this executor started (a cluster it joined stays up)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def cluster_device(self) -> str:
        """``cuda`` when the cluster has GPUs, else ``cpu``: the device a run uses when none is given."""
        ray = self.connect()
        return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"

    def host(self, paths: Sequence[str | os.PathLike[str]], *, device: str | None = None, **kwargs: Any):
        """The driver's host for a run on this cluster: a :class:`ClusterHost` for the nodes'
        ``device`` (given, else :meth:`cluster_device`); ``kwargs`` as for ``StandaloneHost``."""
        from cfgsim.distributed.cluster_host import ClusterHost

        return ClusterHost(paths, device=device or self.cluster_device(), **kwargs)

    def node_spec(self, host: Host) -> NodeSpec:
        """The picklable description the nodes build their runners from, taken from the driver's host."""
        device = str(getattr(host, "device", "cpu"))
        device = "cuda" if device.startswith("cuda") else "cpu"  # a task's GPU is its own "cuda"
        config = getattr(host, "config", None)
        batch = getattr(host, "node_batch_size", getattr(host, "batch_size", None))
        threads = self.threads
        if threads is None and device == "cpu":
            threads = max(1, int(self.num_cpus or 1))
        return NodeSpec(
            config_dir=str(config.root) if config is not None else None,
            device=device,
            rng=str(getattr(host, "rng", "cpu")),
            batch_size=batch,
            threads=threads,
            retry_exceptions=self.retry_exceptions,
            host_factory=self.host_factory,
        )

    def task_options(self, ray: Any, node: NodeSpec) -> dict[str, Any]:
        """Resources and retries of each task; refuses a request the cluster can never grant."""
        gpus = (self.num_gpus if self.num_gpus is not None else 1) if node.device == "cuda" else 0
        cpus = self.num_cpus if self.num_cpus is not None else 1
        have = ray.cluster_resources()
        if gpus and have.get("GPU", 0) < gpus:
            raise InputError(
                f"--device cuda: the Ray cluster has {have.get('GPU', 0):g} GPU(s) and each task asks for "
                f"{gpus:g}; use --device cpu"
            )
        if have.get("CPU", 0) < cpus:
            raise InputError(f"a task asks for {cpus:g} CPU(s); the Ray cluster has {have.get('CPU', 0):g}")
        return {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_retries": self.max_retries,
            "retry_exceptions": list(self.retry_exceptions) or False,
        }

    # -- the run ------------------------------------------------------------------------------------

    def execute(self, host: Host, spec: ProbeSpec, jobs: Sequence[Job], sink: Sink) -> None:
        if not jobs:
            return
        ray = self.connect()
        try:
            self._execute(ray, host, spec, jobs, sink)
        finally:
            self.close()

    def _execute(self, ray: Any, host: Host, spec: ProbeSpec, jobs: Sequence[Job], sink: Sink) -> None:
        node = self.node_spec(host)
        options = self.task_options(ray, node)
        driver_env = dict(sink.result.environment)
        task = ray.remote(run_node_job)
        running: dict[Any, _Running] = {}
        for job in jobs:
            name = f"cfgsim probe {job.checkpoint.label}"
            generator = task.options(name=name, **options).remote(
                node, spec, job.checkpoint, list(job.rows), list(job.seeds)
            )
            running[generator] = _Running(job)
        sink.progress(f"{len(jobs)} checkpoint(s) sent to Ray")
        while running:
            try:
                if sink.stopped():
                    self._stop(ray, running, sink, driver_env)
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_seconds)
                for generator in ready:
                    self._receive(ray, generator, running, sink, driver_env)
            except KeyboardInterrupt:  # Ctrl-C in the driver: keep what is made, stop the rest
                sink.stop()

    def _receive(
        self, ray: Any, generator: Any, running: dict[Any, _Running], sink: Sink, driver_env: dict
    ) -> None:
        """Take the next message of a task that has one (or its end) into the sink."""
        state = running[generator]
        try:
            ref = next(generator)
        except StopIteration:
            del running[generator]
            if state.rest():
                self._settle(sink, state, state.rest(), "the Ray task ended without reporting these cells")
            return
        try:
            message = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            del running[generator]
            sink.skip(state.job, state.rest(), INTERRUPTED_REASON, count=False)
            return
        except ray.exceptions.RayTaskError as exc:  # an exception escaped the task, retries spent
            del running[generator]
            cause = getattr(exc, "cause", None) or exc
            self._settle(sink, state, state.rest(), error_text(cause))
            return
        except ray.exceptions.RayError as exc:  # the worker or node died, retries spent
            del running[generator]
            first = (str(exc).strip().splitlines() or [""])[0]
            reason = f"{type(exc).__name__}: the Ray task failed {self.max_retries + 1} time(s): {first}"
            self._settle(sink, state, state.rest(), reason)
            return
        self._handle(message, state, sink, driver_env)

    def _handle(self, message: dict, state: _Running, sink: Sink, driver_env: dict) -> None:
        job = state.job
        kind = message.get("kind")
        if kind == "env":
            state.node = str(message.get("node", ""))
            self._compare_environment(state.node, message.get("environment") or {}, driver_env)
            log.info("%s runs on %s", job.checkpoint.label, state.node)
            return
        rows = [r for r in message.get("rows", []) if r not in state.settled]  # a replay's repeats
        if kind == "interrupted":
            sink.stop()
            sink.skip(job, rows, INTERRUPTED_REASON, count=False)
            state.settled.update(rows)
            return
        if kind == "failed":  # a load error ("load") comes once, for all the rows left
            self._settle(sink, state, rows, str(message.get("error", "failed")))
            return
        for row, png, infotext, settings in zip(
            message["rows"], message["png"], message["infotexts"], message["settings"], strict=True
        ):
            if row not in rows:
                continue
            sink.deliver(job, row, Generated(image=from_png(png), infotext=infotext, settings=settings))
            state.settled.add(row)
        if rows:
            seeds = [job.seeds[job.rows.index(r)] for r in rows]
            sink.progress(f"{job.describe(seeds)} done on {state.node or 'a Ray node'}")

    def _settle(self, sink: Sink, state: _Running, rows: Sequence[int], reason: str) -> None:
        rows = [r for r in rows if r not in state.settled]
        if rows:
            sink.fail(state.job, rows, reason)
            state.settled.update(rows)
            seeds = [state.job.seeds[state.job.rows.index(r)] for r in rows]
            where = f" on {state.node}" if state.node else ""
            log.warning("%s failed%s: %s", state.job.describe(seeds), where, reason)

    def _stop(self, ray: Any, running: dict[Any, _Running], sink: Sink, driver_env: dict) -> None:
        """Collect the messages already made, cancel the tasks, skip what is left."""
        for generator in list(running):
            while generator in running:
                ready, _ = ray.wait([generator], num_returns=1, timeout=0)
                if not ready:
                    break
                self._receive(ray, generator, running, sink, driver_env)
        for generator, state in running.items():
            try:
                ray.cancel(generator)
            except Exception as exc:  # already finished, or a Ray that cannot cancel it: it is left to end
                log.debug("cancelling %s: %s", state.job.checkpoint.label, exc)
            sink.skip(state.job, state.rest(), INTERRUPTED_REASON, count=False)
        running.clear()

    def _compare_environment(self, node: str, environment: dict, driver_env: dict) -> None:
        for key in COMPARED_SETTINGS:
            here, there = driver_env.get(key), environment.get(key)
            if here and there and here != there and (node, key) not in self._warned:
                self._warned.add((node, key))
                log.warning(
                    "node %s differs from the driver in %s: %r (driver: %r); its images may differ",
                    node,
                    key,
                    there,
                    here,
                )
