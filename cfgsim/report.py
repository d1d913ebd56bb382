"""The similarity table shown under the WebUI's gallery, as HTML built from a :class:`ProbeResult`.

The report holds, per metric, the scores against the reference (per seed, mean, spread, rank) and
the N×N matrix (mean over seeds, with per-seed matrices folded away), plus the banners a reader
must not miss (quick preview = not the probe, interrupted run, settings that differ from the
preset) and the cells that failed or were skipped, with their reasons.

Every name in it comes from the user's files (checkpoint names, infotext) and is HTML-escaped;
the only markup is ours. Cells carry ``data-cfgsim-*`` attributes (value, row, column) that
``javascript/cfgsim.js`` reads to colour, sort, highlight and copy the tables; the page works
without the script too (plain tables). The markup uses no ids, so several reports can share a
page.

Colours use one absolute scale per metric, written on each table (``data-cfgsim-low``/``-high``):
the grid's scale (:func:`cfgsim.render.score_scale` of the scores it draws) for the scores against
the reference, the heatmap's for the N×N matrices. Each column stretched from its own minimum to
maximum would paint 0.166 and 0.186 as opposite ends.

The WebUI shows a script's ``processed.comments`` through its own ``plaintext_to_html`` (escaped:
the report arrives in the page as text). ``cfgsim.js`` recognises that text by
:data:`REPORT_MARKER`, parses it inertly and keeps only the tags and attributes this module writes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from cfgsim.render.colour import score_scale
from cfgsim.result import FAILED, SKIPPED, MetricScores, ProbeResult, rank_scores

REPORT_CLASS = "cfgsim-report"
# What the report's text starts with; cfgsim.js finds escaped reports in the page by it.
REPORT_MARKER = f'<div class="{REPORT_CLASS}"'

MEANING = (
    "1.0 means identical pictures. Checkpoints that share a lineage turn the same noise into "
    "similar pictures and score high against each other; unrelated ones score lower. Low step "
    "counts make everything look alike."
)


def esc(value: object) -> str:
    """Text for HTML content and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def _axis(result: ProbeResult) -> str:
    return result.row_axis.lower() or "row"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _data_value(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def _cell(value: float, *, row: int, col: int, title: str = "", classes: Sequence[str] = ()) -> str:
    attrs = [
        f'data-cfgsim-row="{row}"',
        f'data-cfgsim-col="{col}"',
        f'data-cfgsim-value="{_data_value(value)}"',
    ]
    if classes:
        attrs.insert(0, f'class="{esc(" ".join(classes))}"')
    if title:
        attrs.append(f'title="{esc(title)}"')
    return f"<td {' '.join(attrs)}>{esc(_fmt(value))}</td>"


def _header(label: str, col: int, *, title: str = "", full: str = "") -> str:
    hint = title or "Click to sort"
    if full and full != label:
        hint = f"{full}: {hint}"
    return f'<th scope="col" data-cfgsim-col="{col}" title="{esc(hint)}">{esc(label)}</th>'


def _table(
    kind: str,
    metric: str,
    caption: str,
    head: Iterable[str],
    body: Iterable[str],
    *,
    scale: tuple[float, float] = (0.0, 1.0),
) -> str:
    """One table with its copy button; ``kind`` is "reference" or "matrix"; ``scale`` the (low,
    high) ends of its colour scale."""
    low, high = scale
    return (
        '<div class="cfgsim-table-wrap"><div class="cfgsim-toolbar">'
        '<button type="button" class="cfgsim-copy" title="Copy this table as CSV (comma-separated '
        'values) to the clipboard">Copy as CSV</button></div>'
        f'<table class="cfgsim-table cfgsim-{kind}" data-cfgsim-kind="{kind}" '
        f'data-cfgsim-metric="{esc(metric)}" data-cfgsim-low="{low:.6g}" data-cfgsim-high="{high:.6g}">'
        f"<caption>{esc(caption)}</caption>"
        f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _row_head(label: str, row: int, *, reference: bool = False, full: str = "") -> str:
    classes = ' class="cfgsim-ref"' if reference else ""
    title = f' title="{esc(full)}"' if full and full != label else ""
    return f'<th scope="row" data-cfgsim-col="-1"{classes}{title}>{esc(label)}</th>'


def reference_table(result: ProbeResult, scores: MetricScores) -> str:
    """Each checkpoint's score against the reference: per seed, mean, standard deviation, rank."""
    assert scores.vs_reference is not None
    n_rows = len(result.rows)
    ref_index = result.reference.index if result.reference.kind == "item" else None
    mean, std = scores.reference_mean, scores.reference_std
    ranks = rank_scores(mean)
    head = [_header("Checkpoint", -1, title="Click to sort by name")]
    head += [
        _header(result.row_label(r), r, title=f"Score against the reference for {result.row_label(r)}")
        for r in range(n_rows)
    ]
    head.append(_header("Mean", n_rows, title=f"Mean over {_plural(n_rows, _axis(result))}"))
    head.append(_header("± SD", n_rows + 1, title="Standard deviation over the rows"))
    head.append(_header("Rank", n_rows + 2, title="1 = closest to the reference (by the mean)"))
    body = []
    for i, item in enumerate(result.items):
        is_ref = i == ref_index
        cells = [_row_head(item.label, i, reference=is_ref, full=item.name)]
        for r in range(n_rows):
            cell = result.cell(i, r)
            why = cell.reason if cell is not None and cell.status != "ok" else ""
            cells.append(_cell(float(scores.vs_reference[r][i]), row=i, col=r, title=why))
        cells.append(_cell(float(mean[i]), row=i, col=n_rows, classes=("cfgsim-mean",)))
        cells.append(_cell(float(std[i]), row=i, col=n_rows + 1, classes=("cfgsim-std", "cfgsim-noscale")))
        rank = ranks[i]
        rank_value = float(rank) if rank is not None else math.nan
        cells.append(
            f'<td class="cfgsim-rank cfgsim-noscale" data-cfgsim-row="{i}" data-cfgsim-col="{n_rows + 2}" '
            f'data-cfgsim-value="{_data_value(rank_value)}" data-cfgsim-order="asc">'
            f"{'reference' if is_ref else esc(rank if rank is not None else '—')}</td>"
        )
        row_class = ' class="cfgsim-ref-row"' if is_ref else ""
        body.append(f'<tr data-cfgsim-row="{i}"{row_class}>{"".join(cells)}</tr>')
    caption = f"{scores.label}: score against the reference ({result.reference.label or 'reference'})"
    return _table("reference", scores.metric, caption, head, body, scale=reference_scale(scores))


def reference_scale(scores: MetricScores) -> tuple[float, float]:
    """The grid's colour scale: the scores against the reference it draws on its cells."""
    return (
        score_scale(np.asarray(scores.vs_reference, dtype=float))
        if scores.vs_reference is not None
        else (0.0, 1.0)
    )


def matrix_scale(scores: MetricScores) -> tuple[float, float]:
    """The heatmap's colour scale (its mean matrix, diagonal included), widened to the per-row
    matrices so every N×N table of the metric shares it."""
    parts = [np.asarray(scores.mean, dtype=float).ravel()]
    parts += [np.asarray(m, dtype=float).ravel() for m in scores.per_row]
    return score_scale(np.concatenate(parts)) if parts else (0.0, 1.0)


def matrix_table(
    result: ProbeResult,
    matrix: np.ndarray,
    scores: MetricScores,
    caption: str,
    *,
    spread: np.ndarray | None = None,
) -> str:
    """The N×N matrix of one metric (``spread``: per-cell standard deviation, shown on hover)."""
    labels = result.labels
    head = [_header("", -1, title="Click a column header to sort the rows by it")]
    head += [_header(label, j, full=result.items[j].name) for j, label in enumerate(labels)]
    body = []
    ref_index = result.reference.index if result.reference.kind == "item" else None
    for i, label in enumerate(labels):
        cells = [_row_head(label, i, reference=i == ref_index, full=result.items[i].name)]
        for j in range(len(labels)):
            value = float(matrix[i, j]) if matrix.size else math.nan
            title = f"{label} vs {labels[j]}"
            if spread is not None and not math.isnan(float(spread[i, j])) and i != j:
                title += f": ± {float(spread[i, j]):.3f} over the rows"
            classes = ("cfgsim-diag",) if i == j else ()
            cells.append(_cell(value, row=i, col=j, title=title, classes=classes))
        body.append(f'<tr data-cfgsim-row="{i}">{"".join(cells)}</tr>')
    return _table("matrix", scores.metric, caption, head, body, scale=matrix_scale(scores))


def metric_section(result: ProbeResult, scores: MetricScores) -> str:
    parts = [
        f'<section class="cfgsim-metric" data-cfgsim-metric="{esc(scores.metric)}">',
        f'<h4 title="{esc(scores.description)}">{esc(scores.label)}</h4>',
    ]
    if scores.description:
        parts.append(f'<p class="cfgsim-description">{esc(scores.description)}</p>')
    if scores.vs_reference is not None:
        parts.append(reference_table(result, scores))
    n_rows = len(scores.per_row)
    if n_rows:
        what = f"mean over {_plural(n_rows, _axis(result))}" if n_rows > 1 else result.row_label(0)
        parts.append(
            matrix_table(
                result,
                scores.mean,
                scores,
                f"{scores.label}: N×N matrix, {what}",
                spread=scores.std if n_rows > 1 else None,
            )
        )
    if n_rows > 1:
        parts.append(
            f'<details class="cfgsim-per-row"><summary>{esc(scores.label)} per {esc(_axis(result))}</summary>'
        )
        for r, matrix in enumerate(scores.per_row):
            parts.append(matrix_table(result, matrix, scores, f"{scores.label}: {result.row_label(r)}"))
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def deviations_html(
    deviations: Sequence[tuple[str, str, str]], notes: Sequence[str] = (), *, preset: str = ""
) -> str:
    """The settings that differ from the preset (label, preset value, used value), and remarks.

    Shown in the UI as soon as a reference image is chosen, and in the report after the run.
    Empty string when there is nothing to say.
    """
    parts = []
    if deviations:
        rows = "".join(
            f'<tr><th scope="row">{esc(label)}</th><td>{esc(was or "(none)")}</td>'
            f"<td>{esc(used or '(none)')}</td></tr>"
            for label, was, used in deviations
        )
        parts.append(
            '<table class="cfgsim-deviations-table"><caption>'
            f"Settings that differ from the {esc(preset or 'preset')} preset (taken from the reference "
            "image; recorded in the metadata)</caption>"
            f'<thead><tr><th scope="col">Setting</th><th scope="col">Preset</th><th scope="col">Used</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    if notes:
        parts.append('<ul class="cfgsim-notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return f'<div class="cfgsim-deviations">{"".join(parts)}</div>' if parts else ""


def hints_html(by_label: Mapping[str, str], by_elem_id: Mapping[str, str]) -> str:
    """An empty element carrying hover hints as JSON; cfgsim.js adds them to the WebUI's ``titles``
    (keyed by label text, so they also reach components shown later) and to the elements by id."""
    payload = json.dumps({"labels": dict(by_label), "ids": dict(by_elem_id)}, ensure_ascii=False)
    return f'<div class="cfgsim-hints" data-cfgsim-hints="{esc(payload)}"></div>'


def _failures(result: ProbeResult) -> str:
    bad = [c for c in result.cells if c.status in (FAILED, SKIPPED)]
    if not bad:
        return ""
    items = []
    for cell in bad:
        label = result.items[cell.item].label
        status = "failed" if cell.status == FAILED else "skipped"
        items.append(
            f'<li class="cfgsim-{status}"><b>{esc(label)}</b> — {esc(result.row_label(cell.row))}: '
            f"{status}{': ' + esc(cell.reason) if cell.reason else ''}</li>"
        )
    return f'<ul class="cfgsim-failures">{"".join(items)}</ul>'


def _text_cell(
    row: int, col: int, text: str, *, value: float | None = None, classes: str = "", title: str = ""
) -> str:
    """A cell that is not coloured: text, and a value when it sorts by number (p, support)."""
    cls = " ".join(["cfgsim-noscale", *([classes] if classes else [])])
    data = "" if value is None else _data_value(value)
    hint = f' title="{esc(title)}"' if title else ""
    return (
        f'<td class="{esc(cls)}" data-cfgsim-row="{row}" data-cfgsim-col="{col}" '
        f'data-cfgsim-value="{data}"{hint}>{esc(text)}</td>'
    )


def _short_verdict(band: str) -> str:
    return {
        "same model": "same model",
        "close relative (fine-tune or merge)": "close relative",
        "shares a base": "shares a base",
        "unrelated or undecided": "unrelated / undecided",
    }.get(band, band)


def lineage_section(result: ProbeResult) -> str:
    """The verdict per checkpoint (tree order): nearest relative, similarity with its CI, the paired
    test against the runner-up, clade support and the band; then the tree as Newick and the notes."""
    lin = result.lineage
    if lin is None:
        return ""
    seeds = len(lin.rows_used)
    caption = (
        f"Lineage verdict ({lin.metric.upper()}, {_plural(seeds, 'seed')}; the nearest relative is "
        f"decided when the runner-up is clearly more than {lin.margin:g}x as far (sign-flip test over "
        f"the seeds at {lin.alpha:g}); support from {lin.replicates} seed-bootstrap trees)"
    )
    titles = [
        ("Checkpoint", ""),
        (
            "Verdict",
            "Bands are guides from measured data, not proof (README: The lineage verdict); "
            "hover for the reasons",
        ),
        (
            "Nearest relative",
            "The checkpoint it is most similar to (mean over seeds); ? = not clearly nearer",
        ),
        ("Similarity", "Mean similarity to the nearest relative over the seeds"),
        ("95% CI", "Bootstrap confidence interval of that mean, resampling seeds"),
        ("Runner-up", "The next most similar checkpoint (copies of the nearest left out)"),
        ("p", "Paired sign-flip test over the seeds: is the runner-up clearly farther than the margin?"),
        ("Seeds won", "Seeds on which the nearest beat the runner-up"),
        ("Support", "% of seed-bootstrap trees holding the smallest clade with both"),
    ]
    head = [_header(label, col - 1, title=title) for col, (label, title) in enumerate(titles)]
    body = []
    for k, item in enumerate(lin.order):
        rel = lin.relative_of(item)
        if rel is None:
            continue
        ci = "—" if math.isnan(rel.ci[0]) else f"{rel.ci[0]:.3f} – {rel.ci[1]:.3f}"
        tested = rel.runner_up is not None
        p = rel.p_value
        nearest = (rel.nearest_label or "—") + ("" if rel.decided or not rel.nearest_label else " ?")
        cells = [
            _row_head(rel.label, k),
            _text_cell(k, 0, _short_verdict(rel.band), classes="cfgsim-verdict", title=rel.verdict),
            _text_cell(k, 1, nearest, title=rel.verdict),
            _cell(rel.similarity, row=k, col=2, title=rel.verdict),
            _text_cell(k, 3, ci, value=None if math.isnan(rel.ci[0]) else rel.ci[0]),
            _text_cell(k, 4, rel.runner_up_label or "—"),
            _text_cell(k, 5, "—" if p is None else f"{p:.3g}", value=p),
            _text_cell(k, 6, f"{rel.seeds_won}/{rel.seeds}" if tested else "—", value=rel.seeds_won),
            _text_cell(
                k, 7, "—" if rel.support is None else f"{round(rel.support * 100)}%", value=rel.support
            ),
        ]
        body.append(f'<tr data-cfgsim-row="{k}">{"".join(cells)}</tr>')
    scores = result.scores.get(lin.metric)
    scale = matrix_scale(scores) if scores is not None else (0.0, 1.0)
    parts = [
        '<section class="cfgsim-lineage">',
        _table("verdict", lin.metric, caption, head, body, scale=scale),
        '<details class="cfgsim-newick"><summary>Family tree as Newick (support in %)</summary>'
        f"<p>{esc(lin.newick)}</p></details>",
    ]
    if lin.notes:
        parts.append('<ul class="cfgsim-notes">' + "".join(f"<li>{esc(n)}</li>" for n in lin.notes) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def report_html(result: ProbeResult, *, weights_text: str | None = None) -> str:
    """The whole report for one run, checkpoints in the family tree's order. See the module docstring."""
    if result.lineage is not None:
        result = result.reordered(result.tree_order())
    spec = result.spec
    n_items, n_rows = len(result.items), len(result.rows)
    ok = sum(1 for c in result.cells if c.ok)
    ref = result.reference
    ref_text = {
        "none": "no reference",
        "item": f"reference: {ref.label}",
        "image": f"reference image: {ref.label}",
    }
    axis = _axis(result)
    head = (
        f"CFG 1.0 similarity probe · {_plural(n_items, 'checkpoint')} × {_plural(n_rows, axis)} · "
        f"{_plural(ok, 'image')} · {ref_text.get(ref.kind, ref.kind)}"
    )
    parts = [
        f'{REPORT_MARKER} data-cfgsim-version="{esc(result.version)}">',
        f'<div class="cfgsim-head" title="{esc(MEANING)}">{esc(head)}</div>',
    ]
    if not spec.is_probe:
        parts.append(
            '<div class="cfgsim-banner cfgsim-not-probe">'
            f"Quick preview: {spec.effective_steps} of {spec.steps} steps — not the probe. Low step "
            "counts make every checkpoint look alike; run without the preview for real scores.</div>"
        )
    if result.interrupted:
        parts.append(
            '<div class="cfgsim-banner cfgsim-interrupted">Interrupted: the scores cover the '
            "images made before the stop.</div>"
        )
    parts.append(deviations_html(result.deviations, preset=result.preset))
    parts.append(lineage_section(result))
    if result.scores:
        parts.extend(metric_section(result, scores) for scores in result.scores.values())
    else:
        parts.append('<p class="cfgsim-empty">No scores: no probe image was made.</p>')
    parts.append(_failures(result))
    if weights_text:
        # The weight-space view as text (identity groups, recipes): its pictures are in the gallery.
        lines = "".join(f"<li>{esc(line)}</li>" for line in weights_text.splitlines() if line.strip())
        parts.append(f'<section class="cfgsim-weights"><h4>Weights</h4><ul>{lines}</ul></section>')
    parts.append(f'<p class="cfgsim-meaning">{esc(MEANING)}</p>')
    parts.append("</div>")
    return "".join(parts)
