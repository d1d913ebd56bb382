"""Benchmark: nearest relatives among N = 2,000 probe-like images — exact chunked SSIM vs pre-filter.

    nice -n 10 python benchmarks/bench_scale.py            # N = 2,000 images of 512×512
    nice -n 10 python benchmarks/bench_scale.py --quick    # N = 300 of 128×128, the full matrix too

A simulated study (:mod:`cfgsim.scale.synthetic`): families of 8–32 related images (a base, three
branches, members with perturbations of log-uniform strength, one in ten a merge with another
family), written as PNG files into ``--dir`` (kept and reused between runs) and read back from
there as the ``cfgsim nearest`` command would. Every figure is measured in this run:

1. **exact, N×N** (:class:`cfgsim.scale.chunked.ChunkedMatrix`): the first ``--exact-blocks``
   blocks of the symmetric matrix with a state file; the full time is **extrapolated** from their
   throughput (pairs per second, loading included) to N(N−1)/2 pairs — the full matrix at 512² is
   about an hour on two cores. ``--quick`` computes the whole matrix as well, so the extrapolation
   can be checked against it.
2. **exact nearest-k of a sample** of ``--queries`` items against all N (a Q×N chunked matrix):
   the ground truth for recall, and a second throughput figure.
3. **pre-filter, every item's k nearest** (:func:`cfgsim.scale.prefilter.nearest`, all N queries,
   thumb32 descriptors, ``--candidates`` M): time, peak memory, pairs scored; recall@k on the sample.
4. **descriptors**: recall@k on the sample for thumb (16², 32², 64²) and pHash (64, 256 bits) at
   several M, from one descriptor pass and the exact Q×N matrix (no extra SSIM).
5. **index**: FAISS ``IndexFlatIP`` vs the numpy brute force vs ``scipy.spatial.cKDTree`` for
   the search of all N thumb32 descriptors (top M + 1).

Peak memory of each phase: the process's resident peak (VmHWM, reset through
``/proc/self/clear_refs`` before the phase; Linux) and tracemalloc's peak of Python/numpy
allocations. The baseline for memory is all N images decoded at once (what ``SsimMetric.matrix``
on the whole list would hold), computed, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfgsim.scale.chunked import ChunkedMatrix, top_k
from cfgsim.scale.prefilter import VectorIndex, describe, faiss_available, nearest
from cfgsim.scale.sources import PathSource
from cfgsim.scale.synthetic import family_set


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class Phase:
    """Wall time, CPU time, resident peak (VmHWM after a reset) and tracemalloc peak of a block."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Phase:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        tracemalloc.start()
        tracemalloc.reset_peak()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        self.traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        self.rss = _hwm_mb()

    def line(self) -> str:
        rss = f"{self.rss:.0f} MB" if self.rss is not None else "n/a"
        return (
            f"{self.wall:8.1f} s wall, {self.cpu:8.1f} s CPU, peak RSS {rss}, "
            f"traced peak {self.traced:.0f} MB"
        )


