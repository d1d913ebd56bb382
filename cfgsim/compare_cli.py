"""``cfgsim compare``: images you already have — files, or folders of seeds — compared, with a verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cfgsim import lineage
from cfgsim.compare import DEFAULT_METRICS, build_metrics, compare, load_metrics
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint
from cfgsim.imageio import load_image
from cfgsim.infotext import Infotext
from cfgsim.inputs import BY_ORDER, collect, describe_differences, has_folder, pair, settings_differences
from cfgsim.metadata import (
    atomic_save_image,
    atomic_write_bytes,
    read_metadata,
    save_grid,
    sidecar_path,
    to_json,
)
from cfgsim.output import scores_csv, summary_table
from cfgsim.paths import check_output_paths, make_output_folders
from cfgsim.probe import check_labels
from cfgsim.render.verdict import lineage_csv, verdict_table
from cfgsim.result import Cell, ProbeResult, Reference
from cfgsim.spec import ProbeSpec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare images you already have (probe outputs, cells of a published grid)",
        description="Compare images: N×N similarity matrices, scores against a reference, a grid.",
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMG|DIR",
        help=(
            "two or more images, or folders: a folder is one item whose images are its seeds, paired "
            "across items by the Seed in their infotext, else the number in the file name, else "
            "sorted order (a split-grid output folder works too)"
        ),
    )
    add_comparison_options(
        p,
        reference_help="score every image against this image",
        index_help="score against image N (0-based)",
    )
    p.add_argument(
        "--labels", help="comma-separated labels, one per image (default: model from the infotext)"
    )
    p.add_argument(
        "--out",
        default="cfgsim-compare.png",
        help="grid PNG (or .jpg/.webp); the tree and heatmaps beside it (default: %(default)s)",
    )
    p.add_argument(
        "--stretch",
        action="store_true",
        help="compare images of different aspect ratios anyway (resized, so distorted); refused without it",
    )
    p.add_argument("--json", metavar="F", help="also write the result JSON here")
    p.add_argument(
        "--csv",
        metavar="F",
        help="also write the scores as CSV here (and the verdict table as F-lineage.csv)",
    )
    p.set_defaults(func=cmd_compare)


def add_comparison_options(p: argparse.ArgumentParser, *, reference_help: str, index_help: str) -> None:
    """The options every command that compares shares: reference, metrics, overlays, CLIP model."""
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", metavar="IMG", help=reference_help)
    ref.add_argument("--reference-index", type=int, metavar="N", help=index_help)
    p.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma list of ssim,clip,phash,psnr,rmse (default: %(default)s); the first one drives the "
        "family tree and the verdicts",
    )
    p.add_argument("--no-overlays", action="store_true", help="grid without scores drawn on the cells")
    p.add_argument("--clip-model", default=None, help="open_clip model name for the clip metric")
    p.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag or a local weights file")
    p.add_argument(
        "--alpha",
        type=_probability,
        default=lineage.DEFAULT_ALPHA,
        help="significance level of the nearest-relative test (default %(default)s)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=lineage.DEFAULT_MARGIN,
        help="the runner-up must be this many times as far as the nearest relative for the nearest "
        "to count as decided (default %(default)s, calibrated: see the README)",
    )
    p.add_argument(
        "--replicates",
        type=int,
        default=lineage.DEFAULT_REPLICATES,
        help="bootstrap trees for clade support (default %(default)s, at least 200)",
    )


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def lineage_options(args: argparse.Namespace) -> dict[str, object]:
    """compare()'s lineage keywords from ``--alpha`` / ``--replicates``."""
    replicates = getattr(args, "replicates", lineage.DEFAULT_REPLICATES)
    if replicates < 200:
        raise InputError(f"--replicates {replicates}: clade support needs at least 200 bootstrap trees")
    margin = getattr(args, "margin", lineage.DEFAULT_MARGIN)
    if not margin >= 1:
        raise InputError(f"--margin {margin}: must be 1 or more (1 = nearer at all)")
    return {
        "alpha": getattr(args, "alpha", lineage.DEFAULT_ALPHA),
        "replicates": replicates,
        "margin": margin,
    }


