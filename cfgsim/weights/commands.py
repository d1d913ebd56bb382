"""``cfgsim weights``: compare checkpoints by their weights (no generation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cfgsim.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "weights",
        help="compare checkpoints by their weights: identity, per-block similarity, merge recipes",
        description=(
            "Read every checkpoint once and report which files share a UNet, text encoder or VAE "
            "(fingerprints that survive fp16, pruning, key layout and renaming), the cosine "
            "similarity of every pair per merge block (BASE, IN00-IN11, M00, OUT00-OUT11, VAE), "
            "and merge recipes (weighted sum, add difference)."
        ),
    )
    w.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="checkpoint files, diffusers folders, or folders of checkpoints",
    )
    w.add_argument("--base", metavar="CKPT", help="also compare the differences from this checkpoint")
    w.add_argument(
        "--reference",
        metavar="CKPT",
        help="mark this checkpoint; recipes of every other one in terms of it and the rest",
    )
    w.add_argument(
        "--vae-dir", metavar="DIR", help="a folder of VAE files: name the checkpoints' VAEs by them"
    )
    w.add_argument("--recipe", metavar="TARGET", help="solve the merge recipe of TARGET")
    w.add_argument(
        "--parents",
        nargs="+",
        metavar="CKPT",
        help="the recipe's candidate parents (default: search all other checkpoints)",
    )
    w.add_argument(
        "--images",
        metavar="RESULT",
        help="a probe result (result.json or a cfgsim grid) of the same checkpoints: report rank agreement",
    )
    w.add_argument("--json", metavar="F", help="write the full report as JSON")
    w.add_argument("--csv", metavar="F", help="write per-pair, per-block cosine and relative L2 as CSV")
    w.add_argument(
        "--out", metavar="DIR", help="write heatmaps, the tree, per-block charts, result.json, report.txt"
    )
    w.set_defaults(func=cmd_weights)


def _expand(paths: list[str]) -> list[Path]:
    """Folders of checkpoint files become their files; diffusers folders stay one checkpoint."""
    from cfgsim.weights.source import checkpoint_files

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not any((p / sub).is_dir() for sub in ("unet", "text_encoder", "vae")):
            files = checkpoint_files(p)
            if not files:
                raise InputError(f"{p}: a folder with no checkpoint files")
            out += files
        else:
            out.append(p)
    return out


def cmd_weights(args: argparse.Namespace) -> int:
    from cfgsim.metadata import atomic_save_image, atomic_write_bytes
    from cfgsim.weights import compare_checkpoints

    for option in ("json", "csv"):
        value = getattr(args, option)
        if value and Path(value).is_dir():
            raise InputError(f"{value}: --{option} names a folder, not a file")
    if args.parents and not args.recipe:
        raise InputError("--parents needs --recipe TARGET")
    paths = _expand(args.checkpoints)
    bar = None
    if not getattr(args, "quiet", False):
        from tqdm import tqdm

        bar = tqdm(total=1000, unit="‰", desc="reading weights", leave=False)

    def progress(fraction: float, what: str) -> None:
        if bar is not None:
            bar.n = int(fraction * 1000)
            bar.set_postfix_str(what, refresh=False)
            bar.refresh()

    try:
        report = compare_checkpoints(
            paths,
            reference=args.reference,
            base=args.base,
            vae_dir=args.vae_dir,
            recipe_target=args.recipe,
            recipe_parents=args.parents,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.images:
        from cfgsim.api import read_result

        try:
            report.agree_with(read_result(args.images))
        except ValueError as exc:
            raise InputError(f"{args.images}: {exc}") from exc
    text = report.text()
    print(text)
    if args.json:
        atomic_write_bytes(args.json, report.to_json().encode("utf-8"))
    if args.csv:
        atomic_write_bytes(args.csv, report.to_csv().encode("utf-8"))
    if args.out:
        from cfgsim.metadata import to_json
        from cfgsim.output import safe_filename

        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
        for name, image in report.images().items():
            atomic_save_image(image, out / f"{safe_filename(name)}.png")
        atomic_write_bytes(out / "result.json", to_json(report.result()).encode("utf-8"))
        atomic_write_bytes(out / "weights.json", report.to_json().encode("utf-8"))
        atomic_write_bytes(out / "report.txt", (text + "\n").encode("utf-8"))
        print(f"wrote {out}/")
    return 0