def make_images(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    recipe = {"n": n, "size": size, "seed": seed, "generator": "cfgsim.scale.synthetic/1"}
    manifest = folder / "manifest.json"
    paths = [folder / f"f{i // 100:02d}" / f"item{i:05d}.png" for i in range(n)]
    if manifest.exists() and json.loads(manifest.read_text()) == recipe and all(p.exists() for p in paths):
        print(f"images: reusing {n} images in {folder}")
        return paths
    fs = family_set(n, size, seed)
    t0 = time.perf_counter()
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fs.image(i)).save(path, compress_level=1)
    manifest.write_text(json.dumps(recipe))
    print(f"images: wrote {n} images of {size}x{size} to {folder} in {time.perf_counter() - t0:.0f} s")
    return paths


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100, help="sampled queries with the exact answer")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=50, help="M: candidates per query scored exactly")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--exact-blocks", type=int, default=4, help="blocks of the N×N matrix measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="image folder (default: a folder in the temp dir)")
    ap.add_argument("--quick", action="store_true", help="N = 300 at 128x128, full matrix too")
    args = ap.parse_args()
    if args.quick:
        args.n, args.size, args.queries, args.exact_blocks = 300, 128, 40, 3
    folder = Path(args.dir or Path(tempfile.gettempdir()) / f"cfgsim-bench-scale-{args.n}-{args.size}")
    paths = make_images(folder, args.n, args.size, args.seed)
    n, k, m = args.n, args.k, args.candidates
    source = PathSource(paths)
    image_mb = args.size * args.size * 3 / 2**20
    print(
        f"N = {n} images of {args.size}x{args.size} ({n * image_mb:.0f} MB decoded), block {args.block}, "
        f"k = {k}, M = {m}, {os.cpu_count()} CPUs, faiss {'yes' if faiss_available() else 'no'}"
    )
    rng = np.random.default_rng(args.seed + 1)
    sample = sorted(rng.choice(n, size=min(args.queries, n), replace=False).tolist())

    # 1. The exact N×N matrix: a slice of its blocks, with a state file.
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.db"
        chunked = ChunkedMatrix(source, block=args.block, state=state)
        blocks = chunked.block_list()
        sides = [
            (len(chunked._range(bi, 0, n)), len(chunked._range(bj, 1, n)), bi == bj) for bi, bj in blocks
        ]
        pairs_in = [r * (r - 1) // 2 if diagonal else r * c for r, c, diagonal in sides]
        measured = min(args.exact_blocks, len(blocks))
        with Phase("exact N×N slice") as p1:
            chunked.compute(max_blocks=measured)
        pairs_measured = sum(pairs_in[:measured])
        rate = pairs_measured / p1.wall
        total_pairs = n * (n - 1) // 2
        extrapolated = total_pairs / rate
        print(f"1. exact N×N: {measured} of {len(blocks)} blocks ({pairs_measured} pairs): {p1.line()}")
        print(
            f"   {rate:.0f} pairs/s, {chunked.loads} loads -> EXTRAPOLATED full matrix: {total_pairs} pairs, "
            f"{extrapolated:.0f} s = {extrapolated / 3600:.2f} h"
        )
        full = None
        if args.quick:
            with Phase("exact N×N full") as pf:
                rest = ChunkedMatrix(source, block=args.block, state=state)
                full = rest.compute()
            print(
                f"   full matrix (resumed {rest.blocks_resumed} blocks, computed {rest.blocks_computed}): "
                f"{pf.line()}; measured/extrapolated rest "
                f"{pf.wall / (extrapolated * (1 - pairs_measured / total_pairs)):.2f}"
            )

    # 2. Exact nearest-k of the sample against all N.
    queries = PathSource([paths[i] for i in sample])
    with Phase("exact sample") as p2:
        rect = ChunkedMatrix(queries, source, block=(len(sample), args.block))
        exact = rect.compute()
    truth = [[j for j, _ in row] for row in top_k(exact, k, [{i} for i in sample])]
    rate2 = len(sample) * n / p2.wall
    print(f"2. exact {len(sample)} queries x {n}: {p2.line()}; {rate2:.0f} pairs/s, {rect.loads} loads")
    if full is not None:
        print(f"   matches the full matrix: {np.array_equal(exact, full[sample])}")

    # 3. The pre-filter route for every item.
    with Phase("prefilter all") as p3:
        found = nearest(source, None, k=k, candidates=m, descriptor="thumb")
    r3 = recall([[j for j, _ in found.neighbours[i]] for i in sample], truth)
    print(
        f"3. pre-filter, all {n} items' {k} nearest (thumb32, {found.backend}, M = {m}): {p3.line()}; "
        f"{found.pairs} SSIM pairs, {found.loads} loads; recall@{k} on the sample {r3:.3f}"
    )
    print(
        f"   vs exact all items (extrapolated {extrapolated:.0f} s): {extrapolated / p3.wall:.1f}x faster; "
        f"baseline memory of all images at once {n * image_mb:.0f} MB"
    )

    # 4. Descriptors: recall@k on the sample at several M, from one pass.
    kinds = [("thumb", 16), ("thumb", 32), ("thumb", 64), ("phash", 8), ("phash", 16)]
    vectors = {(kind, s): np.empty((n, s * s), np.float32) for kind, s in kinds}
    t0 = time.perf_counter()
    times = dict.fromkeys(kinds, 0.0)
    for i in range(n):
        img = source.load(i)
        for kind, s in kinds:
            t = time.perf_counter()
            vectors[kind, s][i] = describe(img, kind, s)
            times[kind, s] += time.perf_counter() - t
    print(f"4. descriptors of {n} images in {time.perf_counter() - t0:.0f} s (loading included)")
    ms = [v for v in (10, 20, 50, 100, 200) if v < n]
    print(f"   recall@{k} vs M: " + "  ".join(f"M={v:>3}" for v in ms))
    for kind, s in kinds:
        index = VectorIndex(vectors[kind, s], "numpy")
        _, ids = index.search(vectors[kind, s][sample], max(ms) + 1)
        values = []
        for mm in ms:
            got = []
            for q, i in enumerate(sample):
                cand = [j for j in ids[q] if j != i][:mm]
                got.append([cand[t] for t in np.argsort(-exact[q, cand], kind="stable")[:k]])
            values.append(recall(got, truth))
        label = f"{kind}{s if kind == 'thumb' else s * s}"
        print(
            f"   {label:<9} ({times[kind, s] / n * 1e3:.2f} ms/img): "
            + "  ".join(f"{v:5.3f}" for v in values)
        )

    # 5. Index backends on thumb32, all N queries, top M + 1.
    vec = vectors["thumb", 32]
    timings = {}
    results = {}
    for backend in ("faiss", "numpy") if faiss_available() else ("numpy",):
        t = time.perf_counter()
        index = VectorIndex(vec, backend)
        _, results[backend] = index.search(vec, m + 1)
        timings[backend] = time.perf_counter() - t
    from scipy.spatial import cKDTree

    t = time.perf_counter()
    tree = cKDTree(vec)
    tree.query(vec, m + 1)
    timings["cKDTree"] = time.perf_counter() - t
    base = timings["numpy"]
    print(
        "5. index, all "
        + f"{n} queries, top {m + 1} of {vec.shape[1]}-d: "
        + ", ".join(f"{b} {s * 1e3:.0f} ms ({s / base:.2f}x numpy)" for b, s in timings.items())
    )
    if "faiss" in results:
        same = np.mean(
            [len(set(a) & set(b)) / len(a) for a, b in zip(results["faiss"], results["numpy"], strict=True)]
        )
        print(f"   faiss and numpy candidates agree: {same:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
