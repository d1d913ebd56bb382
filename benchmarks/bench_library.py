"""Benchmark (issue 10, b): what the probe library saves on a re-run and on an added checkpoint.

    python benchmarks/bench_library.py                       # the figures in RESULTS-library.md
    python benchmarks/bench_library.py --steps-override 8    # quicker, smaller ratios' denominators

Six checkpoints of the full demo family of known lineage (built offline in about a second) are
probed with the real standalone runner (:class:`cfgsim.standalone.host.StandaloneHost`) under the
cfg1 probe at 512x512 with a quick-preview step count (``--steps-override``, default 32) and
``--seeds`` (default 1-2), scored with SSIM. Four runs, each timed from building the host (checkpoint
hashes come from a hash cache of their own, warm after the first run) to the compared result:

1. the first run of five checkpoints into an empty library (every image generated and stored);
2. the same probe again (every image from the library; no checkpoint loaded);
3. a sixth checkpoint added to the cached five (only its images generated);
4. the baseline of 3: all six probed fresh, without a library.

Prints the ratios 2/1 (target <= 0.05) and 3/4 (target <= 0.25), measured in the same run, and
checks that the cached run generated nothing, the added run generated only the new checkpoint's
images and the scores of every run agree. Exits 1 when a check or a target fails. Wall-clock time
decides; CPU time is shown too (this machine is shared). One torch thread by default (``--threads``).
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

MEMBERS = ("base", "ft1", "merge-base50-unrel50", "unrel", "unrel2")
ADDED = "ft2"


class Counting:
    """Wraps a host to count the images it generates (the library's hits never reach it)."""

    def __init__(self, host) -> None:
        self.host = host
        self.generated = 0
        self.name = host.name

    def __getattr__(self, name):
        return getattr(self.host, name)

    def generate(self, checkpoint, spec, seed):
        self.generated += 1
        return self.host.generate(checkpoint, spec, seed)

    def generate_many(self, checkpoint, spec, seeds):
        self.generated += len(seeds)
        return self.host.generate_many(checkpoint, spec, seeds)


def probe(family, paths, spec, library, hash_cache):
    """(seconds wall, seconds CPU, images generated, result) of one probe run."""
    from cfgsim.compare import build_metrics
    from cfgsim.probe import run_probe
    from cfgsim.standalone.checkpoint import describe_checkpoint
    from cfgsim.standalone.host import StandaloneHost

    wall, cpu = time.perf_counter(), time.process_time()
    host = StandaloneHost(
        paths, config_dir=family.config_dir, device="cpu", rng="cpu", quiet=True, full_hash=False
    )
    host._checkpoints = [describe_checkpoint(p, hash_cache=hash_cache) for p in paths]
    counted = Counting(host)
    result = run_probe(counted, host.checkpoints(), spec, metrics=build_metrics(["ssim"]), library=library)
    return time.perf_counter() - wall, time.process_time() - cpu, counted.generated, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-2")
    parser.add_argument("--steps-override", type=int, default=32, metavar="N")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    from cfgsim.host import HashCache
    from cfgsim.library import ProbeLibrary
    from cfgsim.standalone import demo

    torch.set_num_threads(args.threads)
    spec = demo.demo_spec(seeds=args.seeds, size=args.size).replace(steps_override=args.steps_override)
    n_seeds = len(spec.seeds)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), "
        f"{os.cpu_count()} CPUs; {n_seeds} seed(s), {spec.effective_steps} steps, {spec.width}x{spec.height}"
    )
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        family = demo.build_family(tmp / "family", family="full")
        by_name = dict(zip(family.names, family.checkpoints, strict=True))
        five = [by_name[m] for m in MEMBERS]
        six = [*five, by_name[ADDED]]
        hashes = HashCache(tmp / "hashes.json")
        library = ProbeLibrary(tmp / "library")
        # Warm-up outside the timings: imports, first torch calls, the hash cache.
        probe(family, five[:1], spec.replace(seeds=spec.seeds[:1], steps_override=1), None, hashes)

        runs = {}
        runs["first"] = probe(family, five, spec, library, hashes)
        runs["cached"] = probe(family, five, spec, library, hashes)
        runs["added"] = probe(family, six, spec, library, hashes)
        runs["fresh6"] = probe(family, six, spec, None, hashes)

        size = sum(p.stat().st_size for p in (tmp / "library").rglob("*") if p.is_file())
    for name, (wall, cpu, made, _result) in runs.items():
        print(f"{name:<7} {wall:7.2f} s wall {cpu:7.2f} s CPU, {made:3d} image(s) generated")
    expect = {"first": 5 * n_seeds, "cached": 0, "added": n_seeds, "fresh6": 6 * n_seeds}
    for name, count in expect.items():
        if runs[name][2] != count:
            failures.append(f"{name}: {runs[name][2]} images generated, expected {count}")
    reference = runs["fresh6"][3].scores["ssim"].mean
    for name in ("first", "cached", "added"):
        mean = runs[name][3].scores["ssim"].mean
        k = len(mean)
        if not np.allclose(mean, reference[:k, :k], atol=1e-6, equal_nan=True):
            failures.append(f"{name}: SSIM differs from the fresh run")
    rerun = runs["cached"][0] / runs["first"][0]
    added = runs["added"][0] / runs["fresh6"][0]
    print(f"cached re-run / first run:             {rerun:.3f}x (target <= 0.05)")
    print(f"6th added to cached 5 / 6 fresh:       {added:.3f}x (target <= 0.25)")
    print(f"library: {(5 + 1) * n_seeds} images, {size / 1e6:.1f} MB on disk")
    if rerun > 0.05:
        failures.append(f"re-run ratio {rerun:.3f} > 0.05")
    if added > 0.25:
        failures.append(f"added ratio {added:.3f} > 0.25")
    for line in failures:
        print(f"FAIL: {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
