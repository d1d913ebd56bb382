"""cfgsim.report: the similarity table under the WebUI's gallery, as HTML from a ProbeResult."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser

import pytest
from helpers import make_result

from cfgsim import report
from cfgsim.result import Reference
from cfgsim.spec import ProbeSpec

EVIL = "<img src=x onerror=alert(1)>"
QUOTES = "\"quoted\" & 'single'"

# The tags and attributes cfgsim.js keeps (its allowlist): the report must need nothing else.
JS_TAGS = {
    "div", "section", "h4", "p", "ul", "li", "b", "strong", "span", "small", "code", "details", "summary",
    "table", "caption", "thead", "tbody", "tr", "th", "td", "button",
}  # fmt: skip
JS_ATTRIBUTES = {"class", "title", "scope", "type", "colspan", "rowspan"}


class Collector(HTMLParser):
    """Every start tag with its attributes, and the text, of a well-formed document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> Collector:
    collector = Collector()
    collector.feed(markup)
    collector.close()
    assert collector.problems == [] and collector.stack == [], (collector.problems, collector.stack)
    return collector


@pytest.fixture(scope="module")
def result():
    return make_result(n_items=3, seeds=(1337, 42), labels=["base", EVIL, QUOTES], reference_index=0)


def test_report_starts_with_the_marker_cfgsim_js_looks_for(result):
    markup = report.report_html(result)
    assert markup.startswith(report.REPORT_MARKER)
    assert "\n" not in markup  # survives the WebUI's line-by-line escaping unchanged


def test_every_name_is_escaped(result):
    markup = report.report_html(result)
    assert EVIL not in markup and "<img" not in markup
    assert html.escape(EVIL) in markup
    doc = parse(markup)
    assert EVIL in "".join(doc.text)  # shown as text
    assert QUOTES in "".join(doc.text)
    for _tag, attrs in doc.tags:
        for name in attrs:
            assert not name.startswith("on"), name


def test_only_markup_cfgsim_js_keeps(result):
    doc = parse(report.report_html(result))
    for tag, attrs in doc.tags:
        assert tag in JS_TAGS, tag
        for name in attrs:
            assert name in JS_ATTRIBUTES or name.startswith("data-cfgsim-"), (tag, name)


def test_tables_carry_values_rows_and_columns(result):
    doc = parse(report.report_html(result))
    tables = [attrs for tag, attrs in doc.tags if tag == "table"]
    kinds = [t["data-cfgsim-kind"] for t in tables]
    # The lineage verdict, vs reference, the mean matrix, then one matrix per seed.
    assert kinds == ["verdict", "reference", "matrix", "matrix", "matrix"]
    cells = [attrs for tag, attrs in doc.tags if tag == "td"]
    assert all({"data-cfgsim-row", "data-cfgsim-col", "data-cfgsim-value"} <= set(a) for a in cells)
    # The report lists the checkpoints in the family tree's order.
    ordered = result.reordered(result.tree_order())
    scores = ordered.scores["ssim"]
    ref = ordered.reference.index
    mean_cells = [a for a in cells if "cfgsim-mean" in (a.get("class") or "")]
    assert mean_cells[ref]["data-cfgsim-value"] == ""  # the reference itself has no score
    other = next(i for i in range(3) if i != ref)
    assert float(mean_cells[other]["data-cfgsim-value"]) == pytest.approx(
        scores.reference_mean[other], abs=1e-5
    )
    buttons = [a for tag, a in doc.tags if tag == "button"]
    assert len(buttons) == len(tables) and all(b["type"] == "button" for b in buttons)


def test_matrix_values_and_diagonal(result):
    scores = result.scores["ssim"]
    markup = report.matrix_table(result, scores.mean, scores, "caption", spread=scores.std)
    doc = parse(markup)
    cells = [a for tag, a in doc.tags if tag == "td"]
    assert len(cells) == 9
    for a in cells:
        i, j = int(a["data-cfgsim-row"]), int(a["data-cfgsim-col"])
        expected = scores.mean[i, j]
        if math.isnan(expected):
            assert a["data-cfgsim-value"] == ""
        else:
            assert float(a["data-cfgsim-value"]) == pytest.approx(expected, abs=1e-5)
        assert ("cfgsim-diag" in (a.get("class") or "")) is (i == j)


