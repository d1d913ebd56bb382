"""Benchmark: the demo family probed by the local executor, and by Ray with 1 and with 2 workers.

    nice -n 10 python benchmarks/bench_ray.py                   # the figures in RESULTS-ray.md
    python benchmarks/bench_ray.py --steps 64 --size 256 --seeds 1-4

The small demo family (5 checkpoints) is built once, then probed three ways in one process:

* **local** — :class:`~cfgsim.probe.LocalExecutor` in this process: the baseline.
* **ray ×1** — :class:`~cfgsim.distributed.RayExecutor` on a local Ray with ``num_cpus`` = the
  machine's CPUs and each task asking for all of them: one task (one checkpoint) at a time.
* **ray ×2** — the same Ray, each task asking for half: two checkpoints at once.

To be fair, every probe runs torch with **one thread** (the local run and each Ray worker): the
comparison is one worker against two, not one 2-thread process against two 1-thread ones. Ray's
start (``ray.init``) and a warm-up run (the workers import torch and diffusers once) are timed
apart and not in the figures: a cluster is started once and serves many runs. Ray stops idle
workers it does not need (the second one during a 1-worker run, after 1 s idle by default): the
benchmark keeps them (``idle_worker_killing_time_threshold_ms``) and runs a 1-step warm-up of each
mode before measuring it. A ``cfgsim probe --executor ray`` run is a new Ray job whose workers
import torch and diffusers once each, in parallel: the warm-up time below is that start. Each mode runs
``--repeats`` times, the order turning each round; the best run counts (the median is shown too),
since on a shared machine the wall clock stretches with the others' load (printed). Every mode must
make the local run's very pixels (checked; exit 1 otherwise). A machine check before and after
(two busy pure-Python processes against one) says how much of a second core there was to gain.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def probe(family, spec, executor=None):
    """(seconds, result) of one probe of the whole family."""
    from cfgsim.probe import run_probe
    from cfgsim.standalone.host import StandaloneHost

    host = StandaloneHost(family.checkpoints, config_dir=family.config_dir, quiet=True)
    started = time.perf_counter()
    result = run_probe(host, host.checkpoints(), spec, executor=executor)
    return time.perf_counter() - started, result


def _busy(n: int) -> int:
    return sum(i * i for i in range(n))


def core_check(n: int = 6_000_000) -> float:
    """How many cores two busy processes get here now: the wall time of one process doing two
    units of pure-Python work over that of two processes doing one each (2.0 on an idle 2-core
    machine; near 1.0 where other jobs take the second core)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(_busy, [1000, 1000])  # both processes up
        started = time.perf_counter()
        pool.apply(_busy, (2 * n,))
        one = time.perf_counter() - started
        started = time.perf_counter()
        pool.map(_busy, [n, n], chunksize=1)
        two = time.perf_counter() - started
    return one / two


def same_pixels(a, b) -> bool:
    import numpy as np

    return all(
        x.ok and y.ok and np.array_equal(np.asarray(x.image), np.asarray(y.image))
        for x, y in zip(a.cells, b.cells, strict=True)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-2")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs given to Ray")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode (best and median shown)")
    args = parser.parse_args()

    import ray
    import torch

    from cfgsim.distributed import RayExecutor
    from cfgsim.spec import parse_seeds
    from cfgsim.standalone import demo

    torch.set_num_threads(1)
    spec = demo.demo_spec(steps=args.steps, seeds=parse_seeds(args.seeds), size=args.size)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"{os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}); 1 torch thread per probe; "
        f"{len(spec.seeds)} seed(s), {spec.steps} steps, {spec.width}x{spec.height}"
    )
    before = core_check()
    half = max(1, args.cpus // 2)
    modes = {"local": None, "ray x1": args.cpus, f"ray x{args.cpus // half}": half}  # CPUs per task
    times: dict[str, list[float]] = {name: [] for name in modes}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        family = demo.build_family(Path(tmp) / "family")
        images = len(family.checkpoints) * len(spec.seeds)
        tiny = spec.replace(steps=1, seeds=(1,))
        probe(family, tiny)  # imports and first calls, as the workers'
        started = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            logging_level="WARNING",
            _system_config={"idle_worker_killing_time_threshold_ms": 600_000},  # keep workers warm
        )
        init = time.perf_counter() - started
        started = time.perf_counter()
        probe(family, tiny, RayExecutor(num_cpus=half, threads=1))
        warm = time.perf_counter() - started
        names = list(modes)
        for repeat in range(args.repeats):  # the order turns each time: a load change hits every mode
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                cpus = modes[name]

                def executor(cpus=cpus):
                    return None if cpus is None else RayExecutor(num_cpus=cpus, threads=1)

                # This mode's workers up and warm first, so that no measured run pays for a start.
                probe(family, tiny, executor())
                seconds, results[name] = probe(family, spec, executor())
                times[name].append(seconds)
        ray.shutdown()

    print(f"ray.init {init:.1f} s; warm-up (workers import torch, diffusers): {warm:.1f} s — not below")
    print(f"load average after: {os.getloadavg()[0]:.1f}; {args.repeats} run(s) per mode, best and median")
    print(
        f"machine check: two busy processes get {before:.2f}x / {core_check():.2f}x the throughput of one "
        "(before / after; 2.00x = two free cores)"
    )
    print(f"{'mode':<8} {'best s':>7} {'median s':>9} {'s/image':>8} {'vs local':>9}  same pixels")
    ok = True
    best = {name: min(t) for name, t in times.items()}
    for name, runs in times.items():
        same = same_pixels(results[name], results["local"])
        ok &= same
        print(
            f"{name:<8} {best[name]:7.1f} {statistics.median(runs):9.1f} {best[name] / images:8.2f} "
            f"{best[name] / best['local']:8.2f}x  {same}   (runs: {', '.join(f'{t:.1f}' for t in runs)})"
        )
    two = names[2]
    print(f"{two} vs ray x1: {best['ray x1'] / best[two]:.2f}x the throughput ({images} images per run)")
    if not ok:
        print("FAIL: a Ray run made other pixels than the local one")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