def reference_from_args(
    args: argparse.Namespace, labels: list[str], *, what: str
) -> tuple[Reference, str | None]:
    """(Reference, the reference image's infotext or None) from ``--reference`` / ``--reference-index``."""
    if args.reference:
        path = Path(args.reference)
        text, _ = read_metadata(path)
        return Reference("image", None, path.stem, str(path), load_image(path), text or ""), text
    if args.reference_index is not None:
        if not 0 <= args.reference_index < len(labels):
            raise InputError(
                f"--reference-index {args.reference_index}: there are {len(labels)} {what} (0-based)"
            )
        return Reference("item", args.reference_index, labels[args.reference_index]), None
    return Reference(), None


def metric_options(args: argparse.Namespace) -> dict[str, dict]:
    clip: dict[str, str] = {}
    if getattr(args, "clip_model", None):
        clip["model"] = args.clip_model
    if getattr(args, "clip_pretrained", None):
        clip["pretrained"] = args.clip_pretrained
    return {"clip": clip}


def _label_from_infotext(info: Infotext | None) -> str | None:
    if info is None:
        return None
    return info.params.get("Model") or info.params.get("Model hash") or None


def planned_outputs(args: argparse.Namespace, out: Path, metric_names: list[str]) -> list[Path]:
    """Every file ``compare`` may write, so that all are checked before the first is written."""
    paths = [out, out.with_name(f"{out.stem}-tree.png")]
    if out.suffix.lower() != ".png":
        paths.append(sidecar_path(out))
    paths += [out.with_name(f"{out.stem}-heatmap-{name}.png") for name in metric_names]
    if args.json:
        paths.append(Path(args.json))
    if args.csv:
        csv = Path(args.csv)
        paths += [csv, csv.with_name(f"{csv.stem}-lineage.csv")]
    return paths


def cmd_compare(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images]
    folders = has_folder(paths)
    if len(paths) < 2:
        what = "items" if folders else "images"
        raise InputError(f"compare: a similarity matrix needs at least two {what} ({len(paths)} given)")
    metrics = build_metrics(args.metrics, metric_options(args))
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise InputError(f"{out}: the grid must be .png, .jpg or .webp")
    options = lineage_options(args)
    outputs = planned_outputs(args, out, [m.name for m in metrics])
    notes = check_output_paths(outputs)  # before any work: a bad --csv must not cost a finished grid
    load_metrics(metrics)  # a missing CLIP model fails now, not after loading every image

    result = (_result_from_folders if folders else _result_from_files)(args, paths)
    _check_sizes(result, stretch=args.stretch)
    parsed = {(c.item, c.row): Infotext.parse(c.infotext) if c.infotext else None for c in result.cells}
    labels = result.labels
    items_infos = [
        (label, [parsed[(i, r)] for r in range(len(result.rows)) if (i, r) in parsed])
        for i, label in enumerate(labels)
    ]
    row_infos = [
        [(labels[i], parsed[(i, r)]) for i in range(len(labels)) if (i, r) in parsed]
        for r in range(len(result.rows))
    ]
    diff = settings_differences(items_infos, rows=row_infos)
    if diff:
        result.mixed_settings = diff
        warn(
            "the inputs were not made under the same settings, so this is not a like-for-like probe "
            f"(each image's own settings are kept in the metadata): {describe_differences(diff)}"
        )
    compare(
        result,
        metrics,
        progress=lambda ms: tqdm(ms, desc="comparing", unit="metric", disable=args.quiet or len(ms) < 2),
        **options,
    )
    _report_sizes(result)
    make_output_folders(outputs)
    for note in notes:
        print(note)
    return write_compare_outputs(args, result, out)


