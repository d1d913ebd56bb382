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
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cfgsim.lineage import DEFAULT_MARGIN, SAME, analyse, sign_flip_test
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


# The alternatives: B nearer than C by construction, from clearly (light vs heavy fine-tune) to
# mildly (the fine-tune noise 0.10 vs 0.15).
ALTERNATIVES = {
    "light 0.05 vs heavy 0.15": ("base", "base-light", "base-heavy"),
    "light 0.05 vs 0.10": ("base", "base-light", "base-a"),
    "0.10 vs heavy 0.15": ("base", "base-a", "base-heavy"),
}


def distances(family: dict, a: str, b: str) -> np.ndarray:
    """1 − SSIM of a and b, per seed, from a family's saved matrices."""
    labels = family["labels"]
    i, j = labels.index(a), labels.index(b)
    return np.array([1.0 - np.asarray(m)[i][j] for m in family["ssim"]])


def plain_p(family: dict, a: str, b: str, c: str) -> float:
    """The plain paired test: is s(A,B) different from s(A,C) (two-sided, no margin)?"""
    return sign_flip_test(distances(family, a, c) - distances(family, a, b))


def margin_p(family: dict, a: str, b: str, c: str, margin: float) -> float:
    """The verdict's test: the nearer of B and C (smaller mean distance) against the other, which
    must be more than ``margin`` times as far (one-sided), as :mod:`cfgsim.lineage` decides."""
    d_b, d_c = distances(family, a, b), distances(family, a, c)
    if d_c.mean() < d_b.mean():
        d_b, d_c = d_c, d_b
    return sign_flip_test(d_c - margin * d_b, alternative="greater")


def _one_family(job: tuple[int, str, str, str]) -> dict:
    """Probe one random calibration family; its per-seed SSIM matrices (runs in a worker)."""
    import shutil

    k, seeds, work, device = job
    result, _ = run_demo(
        Path(work) / f"cal{k}", family=CALIBRATION, weight_seed=k + 1, seeds=seeds, reduced=True,
        quiet=True, write=False, device=device, batch_size=8,
    )  # fmt: skip
    shutil.rmtree(Path(work) / f"cal{k}", ignore_errors=True)
    return {
        "family": k,
        "labels": result.labels,
        "rows": result.rows,
        "ssim": [m.tolist() for m in result.scores["ssim"].per_row],
    }


def probe_families(
    families: int, seeds: str, work: Path, *, device: str = "cpu", workers: int = 1, save: Path | None = None
) -> list[dict]:
    started = time.perf_counter()
    jobs = [(k, seeds, str(work), device) for k in range(families)]
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_single_thread)
        results = pool.imap_unordered(_one_family, jobs)
    else:
        pool, results = None, map(_one_family, jobs)
    raws = []
    for done, raw in enumerate(results, start=1):
        raws.append(raw)
        print(f"family {done}/{families}: {time.perf_counter() - started:.0f} s", flush=True)
        if save is not None and done % 10 == 0:  # a run cut short still leaves its families
            _save(save, seeds, raws)
    if pool is not None:
        pool.close()
        pool.join()
    if save is not None:
        _save(save, seeds, raws)
    return sorted(raws, key=lambda r: r["family"])


def calibration_report(raws: list[dict], alpha: float, margin: float) -> dict[str, object]:
    """False positives on the null triples and power on the alternatives, plain and with the margin;
    the margin table on the first half of the families, the held-out rate on the second half."""
    nulls = CALIBRATION.truth.equally_related
    out: dict[str, object] = {"families": len(raws), "null tests": len(raws) * len(nulls)}
    ratios = [
        max(distances(f, a, b).mean(), distances(f, a, c).mean())
        / min(distances(f, a, b).mean(), distances(f, a, c).mean())
        for f in raws
        for a, b, c in nulls
    ]
    out["null distance ratio (median / 95% / max)"] = " / ".join(
        f"{q:.3f}" for q in np.quantile(ratios, [0.5, 0.95, 1.0])
    )
    out["plain test: false-positive rate"] = float(
        np.mean([plain_p(f, *t) < alpha for f in raws for t in nulls])
    )
    out[f"margin {margin:g}: false-positive rate"] = float(
        np.mean([margin_p(f, *t, margin) < alpha for f in raws for t in nulls])
    )
    for name, triple in ALTERNATIVES.items():
        ratio = np.median(
            [distances(f, *triple[::2]).mean() / distances(f, *triple[:2]).mean() for f in raws]
        )
        out[f"power, {name} (distance ratio {ratio:.2f}): plain / margin"] = (
            f"{np.mean([plain_p(f, *triple) < alpha for f in raws]):.3f} / "
            f"{np.mean([margin_p(f, *triple, margin) < alpha for f in raws]):.3f}"
        )
    half = len(raws) // 2
    first, second = raws[:half], raws[half:]
    table = {}
    for m in (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0):
        table[m] = float(np.mean([margin_p(f, *t, m) < alpha for f in first for t in nulls]))
    out["margin -> false-positive rate, first half"] = {f"{m:g}": round(v, 3) for m, v in table.items()}
    chosen = min(m for m, v in table.items() if v <= alpha)
    out["smallest margin with rate <= alpha on the first half"] = chosen
    out["its rate on the held-out second half"] = float(
        np.mean([margin_p(f, *t, chosen) < alpha for f in second for t in nulls])
    )
    out[f"margin {margin:g} on the held-out second half"] = float(
        np.mean([margin_p(f, *t, margin) < alpha for f in second for t in nulls])
    )
    return out


def _save(path: Path, seeds: str, raws: list[dict]) -> None:
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
    parser.add_argument(
        "--analyse", type=Path, default=None, help="report on saved raw matrices (no probing)"
    )
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
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
            if args.analyse:
                raws = json.loads(args.analyse.read_text(encoding="utf-8"))["families"]
            else:
                raws = probe_families(
                    args.families, args.seeds, work, device=args.device, workers=args.workers, save=args.save
                )
            print(f"calibration of the nearest-relative test (alpha {args.alpha}):")
            for key, value in calibration_report(raws, args.alpha, args.margin).items():
                print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
