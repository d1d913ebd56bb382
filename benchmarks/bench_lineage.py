"""Calibration and accuracy of the lineage verdict on real probes of random demo families.

Two parts, both with the real standalone runner (tiny SD 1.x models with random weights):

1. **Calibration of the paired test** over ``--families`` independent random families (a fresh
   weight draw each). Each family holds, around two roots, pairs of fine-tunes made with the same
   recipe and independent noise (B and C *equally related* to A by construction: the null) and a
   light vs a heavy fine-tune (B clearly nearer: the alternative). For every null triple the
   sign-flip test on the per-seed SSIM differences s(A,B) − s(A,C) is run; the fraction with
   p < alpha is the false-positive rate (target ≤ alpha), and the fraction of alternatives with
   p < alpha is the power. Reduced probe (128 px, 16 steps), 8 seeds.
2. **Accuracy on the full demo family** (13 members with a known tree, see
   :data:`cfgsim.standalone.demo.DEMO_FAMILIES`): clade support of the unambiguous clades, the
   nearest relative of every item whose truth is unambiguous, merges nearer their larger parent,
   copies "same model". ``--full-size`` probes at 512 px / 256 steps (minutes per seed on a CPU).

Prints every figure; the README's "Lineage verdict" section quotes them.

    python benchmarks/bench_lineage.py --families 50          # ~20 min on 2 CPU cores
    python benchmarks/bench_lineage.py --accuracy-only --full-size
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cfgsim.lineage import SAME, analyse, sign_flip_test
from cfgsim.standalone.demo import FamilySpec, FamilyTruth, Member, run_demo

FT = 0.10  # the fine-tunes' weight noise (of each tensor's std)
LIGHT, HEAVY = 0.05, 0.15  # the alternative: a lighter and a heavier fine-tune of one parent

CALIBRATION = FamilySpec(
    name="calibration",
    description="two roots, each with two fine-tunes of one recipe (null), plus a light and a heavy one",
    members=(
        Member("base", "root", seed=1, dtype="float32"),
        Member("base-a", "finetune", ("base",), strength=FT, seed=31, dtype="float32"),
        Member("base-b", "finetune", ("base",), strength=FT, seed=33, dtype="float32"),
        Member("base-light", "finetune", ("base",), strength=LIGHT, seed=35, dtype="float32"),
        Member("base-heavy", "finetune", ("base",), strength=HEAVY, seed=37, dtype="float32"),
        Member("unrel", "root", seed=2, dtype="float32"),
        Member("unrel-a", "finetune", ("unrel",), strength=FT, seed=41, dtype="float32"),
        Member("unrel-b", "finetune", ("unrel",), strength=FT, seed=43, dtype="float32"),
    ),
    truth=FamilyTruth(
        equally_related=(("base", "base-a", "base-b"), ("unrel", "unrel-a", "unrel-b")),
    ),
)
ALTERNATIVES = (("base", "base-light", "base-heavy"),)


def per_seed(result, a: str, b: str) -> np.ndarray:
    labels = result.labels
    i, j = labels.index(a), labels.index(b)
    return np.array([m[i, j] for m in result.scores["ssim"].per_row])


def _one_family(job: tuple[int, str, str, str]) -> tuple[list[float], list[float], dict]:
    """The p-values of one random calibration family, and its per-seed SSIM matrices (a worker)."""
    k, seeds, work, device = job
    result, _ = run_demo(
        Path(work) / f"cal{k}", family=CALIBRATION, weight_seed=k + 1, seeds=seeds, reduced=True,
        quiet=True, write=False, device=device, batch_size=8,
    )  # fmt: skip
    null = [
        sign_flip_test(per_seed(result, a, b) - per_seed(result, a, c), rng_seed=k)
        for a, b, c in CALIBRATION.truth.equally_related
    ]
    alt = [
        sign_flip_test(per_seed(result, a, b) - per_seed(result, a, c), rng_seed=k)
        for a, b, c in ALTERNATIVES
    ]
    import shutil

    shutil.rmtree(Path(work) / f"cal{k}", ignore_errors=True)
    raw = {"family": k, "labels": result.labels, "rows": result.rows,
           "ssim": [m.tolist() for m in result.scores["ssim"].per_row]}  # fmt: skip
    return null, alt, raw


def calibrate(
    families: int,
    seeds: str,
    alpha: float,
    work: Path,
    *,
    device: str = "cpu",
    workers: int = 1,
    save: Path | None = None,
) -> dict[str, float]:
    null_p: list[float] = []
    alt_p: list[float] = []
    started = time.perf_counter()
    jobs = [(k, seeds, str(work), device) for k in range(families)]
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_single_thread)
        results = pool.imap_unordered(_one_family, jobs)
    else:
        pool, results = None, map(_one_family, jobs)
    raws = []
    for done, (null, alt, raw) in enumerate(results, start=1):
        null_p += null
        alt_p += alt
        raws.append(raw)
        if save is not None and done % 10 == 0:  # a run cut short still leaves its families
            _save(save, seeds, raws)
        elapsed = time.perf_counter() - started
        fpr = np.mean(np.array(null_p) < alpha)
        print(
            f"family {done}/{families}: {elapsed:.0f} s; false positives so far {fpr:.3f} "
            f"({len(null_p)} null tests)",
            flush=True,
        )
    if pool is not None:
        pool.close()
        pool.join()
    if save is not None:  # every family's per-seed matrices, to recompute any statistic later
        _save(save, seeds, raws)
    null = np.array(null_p)
    alt = np.array(alt_p)
    fpr = float(np.mean(null < alpha))
    se = math.sqrt(alpha * (1 - alpha) / len(null))
    return {
        "families": families,
        "null_tests": len(null),
        "false_positive_rate": fpr,
        "fpr_standard_error_at_alpha": se,
        "power": float(np.mean(alt < alpha)),
        "alt_tests": len(alt),
        "seconds_in_all": time.perf_counter() - started,
    }


def _save(path: Path, seeds: str, raws: list[dict]) -> None:
    import json

    path.write_text(json.dumps({"seeds": seeds, "families": raws}), encoding="utf-8")


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def accuracy(
    seeds: str, full_size: bool, work: Path, replicates: int, *, device: str = "cpu", out: Path | None = None
) -> dict[str, object]:
    started = time.perf_counter()
    result, _ = run_demo(
        work / "full",
        family="full",
        seeds=seeds,
        reduced=not full_size,
        quiet=True,
        write=False,
        device=device,
    )
    probe_time = time.perf_counter() - started
    lineage = analyse(result, replicates=replicates)
    result.lineage = lineage
    if out is not None:  # the pictures and the JSON, for the README and a look
        from cfgsim.output import write_outputs

        write_outputs(result, out, save_cells=False)
    from cfgsim.standalone.demo import DEMO_FAMILIES

    truth = DEMO_FAMILIES["full"].truth
    labels = result.labels
    clades = {frozenset(labels[m] for m in c.members): c.support for c in lineage.clades}
    rel = {r.label: r for r in lineage.relatives}
    out: dict[str, object] = {"probe_seconds": round(probe_time, 1), "seeds": seeds, "full_size": full_size}
    out["clade_support"] = {
        "+".join(sorted(c)): (None if clades.get(c) is None else round(clades[c], 3))
        if c in clades
        else "absent"
        for c in truth.clades
    }
    # Each unrelated root outside the base's family: the base's clade does not hold it.
    base_clade = max((c for c in truth.clades if "base" in c), key=len)
    out["roots_outside_base_clade"] = {
        root: all(not (root in members and base_clade <= members) or len(members) == len(labels)
                  for members in clades)
        for root in truth.unrelated
    }  # fmt: skip
    out["nearest_correct"] = {
        item: rel[item].nearest_label in allowed for item, allowed in truth.nearest.items()
    }
    out["merges_nearer_larger_parent"] = {}
    for merge, (major, minor) in truth.merge_parents.items():
        i = labels.index(merge)
        mean = lineage.mean
        items = lineage.items
        s_major = mean[items.index(i), items.index(labels.index(major))]
        s_minor = mean[items.index(i), items.index(labels.index(minor))]
        out["merges_nearer_larger_parent"][merge] = f"{s_major:.3f} vs {s_minor:.3f}: {s_major > s_minor}"
    out["same_model"] = {item: rel[item].band == SAME for group in truth.same_model for item in group}
    out["verdicts"] = {r.label: r.verdict for r in lineage.relatives}
    out["newick"] = lineage.newick
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", type=int, default=50)
    parser.add_argument("--seeds", default="1-8")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--full-size", action="store_true", help="accuracy at 512 px / 256 steps")
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--calibration-only", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="calibration families in parallel")
    parser.add_argument("--out", type=Path, default=None, help="write the accuracy run's grid/tree/JSON here")
    parser.add_argument("--save", type=Path, default=None, help="write the calibration's raw matrices (JSON)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cfgsim-bench-lineage-") as tmp:
        work = Path(tmp)
        if not args.calibration_only:
            acc = accuracy(
                args.seeds, args.full_size, work, args.replicates, device=args.device, out=args.out
            )
            print("accuracy on the full demo family:")
            for key, value in acc.items():
                if isinstance(value, dict):
                    print(f"  {key}:")
                    for k, v in value.items():
                        print(f"    {k}: {v}")
                else:
                    print(f"  {key}: {value}")
        if not args.accuracy_only:
            cal = calibrate(
                args.families,
                args.seeds,
                args.alpha,
                work,
                device=args.device,
                workers=args.workers,
                save=args.save,
            )
            print("calibration of the paired sign-flip test:")
            for key, value in cal.items():
                print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
            ok = cal["false_positive_rate"] <= args.alpha + 2 * cal["fpr_standard_error_at_alpha"]
            print(
                f"  false-positive rate {cal['false_positive_rate']:.3f} at alpha {args.alpha} "
                f"({'within' if ok else 'ABOVE'} alpha + 2 SE); power {cal['power']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