def warn(text: str) -> None:
    print(f"cfgsim: warning: {text}", file=sys.stderr)


def _result_from_files(args: argparse.Namespace, paths: list[Path]) -> ProbeResult:
    """One item per image, one row."""
    images, infos = [], []
    for path in tqdm(paths, desc="loading", unit="img", disable=args.quiet or len(paths) < 8):
        images.append(load_image(path))
        text, _ = read_metadata(path)
        infos.append(Infotext.parse(text) if text else None)

    if args.labels is not None:
        labels = _labels_option(args.labels, len(paths), "images")
    else:
        labels = [_label_from_infotext(info) or path.stem for info, path in zip(infos, paths, strict=True)]
        # Two images of one model (two seeds, two copies) would share a label: name them by file.
        labels = [
            label if labels.count(label) == 1 else f"{label} ({path.name})"
            for label, path in zip(labels, paths, strict=True)
        ]
        if len(set(labels)) != len(labels):
            labels = [str(path) for path in paths]

    reference, ref_text = reference_from_args(args, labels, what="images")
    if reference.kind == "image":
        # The reference given as a file that is also one of the inputs: that input is the reference.
        same = [i for i, path in enumerate(paths) if _same_file(path, Path(reference.file or ""))]
        if same:
            print(f"{paths[same[0]]} is the reference image itself: marked as the reference")
            reference = Reference("item", same[0], labels[same[0]])
    spec_source = Infotext.parse(ref_text) if ref_text else next((i for i in infos if i and i.params), None)
    spec = ProbeSpec.from_infotext(spec_source) if spec_source else ProbeSpec()
    seeds = {info.params.get("Seed") for info in infos if info}
    one_seed = len(seeds) == 1 and None not in seeds and all(infos)
    result = ProbeResult(
        spec=spec,
        items=[
            Checkpoint(
                name=str(path),
                label=label,
                file=str(path),
                model_hash=(info.params.get("Model hash") if info else None),
            )
            for path, label, info in zip(paths, labels, infos, strict=True)
        ],
        rows=[int(next(iter(seeds)))] if one_seed else [0],
        row_axis="Seed" if one_seed else "",
        cells=[
            Cell(item=i, row=0, image=image, infotext=str(info or ""), file=str(path))
            for i, (image, info, path) in enumerate(zip(images, infos, paths, strict=True))
        ],
        reference=reference,
        host="compare",
    )
    if spec_source is None:
        result.environment["spec"] = "not known: no input image carries WebUI parameters"
    return result


def _result_from_folders(args: argparse.Namespace, paths: list[Path]) -> ProbeResult:
    """Each argument an item; a folder's images are its seeds, paired across items."""
    items = collect(paths)
    if args.labels is not None:
        for item, label in zip(items, _labels_option(args.labels, len(items), "items"), strict=True):
            item.label = label
    else:
        names = [item.label for item in items]
        for item in items:
            if names.count(item.label) > 1:
                item.label = str(item.source)
    check_labels([item.label for item in items], "items (folder names)")
    paired = pair(items)
    if not args.quiet:
        for line in paired.describe():
            print(line)
    reference, ref_text = reference_from_args(args, [item.label for item in items], what="items")

    cells = []
    rows: list[list[Infotext | None]] = []
    total = len(items) * len(paired.rows)
    bar = tqdm(total=total, desc="loading", unit="img", disable=args.quiet or total < 8)
    for r in range(len(paired.rows)):
        rows.append([])
        for i in range(len(items)):
            found = paired.file(i, r)
            assert found is not None  # rows are the keys every item has
            path, info = found
            image = load_image(path)
            cells.append(Cell(item=i, row=r, image=image, infotext=str(info or ""), file=str(path)))
            rows[-1].append(info)
            bar.update()
    bar.close()
    infos = [info for row in rows for info in row]
    spec_source = Infotext.parse(ref_text) if ref_text else next((x for x in infos if x and x.params), None)
    spec = ProbeSpec.from_infotext(spec_source) if spec_source else ProbeSpec()
    result = ProbeResult(
        spec=spec,
        items=[Checkpoint(name=str(item.source), label=item.label, file=str(item.source)) for item in items],
        rows=list(paired.rows),
        row_axis="Seed" if paired.method != BY_ORDER else "Image",
        cells=cells,
        reference=reference,
        host="compare",
    )
    result.environment["pairing"] = paired.method
    if paired.left_out:
        result.environment["left out"] = "; ".join(paired.describe()[1:])
    if spec_source is None:
        result.environment["spec"] = "not known: no input image carries WebUI parameters"
    return result


