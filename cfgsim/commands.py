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
    s.add_argument("grid", metavar="GRID")
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--cols", type=int, required=True)
    s.add_argument("--out", default=None, metavar="DIR", help="folder for the cells (default: GRID's stem)")
    s.set_defaults(func=cmd_split_grid)

    i = sub.add_parser(
        "inspect", help="show the probe metadata stored in a grid", description="Show metadata."
    )
    i.add_argument("grid", metavar="GRID")
    i.add_argument("--json", action="store_true", help="print the stored JSON document")
    i.set_defaults(func=cmd_inspect)


def cmd_split_grid(args: argparse.Namespace) -> int:
    from cfgsim.splitgrid import split_grid

    path = Path(args.grid)
    if args.rows < 1 or args.cols < 1:
        raise InputError(f"{path}: --rows and --cols must be at least 1")
    image = load_image(path)
    text, _ = read_metadata(path)
    split = split_grid(image, args.rows, args.cols, infotext=text)
    out = Path(args.out) if args.out else path.with_name(path.stem + "-cells")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    # Cells are named by the grid's axis values when its infotext has them, else by position.
    x_values, y_values = split.axis_values or (None, None)
    cols = unique_filenames(list(x_values)) if x_values and len(x_values) == args.cols else None
    rows = unique_filenames(list(y_values)) if y_values and len(y_values) == args.rows else None
    cols = cols or [f"c{c + 1}" for c in range(args.cols)]
    rows = rows or [f"r{r + 1}" for r in range(args.rows)]
    for r, row in enumerate(split.cells):
        for c, cell in enumerate(row):
            atomic_save_image(cell, out / f"{rows[r]}-{cols[c]}.png")
    left, top = split.margins
    w, h = split.cell_size
    print(f"{path}: {args.rows}x{args.cols} cells of {w}x{h} px, label margins left {left} px, top {top} px")
    print(f"wrote {args.rows * args.cols} cells to {out}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from cfgsim.metadata import MetadataError, result_from_document

    path = Path(args.grid)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    infotext, payload = read_metadata(path)
    if payload is None and infotext is None:
        raise InputError(f"{path}: carries no cfgsim metadata and no WebUI parameters")
    if args.json:
        if payload is None:
            raise InputError(f"{path}: has WebUI parameters but no cfgsim metadata")
        print(json.dumps(payload, indent=2, ensure_ascii=False))
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
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            raise MetadataError(
                f"{path}: the cfgsim metadata is damaged ({type(exc).__name__}: {exc})"
            ) from exc
    print("\n".join(lines))
    return 0
