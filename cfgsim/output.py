"""Writing a result to a folder: the grid (with metadata), heatmaps, JSON, CSV and cell images.

Every file is written atomically (a temporary file beside it, then a rename), so an error leaves
either the old file or none, never half of one.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from pathlib import Path

import numpy as np
from PIL.PngImagePlugin import PngInfo

from cfgsim.errors import InputError
from cfgsim.metadata import atomic_save_image, atomic_write_bytes, save_grid, to_json
from cfgsim.render import render_all
from cfgsim.result import MetricScores, ProbeResult

_UNSAFE = re.compile(r"[^\w.\-]+")


def safe_filename(label: str, *, max_len: int = 80) -> str:
    """A file-name-safe form of a label: path separators, HTML and control characters removed."""
    text = unicodedata.normalize("NFKC", label)
    text = _UNSAFE.sub("_", text).strip("._")
    return (text[:max_len] or "item").rstrip("._") or "item"


def unique_filenames(labels: list[str]) -> list[str]:
    """safe_filename for each label, with a numeric suffix where two would collide."""
    out: list[str] = []
    for label in labels:
        name, n = safe_filename(label), 2
        base = name
        while name.lower() in (o.lower() for o in out):
            name, n = f"{base}-{n}", n + 1
        out.append(name)
    return out


def scores_csv(result: ProbeResult) -> str:
    """One row per (metric, row, item): score vs the reference, rank, and the item's mean similarity."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "row", "item", "status", "score_vs_reference", "rank", "mean_vs_others"])
    for name, scores in result.scores.items():
        for r in range(len(result.rows)):
            ranks = scores.ranks(r)
            matrix = scores.per_row[r]
            for i, item in enumerate(result.items):
                cell = result.cell(i, r)
                ref = scores.vs_reference[r][i] if scores.vs_reference is not None else math.nan
                others = [
                    matrix[i, j] for j in range(len(result.items)) if j != i and not math.isnan(matrix[i, j])
                ]
                writer.writerow(
                    [
                        name,
                        result.row_label(r) or r,
                        item.label,
                        cell.status if cell else "",
                        _num(ref),
                        ranks[i] if ranks[i] is not None else "",
                        _num(sum(others) / len(others)) if others else "",
                    ]
                )
    return buffer.getvalue()


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def summary_table(result: ProbeResult) -> str:
    """A plain-text table for the terminal: each item's score per metric (mean over rows)."""
    names = list(result.scores)
    if not names:
        return "no scores (fewer than two images)"
    has_ref = result.reference.kind != "none"
    head = "vs reference " + repr(result.reference.label) if has_ref else "mean similarity to the others"
    width = max(len(label) for label in result.labels) + 2
    lines = [f"{'item':<{width}}" + "".join(f"{result.scores[n].label:>10}" for n in names) + f"   ({head})"]
    # One column of values per metric, computed once: linear in the size of the matrices.
    columns = {name: _summary_column(result.scores[name], len(result.items), has_ref) for name in names}
    for i, item in enumerate(result.items):
        row = f"{item.label:<{width}}"
        for name in names:
            value = columns[name][i]
            if has_ref:
                text = (
                    "ref" if result.reference.kind == "item" and i == result.reference.index else _fmt(value)
                )
            else:
                text = "-" if math.isnan(value) else _fmt(value)
            row += f"{text:>10}"
        lines.append(row)
    for cell in result.failures:
        lines.append(
            f"  {result.items[cell.item].label} {result.row_label(cell.row)}: {cell.status}: {cell.reason}"
        )
    return "\n".join(lines)


def _summary_column(scores: MetricScores, n: int, has_ref: bool) -> np.ndarray:
    """Each item's summary value: its mean score against the reference, or (no reference) the mean
    of its row of the mean matrix without the diagonal, NaN ignored (NaN when nothing is left)."""
    if has_ref:
        ref = scores.reference_mean
        return np.asarray(ref, dtype=float) if ref is not None and len(ref) == n else np.full(n, np.nan)
    mean = scores.mean
    if mean.shape != (n, n):
        return np.full(n, np.nan)
    others = np.where(np.eye(n, dtype=bool), np.nan, mean)
    valid = ~np.isnan(others)
    count = valid.sum(axis=1)
    total = np.where(valid, others, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(n, np.nan), where=count > 0)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def write_outputs(
    result: ProbeResult,
    out_dir: str | Path,
    *,
    overlays: bool = True,
    save_cells: bool = True,
    grid_name: str = "grid.png",
) -> dict[str, Path]:
    """Write grid (+ metadata), heatmaps, ``result.json``, ``scores.csv`` and cell images to ``out_dir``.

    Returns {kind: path}. Cell images keep their own infotext (the WebUI's per-image parameters).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
    written: dict[str, Path] = {}
    # Cell images first: the grid's metadata and result.json name the files they were saved to.
    if save_cells:
        names = unique_filenames(result.labels)
        for cell in result.cells:
            if not cell.ok:
                continue
            row = result.rows[cell.row]
            stem = (
                f"{names[cell.item]}-{result.row_axis.lower()}{row}" if result.row_axis else names[cell.item]
            )
            path = out / "cells" / f"{stem}.png"
            path.parent.mkdir(exist_ok=True)
            pnginfo = PngInfo()
            if cell.infotext:
                pnginfo.add_text("parameters", cell.infotext)
            atomic_save_image(cell.image, path, pnginfo=pnginfo)
            cell.file = str(path)
            written[f"cell:{cell.item}:{cell.row}"] = path
    for kind, image in render_all(result, overlays=overlays):
        if kind == "grid":
            path = out / grid_name
            save_grid(image, path, result)
        else:
            path = out / f"{kind}.png"
            atomic_save_image(image, path)
        written[kind] = path
    written["json"] = out / "result.json"
    atomic_write_bytes(written["json"], to_json(result).encode("utf-8"))
    written["csv"] = out / "scores.csv"
    atomic_write_bytes(written["csv"], scores_csv(result).encode("utf-8"))
    return written
