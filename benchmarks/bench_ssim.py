"""Benchmark: the batched SSIM matrix against scikit-image called for each pair, in one run.

    python benchmarks/bench_ssim.py            # N = 32 images of 512×512 RGB
    python benchmarks/bench_ssim.py --n 8      # quicker

The images are random but image-like (seeded): smooth random blobs at a few scales plus pixel
noise, in families that share part of their blobs, so SSIM values spread over a range as between
related and unrelated checkpoints, instead of sitting near 0 as for white noise.
The batched time includes :meth:`SsimMetric.prepare`; it is the median of ``--repeat`` runs, the
scikit-image loop (about a minute for N = 32) runs once. Wall-clock time decides; CPU time is shown
too, because on a machine shared with other jobs the wall clock of either side can stretch. Exits
with status 1 when the wall-clock speed-up is below ``--min-ratio`` (20) or any matrix entry differs
from scikit-image by more than ``--max-diff`` (1e-4).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfgsim.metrics.ssim import SsimMetric


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="number of images (default 32)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="threads for the batched matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="batched runs; the median counts (default 3)")
    parser.add_argument("--min-ratio", type=float, default=20.0)
    parser.add_argument("--max-diff", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    images = make_images(args.n, args.size, args.seed)
    pairs = args.n * (args.n - 1) // 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{args.n} images of {args.size}x{args.size} RGB, {pairs} pairs; {cores} usable cores; "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )

    metric = SsimMetric(workers=args.workers)
    runs = []  # (wall, cpu, prepare wall, matrix)
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        prepared = metric.prepare(images)
        prepare_s = time.perf_counter() - wall
        batched = metric.matrix(prepared)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu, prepare_s))
        del prepared
    batched_s, batched_cpu, prepare_s = sorted(runs)[len(runs) // 2]  # the median run
    print(
        f"batched (cfgsim):    {batched_s:7.2f} s wall, {batched_cpu:7.2f} s CPU  "
        f"({batched_s / pairs * 1e3:.2f} ms a pair; prepare {prepare_s:.2f} s; median of "
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
        f"pair loop (skimage): {loop_s:7.2f} s wall, {loop_cpu:7.2f} s CPU  "
        f"({loop_s / pairs * 1e3:.2f} ms a pair)"
    )

    ratio = loop_s / batched_s
    diff = float(np.abs(batched - reference).max())
    off_diagonal = reference[~np.eye(args.n, dtype=bool)]
    print(
        f"speed-up: {ratio:.1f}x wall ({loop_cpu / batched_cpu:.1f}x in CPU time)   "
        f"largest |difference|: {diff:.2e}   SSIM range: {off_diagonal.min():.3f} .. {off_diagonal.max():.3f}"
    )
    failed = False
    if ratio < args.min_ratio:
        print(f"FAIL: speed-up {ratio:.1f}x is below {args.min_ratio}x")
        failed = True
    if diff > args.max_diff:
        print(f"FAIL: largest difference {diff:.2e} exceeds {args.max_diff:.0e}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
