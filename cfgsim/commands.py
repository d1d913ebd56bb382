"""The library's own subcommands: ``compare`` (in :mod:`cfgsim.compare_cli`), ``split-grid`` and
``inspect``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cfgsim import compare_cli
from cfgsim.compare_cli import (  # re-exported: the probe command shares them
    add_comparison_options,
    lineage_options,
    metric_options,
    reference_from_args,
)
from cfgsim.errors import InputError
from cfgsim.imageio import load_image
from cfgsim.metadata import atomic_save_image, read_metadata
from cfgsim.output import summary_table, unique_filenames
from cfgsim.render.verdict import verdict_table

__all__ = [
    "add_comparison_options",
    "cmd_inspect",
    "cmd_split_grid",
    "lineage_options",
    "metric_options",
    "reference_from_args",
    "register",
]


def register(sub: argparse._SubParsersAction) -> None:
    compare_cli.register(sub)

    s = sub.add_parser(
        "split-grid",
        help="cut a WebUI X/Y grid image into its cells",
        description="Cut an X/Y plot grid (also a downscaled JPEG copy) into cells, skipping label margins.",
    )
    s.add_argument("grid", metavar="GRID", help="the grid image (PNG, JPEG or WebP; a resized copy works)")
    s.add_argument("--rows", type=int, default=None, help="rows of cells (optional for a cfgsim grid)")
    s.add_argument("--cols", type=int, default=None, help="columns of cells (optional for a cfgsim grid)")
    s.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for the cells (default: <GRID's stem>-cells beside it)",
    )
    s.add_argument(
        "--by-column",
        action="store_true",
        help="a folder per column, a file per row (DIR/<column>/<row>.png): each folder is one item "
        "for `cfgsim compare DIR/*/`, its rows (seeds) paired by name",
    )
    s.add_argument("--no-labels", action="store_true", help="the grid has no labels, so no label margins")
    s.add_argument(
        "--margins", metavar="LEFT,TOP", help="the label margins in px instead of searching for them"
    )
    s.add_argument("--gap", type=float, metavar="PX", help="px between cells instead of searching (0: none)")
    s.add_argument("--force", action="store_true", help="cut even when the layout found is unsure")
    s.set_defaults(func=cmd_split_grid)

    i = sub.add_parser(
        "inspect", help="show the probe metadata stored in a grid", description="Show metadata."
    )
    i.add_argument("grid", metavar="GRID")
    i.add_argument("--json", action="store_true", help="print the stored JSON document")
    i.set_defaults(func=cmd_inspect)


def cmd_split_grid(args: argparse.Namespace) -> int:
    import sys

    from cfgsim.splitgrid import REFUSE_CONFIDENCE, WARN_CONFIDENCE, split_grid

    path = Path(args.grid)
    for name in ("rows", "cols"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InputError(f"{path}: --{name} must be at least 1")
    margins = _parse_margins(args.margins) if args.margins is not None else None
    if args.gap is not None and not (args.gap >= 0 and args.gap < float("inf")):
        raise InputError(f"--gap {args.gap}: must be a number of px, 0 or more")
    image = load_image(path)
    text, payload = read_metadata(path)
    told = margins is not None or args.no_labels or args.gap is not None
    layout = payload.get("grid_layout") if payload and not told else None
    if layout is None and (args.rows is None or args.cols is None):
        raise InputError(f"{path}: give --rows and --cols (the grid records no cfgsim layout)")
    split = split_grid(
        image,
        args.rows,
        args.cols,
        infotext=text,
        labels=False if args.no_labels else None,
        margins=margins,
        gap=args.gap,
        layout=layout,
    )
    rows, cols = len(split.cells), len(split.cells[0])
    if split.confidence < REFUSE_CONFIDENCE and not args.force:
        raise InputError(
            f"{path}: the grid's layout is unsure (confidence {split.confidence:.2f}): {split.evidence}; "
            "say what it is with --no-labels, --margins LEFT,TOP or --gap PX, or cut anyway with --force"
        )
    if split.confidence < WARN_CONFIDENCE:
        print(
            f"cfgsim: warning: {path}: layout confidence {split.confidence:.2f}: {split.evidence}",
            file=sys.stderr,
        )
    out = Path(args.out) if args.out else path.with_name(path.stem + "-cells")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    # Cells are named by the grid's axis values when its infotext has them, else by position.
    x_values, y_values = split.axis_values or (None, None)
    col_names = unique_filenames(list(x_values)) if x_values and len(x_values) == cols else None
    row_names = unique_filenames(list(y_values)) if y_values and len(y_values) == rows else None
    col_names = col_names or [f"c{c + 1}" for c in range(cols)]
    row_names = row_names or [f"r{r + 1}" for r in range(rows)]
    for r, row in enumerate(split.cells):
        for c, cell in enumerate(row):
            if args.by_column:  # a folder per column (item), a file per row (seed): compare's items
                atomic_save_image(cell, out / col_names[c] / f"{row_names[r]}.png")
            else:
                atomic_save_image(cell, out / f"{row_names[r]}-{col_names[c]}.png")
    left, top = split.margins
    w, h = split.cell_size
    print(
        f"{path}: {rows}x{cols} cells of {w}x{h} px, label margins left {left} px, top {top} px "
        f"(from {split.method}, confidence {split.confidence:.2f})"
    )
    hint = f" (a folder per column: cfgsim compare {out}/*/)" if args.by_column else ""
    print(f"wrote {rows * cols} cells to {out}{hint}")
    return 0


def _parse_margins(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        left, top = (int(p.strip()) for p in parts)
    except ValueError:
        raise InputError(f"--margins {text!r}: expected LEFT,TOP in whole px, e.g. 96,34") from None
    if left < 0 or top < 0:
        raise InputError(f"--margins {text!r}: margins cannot be negative")
    return left, top


def cmd_inspect(args: argparse.Namespace) -> int:
    from cfgsim.metadata import MetadataError, result_from_document

    path = Path(args.grid)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    infotext, payload = read_metadata(path)
    if payload is None and infotext is None:
        raise InputError(f"{path}: carries no cfgsim metadata and no WebUI parameters")
    if args.json:
        # A WebUI image without cfgsim metadata: its parameters, and cfgsim null (as plain mode shows).
        document = payload if payload is not None else {"parameters": infotext, "cfgsim": None}
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    # Everything is built before anything is printed: a damaged document gives one line, exit 2.
    lines = []
    if infotext:
        lines += ["parameters:", "  " + infotext.replace("\n", "\n  ")]
    if payload is not None:
        result = result_from_document(payload, source=str(path))
        lines.append(
            f"cfgsim {result.version or '?'} result from {result.host or '?'}: "
            f"{len(result.items)} items × {len(result.rows)} rows"
        )
        if not result.spec.is_probe:
            steps, full = result.spec.effective_steps, result.spec.steps
            lines.append(f"  QUICK PREVIEW: {steps} steps, not the probe ({full} steps)")
        try:
            lines.append(summary_table(result))
            if result.lineage is not None:
                lines += ["", verdict_table(result)]
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise MetadataError(
                f"{path}: the cfgsim metadata is damaged ({type(exc).__name__}: {exc})"
            ) from exc
    print("\n".join(lines))
    return 0