def test_ranks_follow_the_mean(result):
    doc = parse(report.report_html(result))
    ranks = [a for tag, a in doc.tags if tag == "td" and "cfgsim-rank" in (a.get("class") or "")]
    mean = result.reordered(result.tree_order()).scores["ssim"].reference_mean  # rows in tree order
    order = sorted((i for i in range(3) if not math.isnan(mean[i])), key=lambda i: -mean[i])
    assert [ranks[i]["data-cfgsim-value"] for i in order] == ["1", "2"]


def test_failures_and_skips_are_listed_with_reasons():
    skipped = make_result(n_items=3, seeds=(1, 2), with_skipped=True)
    text = "".join(parse(report.report_html(skipped)).text)
    assert text.count("skipped: SDXL checkpoint") == 2  # both seeds of the SDXL checkpoint
    failed = make_result(n_items=3, seeds=(1, 2))
    text = "".join(parse(report.report_html(failed)).text)
    assert "model-c — Seed 2: failed: RuntimeError: CUDA out of memory" in text


def test_banners_for_quick_preview_interrupt_and_deviations():
    result = make_result(
        n_items=2, seeds=(1,), spec=ProbeSpec(seeds=(1,), steps_override=8, width=128, height=128)
    )
    result.interrupted = True
    result.preset = "cfg1"
    result.deviations = [("Steps", "256", "64"), ("Negative prompt", "(bad:0)", "")]
    markup = report.report_html(result)
    text = "".join(parse(markup).text)
    assert "8 of 256 steps — not the probe" in text
    assert "Interrupted" in text
    assert "differ from the cfg1 preset" in text
    assert "(none)" in text  # an empty value is named, not left blank


def test_no_reference_no_reference_table():
    result = make_result(n_items=2, seeds=(1,), reference_index=None)
    doc = parse(report.report_html(result))
    kinds = [a["data-cfgsim-kind"] for tag, a in doc.tags if tag == "table"]
    assert kinds == ["matrix"]
    assert "no reference" in "".join(doc.text)


def test_external_reference_image_label():
    result = make_result(n_items=2, seeds=(1,), reference_index=None)
    result.reference = Reference("image", None, "uploaded image (model hash 925997e9)")
    assert "reference image: uploaded image (model hash 925997e9)" in "".join(
        parse(report.report_html(result)).text
    )


def test_no_scores_says_so():
    result = make_result(n_items=1, seeds=(1,), reference_index=None)
    result.scores = {}
    assert "No scores" in "".join(parse(report.report_html(result)).text)


def test_deviations_html_is_empty_when_there_is_nothing_to_say():
    assert report.deviations_html([], []) == ""
    markup = report.deviations_html([("Seed", "1337", EVIL)], ["note <b>"], preset="cfg1")
    assert EVIL not in markup and "note &lt;b&gt;" in markup
    parse(markup)


def test_hints_html_round_trips_as_json():
    hints = {"Probe seeds": 'One row per seed: "1-20" & <more>'}
    markup = report.hints_html(hints, {"cfgsim_seeds": "x"})
    ((_tag, attrs),) = parse(markup).tags
    assert json.loads(attrs["data-cfgsim-hints"]) == {"labels": hints, "ids": {"cfgsim_seeds": "x"}}


def test_lineage_verdict_table_lists_every_checkpoint_in_tree_order(result):
    doc = parse(report.report_html(result))
    assert result.lineage is not None
    order = [result.items[i].label for i in result.tree_order()]
    markup = report.lineage_section(result.reordered(result.tree_order()))
    rows = re.findall(r'<th scope="row"[^>]*>([^<]*)</th>', markup)
    assert rows == [html.escape(label) for label in order]
    for rel in result.lineage.relatives:
        assert html.escape(rel.verdict) in markup
    assert "Newick" in markup and html.escape(result.lineage.newick) in markup
    # Columns of names sort as text, scores and p-values by value; only the similarity is coloured.
    verdict_cells = re.findall(r'<td class="([^"]*)" data-cfgsim-row', markup)
    assert all("cfgsim-noscale" in c for c in verdict_cells)
    assert next(a for t, a in doc.tags if t == "table")["data-cfgsim-kind"] == "verdict"  # shown first


def test_a_result_without_lineage_has_no_verdict_section(result):
    result.lineage = None
    assert "cfgsim-lineage" not in report.report_html(result)
