"""``cfgsim nearest``: the k nearest probe images by SSIM among many, for one or more queries."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cfgsim.errors import InputError
from cfgsim.scale.chunked import DEFAULT_BLOCK, ChunkedMatrix, top_k
from cfgsim.scale.prefilter import DESCRIPTORS, nearest
from cfgsim.scale.sources import PathSource, check_sizes, find_images

__all__ = ["cmd_nearest", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nearest",
        help="the k nearest images by SSIM among a folder of probe images",
        description="For each query image, the k images of FOLDER (searched recursively) nearest to it "
        "by SSIM. By default a pre-filter picks candidates from small descriptors and only those "
        "are scored exactly; --exact scores every image, in resumable blocks.",
    )
    p.add_argument("query", nargs="+", metavar="QUERY", help="query image(s)")
    p.add_argument("folder", metavar="FOLDER", help="folder of probe images (.png/.jpg/.webp, recursive)")
    p.add_argument("-k", type=int, default=10, help="how many nearest to print (default %(default)s)")
    p.add_argument(
        "--candidates",
        type=int,
        default=50,
        metavar="M",
        help="pre-filter: candidates per query scored exactly (default %(default)s)",
    )
    p.add_argument(
        "--descriptor",
        choices=DESCRIPTORS,
        default="thumb",
        help="pre-filter descriptor (default %(default)s)",
    )
    p.add_argument(
        "--index",
        choices=("auto", "faiss", "numpy"),
        default="auto",
        help="pre-filter search: FAISS when installed (the 'scale' extra), else numpy",
    )
    p.add_argument("--exact", action="store_true", help="score every image exactly (chunked, resumable)")
    p.add_argument(
        "--state",
        metavar="FILE",
        help="with --exact: SQLite file of finished blocks; a rerun resumes from it",
    )
    p.add_argument(
        "--block",
        type=int,
        default=DEFAULT_BLOCK,
        help="with --exact: images per block (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_nearest)


def _bar(args: argparse.Namespace, desc: str, unit: str) -> Any:
    return tqdm(total=0, desc=desc, unit=unit, disable=getattr(args, "quiet", False), file=sys.stderr)


def cmd_nearest(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise InputError(f"-k {args.k}: must be at least 1")
    if args.candidates < 1:
        raise InputError(f"--candidates {args.candidates}: must be at least 1")
    if args.block < 1:
        raise InputError(f"--block {args.block}: must be at least 1")
    if args.state and not args.exact:
        raise InputError("--state is for --exact (the pre-filter route is not resumable)")
    queries = [Path(q) for q in args.query]
    for q in queries:
        if q.is_dir():
            raise InputError(f"{q}: is a folder; a query is an image file (the folder to search goes last)")
        if not q.exists():
            raise InputError(f"{q}: no such image")
    folder = Path(args.folder)
    paths = find_images(folder)
    width, height = check_sizes(queries + paths)  # headers only: refuses before the long work
    database, qsource = PathSource(paths), PathSource(queries)
    resolved = {p.resolve(): j for j, p in enumerate(paths)}
    own = [resolved.get(q.resolve()) for q in queries]  # a query that is itself in the folder
    extra = 1 if any(j is not None for j in own) else 0

    if args.exact:
        chunked = ChunkedMatrix(
            qsource, database, block=(min(len(queries), args.block), args.block), state=args.state
        )
        with _bar(args, "ssim blocks", "block") as bar:

            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.reset(total=total)
                bar.update(done - bar.n)

            matrix = chunked.compute(progress=progress)
        exclude = [set() if j is None else {j} for j in own]
        results = top_k(matrix, args.k, exclude)
        route = f"exact: {len(paths)} SSIM pairs per query in {chunked.blocks_total} blocks"
        if args.state:
            route += f", {chunked.blocks_resumed} resumed from {args.state}"
    else:
        bars: dict[str, Any] = {}

        def phase(name: str, done: int, total: int) -> None:
            bar = bars.get(name)
            if bar is None:
                unit = "img" if name == "describe" else "query"
                for other in bars.values():  # the previous phase is over
                    other.close()
                bar = bars[name] = _bar(args, name, unit)
                bar.reset(total=total)
            bar.update(done - bar.n)

        try:
            found = nearest(
                database,
                qsource,
                k=args.k + extra,
                candidates=args.candidates + extra,
                descriptor=args.descriptor,
                backend=args.index,
                progress=phase,
            )
        finally:
            for bar in bars.values():
                bar.close()
        results = [
            [(j, s) for j, s in row if j != own[q]][: args.k] for q, row in enumerate(found.neighbours)
        ]
        route = (
            f"pre-filter: {found.descriptor} descriptors, {found.backend} index, "
            f"{min(args.candidates, len(paths))} candidates per query scored exactly"
        )
    if args.json:
        document = {
            "folder": str(folder),
            "images": len(paths),
            "size": [width, height],
            "route": "exact" if args.exact else "prefilter",
            "queries": [
                {
                    "query": str(q),
                    "nearest": [{"file": str(paths[j]), "ssim": s} for j, s in row],
                }
                for q, row in zip(queries, results, strict=True)
            ],
        }
        print(json.dumps(document, indent=2))
        return 0
    lines = []
    for q, row in zip(queries, results, strict=True):
        lines.append(f"{q}: {len(row)} nearest of {len(paths)} images in {folder} by SSIM ({route})")
        lines += [f"  {rank:>3}  {s:.6f}  {paths[j]}" for rank, (j, s) in enumerate(row, start=1)]
    print("\n".join(lines))
    return 0
