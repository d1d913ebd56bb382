"""Benchmark: the batched SSIM matrix against scikit-image, its peak memory, and the summary table.

    python benchmarks/bench_ssim.py                 # all three parts
    python benchmarks/bench_ssim.py --only speed --n 8

Three parts, each measured against a baseline taken in the same run (never an absolute time):

* **speed**: N = 32 images of 512×512 RGB (``--n``, ``--size``), the batched matrix against
  scikit-image's ``structural_similarity`` called for each pair. The images are random but
  image-like (seeded): smooth random blobs at a few scales plus pixel noise, in families that share
  part of their blobs, so SSIM values spread over a range as between related and unrelated
  checkpoints, instead of sitting near 0 as for white noise. The batched time is the median of
  ``--repeat`` runs; the scikit-image loop (about a minute for N = 32) runs once. Wall-clock time
  decides; CPU time is shown too, because on a machine shared with other jobs the wall clock of
  either side can stretch. Fails when the speed-up is below ``--min-ratio`` (20) or any matrix
  entry differs from scikit-image by more than ``--max-diff`` (1e-4).
* **memory**: N = 8 images of 2048×2048 (``--memory-n``, ``--memory-size``) compared in a fresh
  process; its peak resident set (VmHWM, else ``ru_maxrss``) is reported next to the process's
  size with the images loaded and nothing compared. Fails above ``--max-rss-mb`` (1536).
* **table**: the terminal summary table of 100 items × 20 seeds (``--table-items``,
  ``--table-seeds``) against the irreducible work, one NaN-mean over the stack of matrices. Fails
  when the table takes more than ``--max-table-ratio`` (200) times that (the old table took about
  190,000 times: it recomputed the mean for every pair of items).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfgsim.host import Checkpoint
from cfgsim.metrics.ssim import SsimMetric
from cfgsim.output import summary_table
from cfgsim.result import Cell, MetricScores, ProbeResult, Reference
from cfgsim.spec import ProbeSpec


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    field = np.zeros((size, size, 3))
    for sigma, weight in ((size / 16, 1.0), (size / 64, 0.5), (size / 256, 0.25)):
        field += weight * ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), (sigma, sigma, 0))
    return field / field.std()


def random_content(
    rng: np.random.Generator, size: int, family: np.ndarray | None = None, share: float = 0.0
) -> np.ndarray:
    """A seeded image-like uint8 (size, size, 3) array: blobs at three scales plus pixel noise.

    With ``family`` (a field from :func:`_blobs`) the image takes ``share`` of its blobs from it, so
    images of one family resemble each other as probes of related checkpoints do.
    """
    field = _blobs(rng, size)
    if family is not None:
        field = share * family + (1.0 - share) * field
    field -= field.min()
    field *= 230.0 / max(float(field.max()), 1e-9)
    field += rng.normal(0.0, 8.0, field.shape)
    return np.clip(np.rint(field + 12.0), 0, 255).astype(np.uint8)


def make_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` images in families of up to eight, sharing 0-90 % of their family's blobs."""
    rng = np.random.default_rng(seed)
    families = [_blobs(rng, size) for _ in range(max(1, (n + 7) // 8))]
    return [
        random_content(rng, size, families[k % len(families)], share=float(rng.uniform(0.0, 0.9)))
        for k in range(n)
    ]


def bench_speed(args: argparse.Namespace) -> bool:
    """The batched matrix against scikit-image's pair loop; True when it passes."""
    images = make_images(args.n, args.size, args.seed)
    pairs = args.n * (args.n - 1) // 2
    print(f"speed: {args.n} images of {args.size}x{args.size} RGB, {pairs} pairs")

    metric = SsimMetric(workers=args.workers)
    runs = []  # (wall, cpu)
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        batched = metric.compare(images)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    batched_s, batched_cpu = sorted(runs)[len(runs) // 2]  # the median run
    print(
        f"  batched (cfgsim):    {batched_s:7.2f} s wall, {batched_cpu:7.2f} s CPU  "
        f"({batched_s / pairs * 1e3:.2f} ms a pair; median of "
        f"{args.repeat}: {', '.join(f'{r[0]:.2f}' for r in runs)} s)"
    )

    reference = np.eye(args.n)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(args.n):
        for j in range(i + 1, args.n):
            reference[i, j] = reference[j, i] = structural_similarity(
                images[i], images[j], channel_axis=2, data_range=255
            )
    loop_s, loop_cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"  pair loop (skimage): {loop_s:7.2f} s wall, {loop_cpu:7.2f} s CPU  "
        f"({loop_s / pairs * 1e3:.2f} ms a pair)"
    )

    ratio = loop_s / batched_s
    diff = float(np.abs(batched - reference).max())
    off_diagonal = reference[~np.eye(args.n, dtype=bool)]
    print(
        f"  speed-up: {ratio:.1f}x wall ({loop_cpu / batched_cpu:.1f}x in CPU time)   "
        f"largest |difference|: {diff:.2e}   SSIM range: {off_diagonal.min():.3f} .. {off_diagonal.max():.3f}"
    )
    ok = True
    if ratio < args.min_ratio:
        print(f"  FAIL: speed-up {ratio:.1f}x is below {args.min_ratio}x")
        ok = False
    if diff > args.max_diff:
        print(f"  FAIL: largest difference {diff:.2e} exceeds {args.max_diff:.0e}")
        ok = False
    return ok


def _peak_rss_mb() -> float:
    """This process's peak resident set. On Linux from VmHWM: ``ru_maxrss`` keeps the high-water
    mark of the parent the process was forked from (it survives exec), VmHWM starts afresh."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _memory_child(path: str, workers: int | None) -> int:
    """In a fresh process: load the images, note the peak so far, compare them, note the peak."""
    images = list(np.load(path))
    loaded = _peak_rss_mb()
    wall = time.perf_counter()
    matrix = SsimMetric(workers=workers).compare(images)
    seconds = time.perf_counter() - wall
    print(json.dumps({"loaded_mb": loaded, "peak_mb": _peak_rss_mb(), "seconds": seconds, "n": len(matrix)}))
    return 0


def bench_memory(args: argparse.Namespace) -> bool:
    """Peak RSS of comparing ``--memory-n`` images of ``--memory-size``² in a fresh process."""
    n, size = args.memory_n, args.memory_size
    rng = np.random.default_rng(args.seed)
    # Content does not change the memory; smooth-ish noise is quick to make at this size.
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    stack = np.stack(
        [np.roll(base, k, axis=1) ^ rng.integers(0, 32, base.shape, dtype=np.uint8) for k in range(n)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "images.npy")
        np.save(path, stack)
        del stack
        command = [sys.executable, __file__, "--memory-child", path]
        if args.workers:
            command += ["--workers", str(args.workers)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"memory: the measuring process failed:\n{done.stderr.strip()}")
        return False
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    images_mb = n * size * size * 3 / 2**20
    print(
        f"memory: {n} images of {size}x{size} RGB ({images_mb:.0f} MB of pixels): peak RSS "
        f"{figures['peak_mb']:.0f} MB, of which {figures['loaded_mb']:.0f} MB before comparing "
        f"(interpreter and images); compare took {figures['seconds']:.1f} s"
    )
    if figures["peak_mb"] > args.max_rss_mb:
        print(f"  FAIL: peak RSS {figures['peak_mb']:.0f} MB is above {args.max_rss_mb:.0f} MB")
        return False
    return True


def table_result(n_items: int, n_seeds: int, seed: int) -> ProbeResult:
    """A compared result of ``n_items`` × ``n_seeds`` with random symmetric matrices, no images."""
    rng = np.random.default_rng(seed)
    items = [Checkpoint(name=f"model-{i:03d}.safetensors", label=f"model-{i:03d}") for i in range(n_items)]
    spec = ProbeSpec(width=64, height=64, seeds=tuple(range(1, n_seeds + 1)))
    result = ProbeResult(spec=spec, items=items, rows=list(spec.seeds), reference=Reference())
    result.cells = [Cell(item=i, row=r) for r in range(n_seeds) for i in range(n_items)]
    per_row = []
    for _ in range(n_seeds):
        m = rng.uniform(0.2, 0.95, (n_items, n_items))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        per_row.append(m)
    result.scores = {"ssim": MetricScores("ssim", "SSIM", per_row=per_row)}
    return result


def bench_table(args: argparse.Namespace) -> bool:
    """The summary table against one NaN-mean over the stack of matrices (the least it must do)."""
    n, k = args.table_items, args.table_seeds
    result = table_result(n, k, args.seed)
    stack = np.stack(result.scores["ssim"].per_row)
    times = []
    for _ in range(5):
        wall = time.perf_counter()
        np.nanmean(stack, axis=0)
        times.append(time.perf_counter() - wall)
    baseline = sorted(times)[2]
    fresh = table_result(n, k, args.seed)  # nothing cached yet
    wall = time.perf_counter()
    text = summary_table(fresh)
    table_s = time.perf_counter() - wall
    assert len(text.splitlines()) == n + 1
    ratio = table_s / baseline
    print(
        f"table: summary of {n} items x {k} seeds: {table_s * 1e3:.1f} ms, "
        f"{ratio:.1f}x one nanmean of the matrices ({baseline * 1e3:.2f} ms)"
    )
    if ratio > args.max_table_ratio:
        print(f"  FAIL: the table takes {ratio:.0f}x the mean, above {args.max_table_ratio:.0f}x")
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("speed", "memory", "table"), help="run one part only")
    parser.add_argument("--n", type=int, default=32, help="speed: number of images (default 32)")
    parser.add_argument("--size", type=int, default=512, help="speed: image side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="threads for the batched matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=3, help="speed: batched runs; the median counts (default 3)"
    )
    parser.add_argument("--min-ratio", type=float, default=20.0)
    parser.add_argument("--max-diff", type=float, default=1e-4)
    parser.add_argument("--memory-n", type=int, default=8, help="memory: number of images (default 8)")
    parser.add_argument("--memory-size", type=int, default=2048, help="memory: image side (default 2048)")
    parser.add_argument("--max-rss-mb", type=float, default=1536.0)
    parser.add_argument("--table-items", type=int, default=100)
    parser.add_argument("--table-seeds", type=int, default=20)
    parser.add_argument("--max-table-ratio", type=float, default=200.0)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        return _memory_child(args.memory_child, args.workers)
    if args.n < 2:
        parser.error("--n must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{cores} usable cores; Python {platform.python_version()}, numpy {np.__version__}")
    parts = {"speed": bench_speed, "memory": bench_memory, "table": bench_table}
    results = [part(args) for name, part in parts.items() if args.only in (None, name)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
