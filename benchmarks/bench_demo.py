"""Benchmark: the full default ``cfgsim demo`` (build the tiny family, probe it at 512x512, Euler 256 steps).

    python benchmarks/bench_demo.py                 # the README's figure: default settings
    python benchmarks/bench_demo.py --seeds 1-3     # the lineage over more seeds

Prints the wall-clock and CPU time of the build and of the probe, the time per image and the SSIM
scores against ``base``. Wall-clock time decides; CPU time is shown too, because on a machine
shared with other jobs the wall clock stretches. Exits with status 1 when the lineage order
(fine-tune > merge > both unrelated, every seed) does not hold or the run takes longer than
``--max-seconds`` (300).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1337")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()

    import torch

    from cfgsim.spec import parse_seeds
    from cfgsim.standalone import demo

    seeds = parse_seeds(args.seeds)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; {len(seeds)} seed(s), {args.steps} steps, {args.size}x{args.size}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        demo.build_family(Path(tmp) / "warm-up")  # imports and first-call costs, not the demo's own
        build_wall = time.perf_counter() - wall
        wall, cpu = time.perf_counter(), time.process_time()
        result, _ = demo.run_demo(
            Path(tmp) / "demo", steps=args.steps, seeds=seeds, size=args.size, quiet=True, write=True
        )
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = len(result.items) * len(seeds)
    print(f"first build (imports included): {build_wall:.1f} s")
    print(
        f"demo (build + probe + outputs): {total_wall:.1f} s wall, {total_cpu:.1f} s CPU, "
        f"{total_wall / images:.1f} s per image"
    )

    scores = result.scores["ssim"]
    ok = True
    for row, seed in enumerate(result.rows):
        by_label = dict(zip(result.labels, scores.vs_reference[row], strict=True))
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in by_label.items() if k != "base"))
        ok &= by_label["finetune"] > by_label["merge"] > max(by_label["unrelated"], by_label["unrelated-2"])
    if not ok:
        print("FAIL: the lineage order does not hold")
    if total_wall > args.max_seconds:
        print(f"FAIL: slower than {args.max_seconds:.0f} s")
    return 0 if ok and total_wall <= args.max_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
