"""Benchmark: the full default ``cfgsim demo`` (build the tiny family, probe it at 512x512, Euler 256 steps).

    python benchmarks/bench_demo.py                 # the README's figure: default settings
    python benchmarks/bench_demo.py --seeds 1-3     # the lineage over more seeds
    python benchmarks/bench_demo.py --family full --reduced --seeds 1-8 --families 3
                                                    # calibration cost: N random full families

With ``--families N`` it builds and probes N independent families (weight seeds 0..N-1) and prints
the time of each (build, probe) and whether the mean-SSIM tree agrees with the family's truth
(:meth:`FamilyTruth.violations`); without it, the single default run below.

Prints the wall-clock and CPU time of the build and of the probe, the time per image and the SSIM
scores against ``base``. Baseline, measured in the same run: the bare model compute of one probe
image — the same base checkpoint's UNet called once per step on a fixed latent, then one VAE
decode, with none of the runner around it. The ratio per image / baseline is the runner's overhead
(schedule, noise, text encoding, loading, comparison and writing the outputs). Wall-clock time
decides; CPU time is shown too, because on a machine shared with other jobs the wall clock
stretches. Exits with status 1 when the lineage order
(fine-tune > merge > both unrelated, every seed) does not hold or the run takes longer than
``--max-seconds`` (300).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bare_model_seconds(family, steps: int, size: int) -> float:
    """Seconds for ``steps`` UNet calls and one VAE decode of the family's base model: the floor."""
    import torch

    from cfgsim.standalone.configs import load_config_dir
    from cfgsim.standalone.pipeline import load_models, load_tokenizer

    config = load_config_dir(family.config_dir)
    models = load_models(family.checkpoints[0], config, tokenizer=load_tokenizer(config))
    latent = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cond = models.text.encode("", 2)
        start = time.perf_counter()
        for i in range(steps):
            models.unet(latent, torch.tensor([999.0 * (1 - i / steps)]), encoder_hidden_states=cond)
        models.vae.decode(latent / models.scaling_factor)
        return time.perf_counter() - start


def many_families(args: argparse.Namespace) -> int:
    """Build and probe ``args.families`` independent families; time each, check each against its truth."""
    import torch

    from cfgsim.standalone import demo

    spec = demo.demo_spec(steps=args.steps, seeds=args.seeds, size=args.size)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; family {args.family}, "
        f"{len(spec.seeds)} seed(s), {spec.steps} steps, {spec.width}x{spec.height}"
    )
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.families):
            wall, cpu = time.perf_counter(), time.process_time()
            family = demo.build_family(Path(tmp) / str(k), family=args.family, weight_seed=k)
            built = time.perf_counter() - wall
            result = demo.probe_family(family, spec, quiet=True)
            total, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
            violations = family.truth.violations(result.labels, result.scores["ssim"].mean)
            bad += bool(violations)
            images = len(result.labels) * len(spec.seeds)
            print(
                f"weight seed {k}: build {built:.1f} s, build + probe {total:.1f} s wall / "
                f"{total_cpu:.1f} s CPU ({images} images); truth {violations or 'ok'}"
            )
            shutil.rmtree(Path(tmp) / str(k))
    print(f"{args.families - bad}/{args.families} families agree with their truth")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1337")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--family", default="small", choices=["small", "full"])
    parser.add_argument("--reduced", action="store_true", help="128x128, 16 steps (see demo.demo_spec)")
    parser.add_argument("--families", type=int, default=0, metavar="N", help="time N random families")
    args = parser.parse_args()
    if args.reduced:
        from cfgsim.standalone.demo import REDUCED_SIZE, REDUCED_STEPS

        args.size, args.steps = REDUCED_SIZE, REDUCED_STEPS
    if args.families:
        return many_families(args)

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
        family = demo.build_family(Path(tmp) / "warm-up")  # imports and first-call costs, not the demo's
        build_wall = time.perf_counter() - wall
        bare = bare_model_seconds(family, args.steps, args.size)
        wall, cpu = time.perf_counter(), time.process_time()
        result, _ = demo.run_demo(
            Path(tmp) / "demo",
            family=args.family,
            steps=args.steps,
            seeds=seeds,
            size=args.size,
            quiet=True,
            write=True,
        )
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = len(result.items) * len(seeds)
    print(f"first build (imports included): {build_wall:.1f} s")
    print(
        f"demo (build + probe + outputs): {total_wall:.1f} s wall, {total_cpu:.1f} s CPU, "
        f"{total_wall / images:.1f} s per image"
    )
    print(
        f"baseline, bare model compute of one image ({args.steps} UNet calls + VAE decode): {bare:.1f} s; "
        f"demo per image / baseline: {total_wall / images / bare:.2f}x"
    )

    scores = result.scores["ssim"]
    ok = True
    for row, seed in enumerate(result.rows):
        by_label = dict(zip(result.labels, scores.vs_reference[row], strict=True))
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.4f}" for k, v in by_label.items() if k != "base"))
    violations = demo.get_family(args.family).truth.violations(result.labels, scores.mean)
    for line in violations:
        print(f"  against the truth: {line}")
    ok = not violations
    if args.family == "small":
        for row in range(len(result.rows)):
            by_label = dict(zip(result.labels, scores.vs_reference[row], strict=True))
            ok &= (
                by_label["finetune"] > by_label["merge"] > max(by_label["unrelated"], by_label["unrelated-2"])
            )
    if not ok:
        print("FAIL: the lineage order does not hold")
    if total_wall > args.max_seconds:
        print(f"FAIL: slower than {args.max_seconds:.0f} s")
    return 0 if ok and total_wall <= args.max_seconds else 1


if __name__ == "__main__":
    sys.exit(main())
