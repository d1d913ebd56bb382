"""``RayExecutor`` (``cfgsim probe --executor ray``): the same pictures and matrix as the local executor,
a worker killed mid-task retried, a bad checkpoint failing only its own cells, an interrupt keeping
what was made; and, without Ray, the node's job body, the flags and the missing-extra message.

The Ray tests share one local Ray (2 CPUs, no dashboard) started once for the module; they skip with
the reason where Ray is not installed (``pip install 'cfgsim[ray]'``, e.g. in the Python 3.10 venv).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.probe import INTERRUPTED_REASON
from cfgsim.result import FAILED, OK, SKIPPED
from cfgsim.spec import ProbeSpec

SPEC = ProbeSpec(seeds=(1337, 7), steps=4, width=64, height=64)
RAY_MISSING = "ray is not installed here (pip install 'cfgsim[ray]')"


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_runner = pytest.mark.skipif(
    not (_have("torch") and _have("diffusers") and _have("transformers")),
    reason="the standalone runner needs torch, diffusers and transformers (pip install 'cfgsim[standalone]')",
)
needs_ray = pytest.mark.skipif(not _have("ray"), reason=RAY_MISSING)


# -- without Ray ------------------------------------------------------------------------------------


def test_a_missing_ray_names_the_extra(monkeypatch):
    from cfgsim.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r"pip install 'cfgsim\[ray\]'"):
        require_ray()


def test_the_package_imports_no_ray_until_a_run_needs_it():
    code = (
        "import sys, cfgsim.distributed, cfgsim.distributed.node, cfgsim.distributed.ray_executor;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_images_travel_as_lossless_png():
    from cfgsim.distributed.node import from_png, png_bytes

    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    back = from_png(png_bytes(Image.fromarray(pixels)))
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), pixels)


def test_probe_takes_the_executor_flags():
    from cfgsim.cli import build_parser

    args = build_parser().parse_args(
        ["probe", "m.safetensors", "--out", "o", "--executor", "ray", "--ray-address", "10.0.0.1:6379"]
    )
    assert args.executor == "ray" and args.ray_address == "10.0.0.1:6379"
    args = build_parser().parse_args(["probe", "m.safetensors", "--out", "o"])
    assert args.executor == "local" and args.ray_address is None


class FakeNodeHost:
    """A node host without a model: seed 1 fails, seed 2 is interrupted, seed 3 loses a connection."""

    batch_size = 1

    def environment(self):
        return {"device": "cpu"}

    def generate(self, checkpoint, spec, seed):
        from cfgsim.host import Generated, ProbeInterrupted

        if seed == 1:
            raise RuntimeError("boom")
        if seed == 2:
            raise ProbeInterrupted()
        if seed == 3:
            raise ConnectionError("the file server went away")
        return Generated(image=Image.new("RGB", (4, 4), (seed, 0, 0)), infotext=f"Seed: {seed}")


def test_the_node_job_fails_a_batch_stops_when_interrupted_and_lets_transient_errors_out():
    from cfgsim.distributed.node import NodeSpec, from_png, run_node_job
    from cfgsim.host import Checkpoint

    node = NodeSpec(
        host_factory=lambda _: FakeNodeHost(), check_files=False, retry_exceptions=(ConnectionError,)
    )
    messages = list(run_node_job(node, SPEC, Checkpoint("m"), [0, 1, 2, 3], [5, 1, 2, 4]))
    assert [(m["kind"], m.get("rows")) for m in messages] == [
        ("env", None),
        ("done", [0]),
        ("failed", [1]),  # one batch failed, the next one runs
        ("interrupted", [2, 3]),  # an interrupt ends the task
    ]
    assert messages[2] == {"kind": "failed", "rows": [1], "error": "RuntimeError: boom", "load": False}
    assert from_png(messages[1]["png"][0]).getpixel((0, 0)) == (5, 0, 0)
    with pytest.raises(ConnectionError):  # transient: out of the task, for Ray to run it again
        list(run_node_job(node, SPEC, Checkpoint("m"), [0], [3]))


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    if not _have("diffusers"):
        pytest.skip("the standalone runner is not installed")
    from cfgsim.standalone.demo import build_family

    return build_family(tmp_path_factory.mktemp("family"))


@needs_runner
def test_the_node_job_streams_one_message_per_batch_and_checks_the_file(family, tmp_path):
    from cfgsim.distributed.node import NodeSpec, from_png, run_node_job
    from cfgsim.standalone.host import StandaloneHost

    host = StandaloneHost(family.checkpoints[:1], config_dir=family.config_dir, quiet=True)
    (checkpoint,) = host.checkpoints()
    node = NodeSpec(config_dir=str(family.config_dir), threads=1)
    messages = list(run_node_job(node, SPEC, checkpoint, [0, 1], list(SPEC.seeds)))
    assert [m["kind"] for m in messages] == ["env", "done", "done"]
    assert messages[0]["environment"]["device"] == "cpu"
    alone = host.generate(checkpoint, SPEC, 7)
    assert messages[2]["rows"] == [1] and messages[2]["infotexts"] == [alone.infotext]
    assert np.array_equal(np.asarray(from_png(messages[2]["png"][0])), np.asarray(alone.image))

    copy = tmp_path / "copy.safetensors"
    shutil.copy(family.checkpoints[0], copy)
    described = StandaloneHost([copy], config_dir=family.config_dir, quiet=True).checkpoints()[0]
    shutil.copy(family.checkpoints[3], copy)  # another model at the same path on "the node"
    messages = list(run_node_job(node, SPEC, described, [0, 1], list(SPEC.seeds)))
    assert messages[-1]["kind"] == "failed" and messages[-1]["load"] and messages[-1]["rows"] == [0, 1]
    assert "is not the driver's file" in messages[-1]["error"]
    copy.unlink()
    messages = list(run_node_job(node, SPEC, described, [0, 1], list(SPEC.seeds)))
    assert "no such file on node" in messages[-1]["error"]


@needs_runner
def test_the_driver_host_takes_the_nodes_device_and_the_tasks_ask_for_it(family):
    from cfgsim.distributed import RayExecutor

    executor = RayExecutor()
    host = executor.host(family.checkpoints[:1], device="cuda", config_dir=family.config_dir, quiet=True)
    env = host.environment()  # a CUDA run described on a driver without CUDA
    assert env["device"] == "cuda" and env["precision"] == "fp16"
    node = executor.node_spec(host)
    assert node.device == "cuda" and node.batch_size is None and node.threads is None
    assert node.config_dir == str(family.config_dir)

    class Cluster:  # what ray.cluster_resources() says
        def __init__(self, **have):
            self.have = have

        def cluster_resources(self):
            return self.have

    options = executor.task_options(Cluster(CPU=32, GPU=4), node)
    assert options["num_gpus"] == 1 and options["num_cpus"] == 1 and options["max_retries"] == 3
    assert ConnectionError in options["retry_exceptions"]
    with pytest.raises(InputError, match="has 0 GPU"):
        executor.task_options(Cluster(CPU=32), node)
    cpu_node = dataclasses.replace(node, device="cpu")
    assert RayExecutor(num_cpus=2).task_options(Cluster(CPU=2), cpu_node)["num_gpus"] == 0
    with pytest.raises(InputError, match="asks for 4 CPU"):
        RayExecutor(num_cpus=4).task_options(Cluster(CPU=2), cpu_node)


@needs_runner
def test_probe_without_ray_says_how_to_install_it(family, tmp_path, monkeypatch, capsys):
    from cfgsim.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["probe", str(family.checkpoints[0]), "--executor", "ray", "--out", str(tmp_path / "o")])
    assert code == 2 and "pip install 'cfgsim[ray]'" in capsys.readouterr().err


# -- with a local Ray -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    # The test hosts below travel to the workers by value (this module is not importable there).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local(family):
    """The reference: the family probed by the local executor (one torch thread, as the workers)."""
    import torch

    from cfgsim.compare import build_metrics
    from cfgsim.probe import run_probe
    from cfgsim.standalone.host import StandaloneHost

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        host = StandaloneHost(family.checkpoints, config_dir=family.config_dir, quiet=True)
        return run_probe(host, host.checkpoints(), SPEC, metrics=build_metrics(["ssim"]))
    finally:
        torch.set_num_threads(threads)


def _ray_probe(family, paths=None, host=None, **executor_options):
    from cfgsim.compare import build_metrics
    from cfgsim.distributed import RayExecutor
    from cfgsim.probe import run_probe
    from cfgsim.standalone.host import StandaloneHost

    executor = RayExecutor(num_cpus=1, **executor_options)
    if host is None:
        host = StandaloneHost(paths or family.checkpoints, config_dir=family.config_dir, quiet=True)
    return run_probe(host, host.checkpoints(), SPEC, metrics=build_metrics(["ssim"]), executor=executor)


def _pixels(cell):
    return np.asarray(cell.image, dtype=np.int16)


def _same_cells(result, local, columns=None):
    """Every image ``result`` made is the local executor's (``columns``: result column -> local's)."""
    for cell in result.cells:
        column = cell.item if columns is None else columns.get(cell.item)
        if column is None or cell.status != OK:
            continue
        ref = local.cell(column, cell.row)
        assert np.array_equal(_pixels(cell), _pixels(ref)), (cell.item, cell.row)
        assert cell.infotext == ref.infotext


class TaskLog:
    """A node host factory that writes one line per task start and per image to a file (the tests
    count attempts with it) and, when ``crash`` names a checkpoint, kills its worker with
    ``os._exit(1)`` after its first image on the first attempt (a marker file says it happened)."""

    def __init__(self, folder: Path, crash: str | None = None, transient: str | None = None):
        self.log, self.marker, self.crash = folder / "tasks.log", folder / "crashed", crash
        self.transient = transient  # this checkpoint's images always lose their connection

    def __call__(self, node):
        host = dataclasses.replace(node, host_factory=None).build_host()
        generate = host.generate
        made: list[int] = []

        def logged(checkpoint, spec, seed):
            with open(self.log, "a", encoding="utf-8") as file:
                file.write(f"{checkpoint.label} {seed} {'again' if made else 'first'}\n")
            if checkpoint.label == self.crash and made and not self.marker.exists():
                self.marker.write_text("crashed")
                os._exit(1)
            if checkpoint.label == self.transient:
                raise ConnectionError("the file server went away")
            image = generate(checkpoint, spec, seed)
            made.append(seed)
            return image

        host.generate = logged
        return host

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines()


@needs_runner
@needs_ray
@pytest.mark.slow
def test_ray_makes_the_local_executors_images_and_matrix(ray_session, family, local):
    result = _ray_probe(family)
    assert [c.status for c in result.cells] == [OK] * len(result.cells)
    _same_cells(result, local)
    for ours, theirs in zip(result.scores["ssim"].per_row, local.scores["ssim"].per_row, strict=True):
        assert np.array_equal(ours, theirs)
    assert result.environment == local.environment


@needs_runner
@needs_ray
@pytest.mark.slow
def test_a_worker_killed_mid_task_is_retried_and_every_cell_arrives_once(
    ray_session, family, local, tmp_path
):
    tasks = TaskLog(tmp_path, crash="finetune")
    result = _ray_probe(family, host_factory=tasks, max_retries=2)
    assert (tmp_path / "crashed").exists()
    assert [c.status for c in result.cells] == [OK] * len(result.cells)
    _same_cells(result, local)
    # finetune's first attempt made seed 1337 and died before 7; the retry made both again.
    assert tasks.lines().count("finetune 1337 first") == 2
    assert tasks.lines().count("base 1337 first") == 1


@needs_runner
@needs_ray
@pytest.mark.slow
def test_a_bad_checkpoint_fails_only_its_cells_and_is_not_retried(ray_session, family, local, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint" * 100)
    gone = tmp_path / "gone.safetensors"
    shutil.copy(family.checkpoints[1], gone)
    from cfgsim.standalone.host import StandaloneHost

    paths = [family.checkpoints[0], broken, gone, family.checkpoints[3]]
    host = StandaloneHost(paths, config_dir=family.config_dir, quiet=True)
    gone.unlink()  # described by the driver, missing on the node
    tasks = TaskLog(tmp_path)
    result = _ray_probe(family, host=host, host_factory=tasks)
    statuses = {item: {result.cell(item, r).status for r in range(2)} for item in range(4)}
    assert statuses == {0: {OK}, 1: {FAILED}, 2: {FAILED}, 3: {OK}}
    assert (
        "not a safetensors file" in result.cell(1, 0).reason
        and result.cell(1, 1).reason == result.cell(1, 0).reason
    )
    assert "no such file on node" in result.cell(2, 1).reason
    assert [line for line in tasks.lines() if line.startswith("broken")] == ["broken 1337 first"]
    _same_cells(result, local, columns={0: 0, 3: 3})


@needs_runner
@needs_ray
@pytest.mark.slow
def test_a_transient_error_is_retried_then_fails_only_that_checkpoint(ray_session, family, tmp_path):
    tasks = TaskLog(tmp_path, transient="merge")
    result = _ray_probe(family, host_factory=tasks, max_retries=1)
    merge = result.labels.index("merge")
    for cell in result.cells:
        assert cell.status == (FAILED if cell.item == merge else OK)
    assert result.cell(merge, 0).reason == "ConnectionError: the file server went away"
    assert tasks.lines().count("merge 1337 first") == 2  # the first run and one retry


class StopAfterFirst:
    """Makes a StandaloneHost report an interrupt once the first cell is done (as Ctrl-C would)."""

    @staticmethod
    def host(family):
        from cfgsim.standalone.host import StandaloneHost

        class Host(StandaloneHost):
            done = 0

            def progress(self, done, total, job):
                self.done = done

            def interrupted(self):
                return self.done >= 1

        return Host(family.checkpoints, config_dir=family.config_dir, quiet=True)


@needs_runner
@needs_ray
@pytest.mark.slow
def test_an_interrupt_cancels_the_rest_and_keeps_what_was_made(ray_session, family, local):
    result = _ray_probe(family, host=StopAfterFirst.host(family))
    statuses = [c.status for c in result.cells]
    assert result.interrupted
    assert FAILED not in statuses and OK in statuses and SKIPPED in statuses
    assert all(c.reason == INTERRUPTED_REASON for c in result.cells if c.status == SKIPPED)
    _same_cells(result, local)


@needs_runner
@needs_ray
@pytest.mark.slow
def test_cfgsim_probe_executor_ray(ray_session, family, local, tmp_path, capsys):
    from cfgsim.cli import main
    from cfgsim.metadata import read_result

    out = tmp_path / "out"
    paths = [str(p) for p in family.checkpoints[:2]]
    code = main(["-q", "probe", *paths, "--executor", "ray", "--config-dir", str(family.config_dir),
                 "--steps-override", "2", "--seeds", "1", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    result = read_result(out / "grid.png")
    assert result.labels == ["base", "finetune"]
    assert result.environment["device"] == "cpu"
    assert ray_session.is_initialized()  # a Ray the run found is left as it was
