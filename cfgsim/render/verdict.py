"""The verdict table as plain text (the terminal) and as rows (CSV): one line per item, tree order."""

from __future__ import annotations

import math

from cfgsim.lineage import Lineage, Relative
from cfgsim.result import ProbeResult

COLUMNS = (
    "item",
    "nearest relative",
    "similarity [95% CI]",
    "runner-up",
    "p",
    "seeds won",
    "support",
    "verdict",
)


def verdict_rows(result: ProbeResult) -> list[list[str]]:
    """The table's cells as text, items in tree order (empty without a lineage)."""
    lineage = result.lineage
    if lineage is None:
        return []
    rows = []
    for item in lineage.order:
        rel = lineage.relative_of(item)
        if rel is None:
            continue
        rows.append(_row(rel))
    return rows


def _row(rel: Relative) -> list[str]:
    ci = "" if math.isnan(rel.ci[0]) else f" [{rel.ci[0]:.3f}, {rel.ci[1]:.3f}]"
    return [
        rel.label,
        rel.nearest_label or "—",
        "" if math.isnan(rel.similarity) else f"{rel.similarity:.3f}{ci}",
        rel.runner_up_label or "—",
        "—" if rel.p_value is None else f"{rel.p_value:.3g}",
        f"{rel.seeds_won}/{rel.seeds}" if rel.runner_up is not None else "—",
        "—" if rel.support is None else f"{round(rel.support * 100)}%",
        rel.verdict,
    ]


def verdict_table(result: ProbeResult) -> str:
    """Header, the table and the notes, for printing. Empty string without a lineage."""
    lineage = result.lineage
    if lineage is None:
        return ""
    rows = verdict_rows(result)
    widths = [max(len(COLUMNS[k]), *(len(r[k]) for r in rows)) for k in range(len(COLUMNS) - 1)]
    lines = [_header(lineage)]
    head = [c.ljust(w) for c, w in zip(COLUMNS, widths, strict=False)] + [COLUMNS[-1]]
    lines.append("  ".join(head))
    for row in rows:
        lines.append("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]))
    lines.append(f"tree (Newick, support in %): {lineage.newick}")
    lines.extend(f"note: {note}" for note in lineage.notes)
    if lineage.bands is not None:
        b = lineage.bands
        lines.append(
            f"bands ({lineage.metric}, on the CI's lower bound): same model >= {b.same:g}, "
            f"close relative >= {b.close:g}, shares a base: clearly nearest or in one clade with "
            f"support >= {b.support:.0%} — guides from measured data, "
            "not proof (README: The lineage verdict)"
        )
    return "\n".join(lines)


def _header(lineage: Lineage) -> str:
    seeds = len(lineage.rows_used)
    return (
        f"Lineage ({lineage.metric.upper()}, {seeds} seed{'s' if seeds != 1 else ''}, "
        f"nearest vs runner-up: sign-flip test at {lineage.alpha:g} with a {lineage.margin:g}x distance "
        f"margin, {lineage.replicates} bootstrap trees):"
    )


def lineage_csv(result: ProbeResult) -> str:
    """The verdict table as CSV (numbers unrounded), one row per item in tree order, plus the tree."""
    import csv
    import io

    lineage = result.lineage
    if lineage is None:
        return ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "item",
            "nearest",
            "similarity",
            "ci_low",
            "ci_high",
            "runner_up",
            "runner_up_similarity",
            "p_value",
            "seeds_won",
            "seeds",
            "effect",
            "effect_size",
            "support",
            "band",
            "verdict",
            "background_p",
        ]
    )
    for item in lineage.order:
        rel = lineage.relative_of(item)
        if rel is None:
            continue
        d = rel.to_dict()
        writer.writerow(
            [
                _csv_text(rel.label),
                _csv_text(rel.nearest_label),
                _blank(d["similarity"]),
                _blank(d["ci"][0]),  # type: ignore[index]
                _blank(d["ci"][1]),  # type: ignore[index]
                _csv_text(rel.runner_up_label),
                _blank(d["runner_up_similarity"]),
                _blank(d["p_value"]),
                rel.seeds_won,
                rel.seeds,
                _blank(d["effect"]),
                _blank(d["effect_size"]),
                _blank(d["support"]),
                rel.band,
                _csv_text(rel.verdict),
                _blank(d["background_p"]),
            ]
        )
    writer.writerow([])
    writer.writerow(["tree (Newick)", _csv_text(lineage.newick)])
    return buffer.getvalue()


def _blank(value: object) -> object:
    return "" if value is None else value


def _csv_text(text: str) -> str:
    # A spreadsheet runs a cell that starts with = + - @ as a formula: make it text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