def _labels_option(text: str, count: int, what: str) -> list[str]:
    labels = [part.strip() for part in text.split(",")]
    if len(labels) != count:
        raise InputError(f"--labels: {len(labels)} labels for {count} {what}")
    check_labels(labels, "--labels")
    return labels


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


ASPECT_TOLERANCE = 0.01


def _check_sizes(result: ProbeResult, *, stretch: bool) -> None:
    """Different aspect ratios in one row would be stretched into each other: refuse unless asked."""
    ref = result.reference.image if result.reference.kind == "image" else None
    for r in range(len(result.rows)):
        sized = [
            (c.file or result.items[c.item].label, c.image.size) for c in result.cells if c.row == r and c.ok
        ]
        if ref is not None:
            sized.append((f"{result.reference.file} (reference)", ref.size))
        ratios = [w / h for _, (w, h) in sized]
        if ratios and max(ratios) / min(ratios) > 1 + ASPECT_TOLERANCE:
            listed = ", ".join(f"{name} {w}x{h}" for name, (w, h) in sized)
            if not stretch:
                raise InputError(
                    f"images differ in aspect ratio ({listed}): comparing them pixel by pixel would "
                    "stretch some; crop them to one shape, or pass --stretch to resize anyway"
                )
            warn(f"images differ in aspect ratio ({listed}): --stretch given, resizing them (distorted)")


def _report_sizes(result: ProbeResult) -> None:
    """Say what the size policy did (it is also stored in the JSON)."""
    policy = result.size_policy
    records = policy.get("rows", [policy]) if policy.get("policy") == "per-seed" else [policy]
    for record in records:
        if record.get("policy") == "resize-to-smallest" and record.get("resized"):
            w, h = record["size"]
            where = f" (seed {record['row']})" if "row" in record else ""
            print(
                f"sizes differ{where}: {len(record['resized'])} image(s) resized to {w}x{h} "
                "(Lanczos) before comparing"
            )


def write_compare_outputs(args: argparse.Namespace, result: ProbeResult, out: Path) -> int:
    """Render and write the grid, tree, heatmaps, JSON and CSV; print the tables."""
    from cfgsim.render import render_all

    rendered = render_all(result, overlays=not args.no_overlays)
    written = []
    for kind, image in rendered:
        if kind == "grid":
            written += save_grid(image, out, result)
        else:
            path = out.with_name(f"{out.stem}-{kind}.png")
            atomic_save_image(image, path)
            written.append(path)
    if args.json:
        atomic_write_bytes(Path(args.json), to_json(result).encode("utf-8"))
        written.append(Path(args.json))
    if args.csv:
        atomic_write_bytes(Path(args.csv), scores_csv(result).encode("utf-8"))
        written.append(Path(args.csv))
        if result.lineage is not None:
            lineage_path = Path(args.csv).with_name(f"{Path(args.csv).stem}-lineage.csv")
            atomic_write_bytes(lineage_path, lineage_csv(result).encode("utf-8"))
            written.append(lineage_path)
    print(summary_table(result))
    table = verdict_table(result)
    if table:
        print()
        print(table)
    for path in written:
        print(f"wrote {path}")
    return 0
