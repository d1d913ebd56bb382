"""Several WebUI servers as one probe run: the checkpoints' jobs spread over them.

:class:`MultiHost` is the run loop's host (names, environment, the stop flag) over a list of
:class:`~cfgsim.remote.host.RemoteHost`; :class:`MultiServerExecutor` is the executor
(:class:`cfgsim.probe.Executor`): a thread per server takes the next checkpoint it holds (the one it
has loaded first), makes all of that checkpoint's seeds (one load per checkpoint per server) and
reports each image into the sink as it arrives, so an interrupted or failed run keeps every finished
cell. A server that stops answering is retried with back-off; one that stays down is dropped with
a note and what it had left goes back to the queue for the servers that hold the checkpoint. Ctrl-C
interrupts the servers' current images, which are dropped, and ends the run with what is done.
Each server puts back any option it failed to restore when its work is over (also after errors).

Two things the probe's Executor/Sink interface does not carry are worked around here: which
server made an image (each cell's line of progress names it) and the WebUI version an image reports
(corrected in ``sink.result.environment`` under the sink's lock).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, ProbeInterrupted
from cfgsim.probe import Job, Sink, error_text
from cfgsim.remote.client import RemoteError, ServerError
from cfgsim.remote.host import RemoteHost
from cfgsim.spec import ProbeSpec

log = logging.getLogger("cfgsim.remote")

Report = Callable[[str], None]


def server_label(host: RemoteHost) -> str:
    return host.url.split("://", 1)[-1]


class MultiHost:
    """The run loop's host for a set of servers. ``placements[name]`` maps a checkpoint's name (its
    title on the first server that has it) to {server index: its title on that server}."""

    name = "webui"

    def __init__(self, hosts: Sequence[RemoteHost], placements: dict[str, dict[int, str]]) -> None:
        self.hosts = list(hosts)
        self.placements = placements
        self.stop_event = threading.Event()

    def checkpoints(self) -> list[Checkpoint]:
        return [c for host in self.hosts for c in host.checkpoints()]

    def current_checkpoint(self) -> str | None:
        return None  # each server starts with its own loaded checkpoint (see the executor)

    def generate(self, checkpoint: Checkpoint, spec: ProbeSpec, seed: int) -> Generated:
        for index, title in self.placements.get(checkpoint.name, {}).items():
            return self.hosts[index].generate(dataclasses.replace(checkpoint, name=title), spec, seed)
        raise CheckpointLoadError(f"{checkpoint.name!r} is on none of the servers")

    def progress(self, done: int, total: int, job: str) -> None:
        pass  # the executor reports each cell with the server that made it

    def interrupted(self) -> bool:
        return self.stop_event.is_set()

    def file_of(self, checkpoint: Checkpoint) -> str | None:
        for index, title in self.placements.get(checkpoint.name, {}).items():
            found = self.hosts[index].file_of(dataclasses.replace(checkpoint, name=title))
            if found:
                return found
        return None

    def environment(self) -> dict[str, str]:
        return merge_environments(
            [h.environment() for h in self.hosts], [server_label(h) for h in self.hosts]
        )

    def differences(self) -> list[str]:
        """Recorded settings (other than cfgsim's own) whose values differ between the servers."""
        envs = [h.environment() for h in self.hosts]
        keys = {k for env in envs for k in env if k != "cfgsim"}
        return sorted(k for k in keys if len({env.get(k) for env in envs}) > 1)


def merge_environments(envs: Sequence[dict[str, str]], names: Sequence[str]) -> dict[str, str]:
    """One environment for several servers: a value all share, else "v1 (server1); v2 (server2)"."""
    out: dict[str, str] = {}
    for env in envs:
        for key in env:
            if key in out:
                continue
            values = [e.get(key, "") for e in envs]
            if len(set(values)) == 1:
                out[key] = values[0]
            else:
                out[key] = "; ".join(f"{v or 'absent'} ({n})" for v, n in zip(values, names, strict=True))
    return out


class _Queue:
    """Pending jobs and which server runs what, under one condition variable."""

    def __init__(self, jobs: Sequence[Job], placements: dict[str, dict[int, str]]) -> None:
        self.pending = list(jobs)
        self.placements = placements
        self.running: dict[int, Job] = {}
        self.live: set[int] = set()
        self.cond = threading.Condition()

    def servers_of(self, job: Job) -> set[int]:
        return set(self.placements.get(job.checkpoint.name, {}))

    def take(self, server: int, prefer: str | None, stopped: Callable[[], bool]) -> Job | None:
        with self.cond:
            while True:
                if stopped():
                    return None
                mine = [j for j in self.pending if server in self.servers_of(j)]
                if mine:
                    titles = self.placements
                    pick = next((j for j in mine if titles[j.checkpoint.name][server] == prefer), mine[0])
                    self.pending.remove(pick)
                    self.running[server] = pick
                    return pick
                # Work may still come back from a server that drops: wait while another server runs
                # a checkpoint this one also holds.
                if not any(s != server and server in self.servers_of(j) for s, j in self.running.items()):
                    return None
                self.cond.wait(0.2)

    def finish(self, server: int) -> None:
        with self.cond:
            self.running.pop(server, None)
            self.cond.notify_all()

    def give_back(self, job: Job) -> bool:
        """Requeue a dropped server's rest; False when no live server holds the checkpoint."""
        with self.cond:
            if not self.servers_of(job) & self.live:
                return False
            self.pending.insert(0, job)
            self.cond.notify_all()
            return True

    def orphans(self) -> list[Job]:
        """Pending jobs no live server holds (taken out of the queue)."""
        with self.cond:
            lost = [j for j in self.pending if not self.servers_of(j) & self.live]
            for job in lost:
                self.pending.remove(job)
            return lost


class MultiServerExecutor:
    """Runs the jobs on several servers at once (see the module docstring).

    ``retries``: further tries of a server that stops answering before it is dropped; the waits
    between them are ``backoff`` · 2^k seconds, at most ``max_backoff``. ``report``: one line per
    finished cell and per server event (default: the log).
    """

    def __init__(
        self,
        facade: MultiHost,
        *,
        retries: int = 3,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        report: Report | None = None,
        restore: bool = True,
    ) -> None:
        self.facade = facade
        self.hosts = facade.hosts
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.report = report or log.info
        self.restore = restore
        self.dropped: dict[str, str] = {}  # server label → why
        self.restored: dict[str, dict[str, Any]] = {}
        self.made_by: dict[tuple[int, int], str] = {}  # (column, row) → server label
        self._hashes: dict[int, tuple[str, str]] = {}  # column → (Model hash, server label)
        self._sink: Sink | None = None

    # -- the Executor protocol ---------------------------------------------------------------------

    def execute(self, host: Any, spec: ProbeSpec, jobs: Sequence[Job], sink: Sink) -> None:
        self._sink = sink
        queue = _Queue(
            [Job(j.column, j.checkpoint, list(j.rows), list(j.seeds)) for j in jobs], self.facade.placements
        )
        queue.live = set(range(len(self.hosts)))
        threads = [
            threading.Thread(
                target=self._serve, args=(i, spec, queue, sink), name=f"cfgsim-{server_label(h)}", daemon=True
            )
            for i, h in enumerate(self.hosts)
        ]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.report("interrupted: stopping the servers' current images; finished images are kept")
            self.interrupt()
            for thread in threads:  # a second Ctrl-C here leaves at once
                thread.join()
        for job in queue.orphans():
            self._fail_lost(job, sink)

    def interrupt(self) -> None:
        """What Ctrl-C does: stop taking work, interrupt every server's current image."""
        self.facade.stop_event.set()
        if self._sink is not None:
            self._sink.stop()
        for host in self.hosts:
            host.interrupt()

    # -- one server --------------------------------------------------------------------------------

    def _serve(self, index: int, spec: ProbeSpec, queue: _Queue, sink: Sink) -> None:
        host = self.hosts[index]
        name = server_label(host)
        try:
            while True:
                job = queue.take(index, host.loaded or host.current_checkpoint(), sink.stopped)
                if job is None:
                    return
                try:
                    rest = self._run(index, spec, job, sink)
                finally:
                    queue.finish(index)
                if rest is not None:  # the server dropped: its rest goes to the others
                    with queue.cond:
                        queue.live.discard(index)
                    if not queue.give_back(rest):
                        self._fail_lost(rest, sink)
                    for lost in queue.orphans():
                        self._fail_lost(lost, sink)
                    return
        except Exception as exc:  # never lose a thread silently
            log.exception("%s: %s", name, exc)
            self.dropped[name] = error_text(exc)
            with queue.cond:
                queue.live.discard(index)
        finally:
            if self.restore and name not in self.dropped:
                try:
                    self.restored[name] = host.restore()
                except RemoteError as exc:
                    self.report(f"[{name}] could not check its options afterwards: {exc.reason}")

    def _run(self, index: int, spec: ProbeSpec, job: Job, sink: Sink) -> Job | None:
        """The job's seeds on one server; returns what is left when the server dropped, else None."""
        host = self.hosts[index]
        name = server_label(host)
        title = self.facade.placements[job.checkpoint.name][index]
        target = dataclasses.replace(job.checkpoint, name=title)
        for k, (row, seed) in enumerate(zip(job.rows, job.seeds, strict=True)):
            if sink.stopped():
                return None  # unsettled cells are skipped as "interrupted" by the run loop
            sink.progress(f"{job.describe([seed])} on {name}")
            started = time.perf_counter()
            failures = 0
            while True:
                try:
                    made = host.generate(target, spec, seed)
                except ProbeInterrupted:
                    sink.stop()
                    return None
                except CheckpointLoadError as exc:
                    reason = error_text(exc)
                    sink.fail(job, job.rows[k:], reason)
                    self.report(f"[{name}] {job.checkpoint.label}: {reason}")
                    return None
                except ServerError as exc:  # the server raised making it: a failed cell, as in-process
                    if sink.stopped():
                        return None
                    sink.fail(job, [row], exc.reason)
                    self.report(f"[{name}] {job.describe([seed])} failed: {exc.reason}")
                    break
                except RemoteError as exc:
                    if sink.stopped():
                        return None
                    failures += 1
                    if not exc.retryable or failures > self.retries:
                        self.dropped[name] = exc.reason
                        self.report(f"[{name}] dropped after {failures} failed tries: {exc.reason}")
                        return Job(job.column, job.checkpoint, job.rows[k:], job.seeds[k:])
                    wait = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
                    self.report(f"[{name}] {exc.reason}; retrying in {wait:g} s ({failures}/{self.retries})")
                    if self.facade.stop_event.wait(wait):
                        return None
                    continue
                except Exception as exc:  # a failed image is a failed cell; the run goes on
                    sink.fail(job, [row], error_text(exc))
                    self.report(f"[{name}] {job.describe([seed])} failed: {error_text(exc)}")
                    break
                self._deliver(name, job, row, made, sink, seconds=time.perf_counter() - started)
                break
        return None

    def _deliver(self, name: str, job: Job, row: int, made: Generated, sink: Sink, *, seconds: float) -> None:
        settings = dict(made.settings)
        model_hash = settings.pop("Model hash", None)
        version = settings.pop("Version", None)
        seed = sink.spec.seeds[row]
        with sink._lock:
            first = self._hashes.setdefault(job.column, (model_hash or "", name))
            if model_hash and first[0] and model_hash != first[0]:
                reason = (
                    f"a different checkpoint on {name} (Model hash {model_hash}, "
                    f"not {first[0]} as on {first[1]})"
                )
                sink.fail(job, [row], reason)
                self.report(f"[{name}] {job.checkpoint.label} seed {seed}: {reason}")
                return
            if version:
                host = next(h for h in self.hosts if server_label(h) == name)
                if host.version != version:
                    host.version = version
                    sink.result.environment["Version"] = self.facade.environment()["Version"]
            sink.deliver(job, row, dataclasses.replace(made, settings=settings))
            self.made_by[(job.column, row)] = name
            done, total = sink.done, sink.total
        self.report(f"[{name}] {job.checkpoint.label} seed {seed}: {seconds:.1f} s ({done}/{total})")

    def _fail_lost(self, job: Job, sink: Sink) -> None:
        servers = ", ".join(f"{n} ({why})" for n, why in self.dropped.items()) or "its servers"
        reason = f"not run: dropped {servers}"
        open_rows = [r for r in job.rows if not sink.cells[(job.column, r)].ok]
        sink.fail(job, open_rows, reason)
        self.report(f"{job.checkpoint.label}: {reason}")
