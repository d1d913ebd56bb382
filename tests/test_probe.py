"""The shared run loop (cfgsim.probe.run_probe) with a small in-memory host."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from cfgsim.compare import build_metrics
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, ProbeInterrupted
from cfgsim.probe import INTERRUPTED_REASON, execution_order, run_probe
from cfgsim.result import FAILED, OK, SKIPPED, Reference
from cfgsim.spec import ProbeSpec


def family_image(family: int, seed: int, noise: float, size: int = 64) -> Image.Image:
    """Related checkpoints share a family: same picture per seed, plus checkpoint-specific noise."""
    rng = np.random.default_rng(family * 100_003 + seed)
    base = rng.random((size // 8, size // 8, 3))
    img = np.kron(base, np.ones((8, 8, 1)))
    jitter = np.random.default_rng(int(noise * 1000) + seed).normal(0, noise, img.shape)
    return Image.fromarray((np.clip(img + jitter, 0, 1) * 255).astype(np.uint8))


class FakeHost:
    name = "fake"

    def __init__(
        self, checkpoints, *, loaded=None, fail=(), load_fail=(), stop_after=None, interrupt_in=None
    ):
        self._checkpoints = checkpoints
        self.loaded = loaded
        self.fail, self.load_fail = set(fail), set(load_fail)
        self.stop_after, self.interrupt_in = stop_after, interrupt_in
        self.calls: list[tuple[str, int]] = []
        self.jobs: list[tuple[int, int, str]] = []

    def checkpoints(self):
        return self._checkpoints

    def current_checkpoint(self):
        return self.loaded

    def generate(self, checkpoint, spec, seed):
        self.calls.append((checkpoint.name, seed))
        if checkpoint.name == self.interrupt_in:
            raise ProbeInterrupted()
        if checkpoint.name in self.load_fail:
            raise CheckpointLoadError(f"{checkpoint.name}: file not found")
        if checkpoint.name in self.fail:
            raise RuntimeError("CUDA out of memory")
        family, noise = {"base": (1, 0.0), "tuned": (1, 0.05), "other": (2, 0.0), "xl": (3, 0.0)}[
            checkpoint.name
        ]
        return Generated(
            family_image(family, seed, noise), infotext=f"Seed: {seed}", settings={"VAE": "auto"}
        )

    def progress(self, done, total, job):
        self.jobs.append((done, total, job))

    def interrupted(self):
        return self.stop_after is not None and len(self.calls) >= self.stop_after

    def environment(self):
        return {"RNG": "CPU"}


CKPTS = [Checkpoint("base", architecture="sd1"), Checkpoint("tuned"), Checkpoint("other", architecture="sd1")]


@pytest.fixture
def ssim():
    return build_metrics(["ssim"])


def test_every_checkpoint_and_seed_in_load_order(ssim):
    host = FakeHost(CKPTS, loaded="other")
    result = run_probe(
        host, CKPTS, ProbeSpec(seeds="1, 2"), metrics=ssim, reference=Reference("item", 0, "base")
    )
    # The loaded checkpoint first, each checkpoint's seeds together; the grid keeps the user's order.
    assert host.calls == [("other", 1), ("other", 2), ("base", 1), ("base", 2), ("tuned", 1), ("tuned", 2)]
    assert [(c.item, c.row) for c in result.cells] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert all(c.status == OK for c in result.cells)
    assert [j[:2] for j in host.jobs] == [(k, 6) for k in range(6)] + [(6, 6)]
    assert host.jobs[0][2] == "other — seed 1"
    assert result.environment == {"RNG": "CPU", "VAE": "auto"}


def test_related_checkpoint_scores_closer_to_the_reference(ssim):
    result = run_probe(
        FakeHost(CKPTS), CKPTS, ProbeSpec(seeds="1-3"), metrics=ssim, reference=Reference("item", 0, "base")
    )
    scores = result.scores["ssim"]
    for row in range(3):
        vs = scores.vs_reference[row]
        assert math.isnan(vs[0])  # the reference itself is not scored
        assert vs[1] > vs[2]
        assert scores.ranks(row) == [None, 1, 2]
        matrix = scores.per_row[row]
        assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)
    assert scores.mean.shape == (3, 3) and scores.std.shape == (3, 3)


def test_a_failing_checkpoint_is_a_failed_cell_and_the_run_goes_on(ssim):
    host = FakeHost(CKPTS, fail={"tuned"})
    result = run_probe(host, CKPTS, ProbeSpec(seeds="1, 2"), metrics=ssim)
    failed = [c for c in result.cells if c.status == FAILED]
    assert [(c.item, c.row) for c in failed] == [(1, 0), (1, 1)]
    assert failed[0].reason == "RuntimeError: CUDA out of memory"
    assert np.isnan(result.scores["ssim"].per_row[0][1]).all()
    assert result.scores["ssim"].per_row[0][0, 2] < 1.0


def test_a_checkpoint_that_cannot_load_is_tried_once(ssim):
    host = FakeHost(CKPTS, load_fail={"base"})
    result = run_probe(host, CKPTS, ProbeSpec(seeds="1-3"), metrics=ssim)
    assert host.calls.count(("base", 1)) == 1 and ("base", 2) not in host.calls
    assert all(c.reason == "CheckpointLoadError: base: file not found" for c in result.cells if c.item == 0)


def test_non_sd1_checkpoints_are_skipped_with_the_reason(ssim):
    ckpts = [*CKPTS, Checkpoint("xl", architecture="sdxl")]
    host = FakeHost(ckpts)
    result = run_probe(host, ckpts, ProbeSpec(), metrics=ssim)
    assert ("xl", 1337) not in host.calls
    cell = result.cell(3, 0)
    assert cell.status == SKIPPED and cell.reason == "SDXL checkpoint: the probe is defined for SD 1.x models"


def test_interrupt_stops_after_the_current_image_and_keeps_what_was_done(ssim):
    host = FakeHost(CKPTS, stop_after=3)
    result = run_probe(host, CKPTS, ProbeSpec(seeds="1, 2"), metrics=ssim)
    assert len(host.calls) == 3
    assert result.interrupted
    statuses = [c.status for c in result.cells]
    assert statuses.count(OK) == 3 and statuses.count(SKIPPED) == 3
    assert {c.reason for c in result.cells if c.status == SKIPPED} == {INTERRUPTED_REASON}
    # Row 0 has base and tuned done: their similarity is there.
    assert not math.isnan(result.scores["ssim"].per_row[0][0, 1])


def test_interrupt_during_an_image(ssim):
    host = FakeHost(CKPTS, interrupt_in="tuned")
    result = run_probe(host, CKPTS, ProbeSpec(seeds="1, 2"), metrics=ssim)
    assert result.interrupted and host.calls[-1] == ("tuned", 1)
    assert result.cell(2, 0).status == SKIPPED


def test_external_reference_image(ssim):
    ref = Reference("image", None, "published", image=family_image(1, 7, 0.0))
    result = run_probe(FakeHost(CKPTS), CKPTS, ProbeSpec(seeds=7), metrics=ssim, reference=ref)
    vs = result.scores["ssim"].vs_reference[0]
    assert vs[0] == pytest.approx(1.0)
    assert vs[1] > vs[2]


def test_bad_calls_say_what_is_wrong(ssim):
    with pytest.raises(InputError, match="select at least one checkpoint"):
        run_probe(FakeHost([]), [], ProbeSpec(), metrics=ssim)
    dup = [Checkpoint("a", label="x"), Checkpoint("b", label="x")]
    with pytest.raises(InputError, match="'x' is used twice"):
        run_probe(FakeHost(dup), dup, ProbeSpec(), metrics=ssim)
    with pytest.raises(InputError, match="item 5"):
        run_probe(FakeHost(CKPTS), CKPTS, ProbeSpec(), metrics=ssim, reference=Reference("item", 5))


def assert_nested_close(a, b, tol=2e-6):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_nested_close(a[key], b[key], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_nested_close(x, y, tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol
    else:
        assert a == b


def test_execution_order():
    assert execution_order(CKPTS, None) == [0, 1, 2]
    assert execution_order(CKPTS, "tuned") == [1, 0, 2]
    assert execution_order(CKPTS, "not-selected") == [0, 1, 2]


def test_result_dict_round_trip(ssim):
    from cfgsim.result import ProbeResult

    result = run_probe(
        FakeHost(CKPTS),
        CKPTS,
        ProbeSpec(seeds="1, 2", steps_override=8),
        metrics=ssim,
        reference=Reference("item", 0, "base"),
        preset="cfg1",
        deviations=[("Steps", "256", "8")],
    )
    data = result.to_dict()
    again = ProbeResult.from_dict(data).to_dict()
    # Means and deviations are recomputed from the stored (6-decimal) matrices: equal to 1e-6.
    assert {k: v for k, v in again.items() if k != "scores"} == {
        k: v for k, v in data.items() if k != "scores"
    }
    assert_nested_close(again["scores"], data["scores"])
    assert data["is_probe"] is False and data["deviations"] == [["Steps", "256", "8"]]


class ThreadedExecutor:
    """Jobs in parallel threads, in reverse order: what a multi-server executor does to timing."""

    def execute(self, host, spec, jobs, sink):
        import threading

        from cfgsim.probe import run_job

        threads = [threading.Thread(target=run_job, args=(host, spec, job, sink)) for job in reversed(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class StopEarlyExecutor:
    """An executor that settles only the first job (a cluster that went away)."""

    def execute(self, host, spec, jobs, sink):
        from cfgsim.probe import run_job

        run_job(host, spec, jobs[0], sink)
        sink.stop()


def test_a_parallel_executor_gives_the_local_result(ssim):
    spec = ProbeSpec(seeds="1, 2")
    local = run_probe(FakeHost(CKPTS), CKPTS, spec, metrics=ssim)
    threaded = run_probe(FakeHost(CKPTS), CKPTS, spec, metrics=ssim, executor=ThreadedExecutor())
    assert [c.status for c in threaded.cells] == [OK] * 6
    for a, b in zip(local.cells, threaded.cells, strict=True):
        assert (a.item, a.row) == (b.item, b.row)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    for a, b in zip(local.scores["ssim"].per_row, threaded.scores["ssim"].per_row, strict=True):
        assert np.allclose(a, b)


def test_cells_an_executor_never_settled_are_skipped_not_blank(ssim):
    host = FakeHost(CKPTS)
    result = run_probe(host, CKPTS, ProbeSpec(seeds="1, 2"), metrics=ssim, executor=StopEarlyExecutor())
    assert result.interrupted
    done = [c for c in result.cells if c.status == OK]
    assert len(done) == 2 and all(c.image is not None for c in done)
    rest = [c for c in result.cells if c.status != OK]
    assert len(rest) == 4 and {c.reason for c in rest} == {INTERRUPTED_REASON}
