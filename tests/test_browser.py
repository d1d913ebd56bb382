"""javascript/cfgsim.js + style.css in headless Chromium, on the report HTML cfgsim.report builds.

The page reproduces what the WebUI shows: the report arrives escaped, as the text of a
``<p class="comments">`` (the WebUI's ``plaintext_to_html``), beside a control with a cfgsim id and a
label, the hidden hints element and, in the WebUI variant, the ``titles`` global and the
``onUiLoaded``/``onAfterUiUpdate`` hooks. The page is served from a loopback HTTP server so that the
clipboard can be granted to its origin.

Debian's ``chromium`` is driven by Playwright through ``executable_path`` (no browser download);
the tests skip with the reason when either is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import html
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_result

from cfgsim import controls, report

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL = "<img src=x onerror=alert(1)>"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"Debian chromium is not installed ({CHROMIUM}); apt-get install chromium", allow_module_level=True
    )


def plaintext_to_html(text: str, classname: str) -> str:
    """What the WebUI does to processed.comments before showing it."""
    content = "<br>\n".join(html.escape(line) for line in text.split("\n"))
    return f"<p class='{classname}'>{content}</p>"


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>cfgsim report</title>
<link rel="stylesheet" href="style.css">
<script>{prelude}</script>
<script src="cfgsim.js"></script>
</head><body>
<div id="cfgsim_seeds" class="cfgsim-seeds"><label><span>Probe seeds</span><input value="1337"></label></div>
{hints}
<div id="html_log_txt2img">{comments}</div>
</body></html>
"""

# The WebUI's script.js: callbacks collected now, run by the page later (as gradio updates the DOM).
WEBUI_PRELUDE = """
var titles = {"Seed": "the WebUI's own hint"};
var uiLoadedCallbacks = [], uiUpdateCallbacks = [];
function onUiLoaded(cb) { uiLoadedCallbacks.push(cb); }
function onAfterUiUpdate(cb) { uiUpdateCallbacks.push(cb); }
function gradioApp() { return document; }
"""


@pytest.fixture(scope="module")
def result():
    labels = ["base", "tuned", EVIL, "other, with comma"]
    return make_result(n_items=4, seeds=(1337, 42), labels=labels, reference_index=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("cfgsim-page")
    shutil.copy(ROOT / "javascript" / "cfgsim.js", folder / "cfgsim.js")
    shutil.copy(ROOT / "style.css", folder / "style.css")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # a broken install must say why, not error out
            pytest.skip(f"headless chromium does not start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, server, result):
    """``open_page(webui=False)`` → (page, problems): the report page loaded; dialogs and errors collected."""
    base, folder = server
    contexts = []

    def make(webui: bool = False, comments: str | None = None):
        name = "webui.html" if webui else "plain.html"
        text = report.report_html(result) if comments is None else comments
        (folder / name).write_text(
            PAGE.format(
                prelude=WEBUI_PRELUDE if webui else "",
                hints=report.hints_html(controls.hints(), controls.hints_by_elem_id()),
                comments=plaintext_to_html(text, "comments"),
            ),
            encoding="utf-8",
        )
        context = browser.new_context()
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        contexts.append(context)
        page = context.new_page()
        problems: list[str] = []
        page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
        page.on("pageerror", lambda error: problems.append(f"error: {error}"))
        page.goto(f"{base}/{name}")
        page.wait_for_load_state("load")
        return page, problems

    yield make
    for context in contexts:
        context.close()


def test_escaped_report_is_rendered_as_tables(open_page):
    page, problems = open_page()
    assert page.locator(".comments .cfgsim-report").count() == 1
    assert page.locator("table.cfgsim-matrix").count() >= 1
    assert page.locator("table.cfgsim-reference").count() == 1
    assert "<div" not in page.locator(".comments").inner_text()  # no markup left as text
    assert problems == []


def test_hostile_checkpoint_name_stays_text(open_page):
    page, problems = open_page()
    page.wait_for_timeout(300)  # time for an image error handler to fire, if one existed
    assert problems == []
    assert page.locator(".cfgsim-report img").count() == 0
    headers = page.locator("table.cfgsim-matrix").first.locator("thead th").all_inner_texts()
    assert EVIL in headers
    assert page.get_by_text(EVIL, exact=True).first.is_visible()


def test_sanitizer_drops_markup_it_did_not_write(open_page):
    hostile = (
        '<div class="cfgsim-report"><img src=x onerror="alert(2)"><script>alert(3)</script>'
        '<table class="cfgsim-table" onclick="alert(4)"><tr><td data-cfgsim-value="1" style="x">a</td></tr>'
        "</table>"
        '<a href="javascript:alert(5)">link</a><button type="submit">go</button></div>'
    )
    page, problems = open_page(comments=hostile)
    page.wait_for_timeout(300)
    assert problems == []
    rendered = page.locator(".comments .cfgsim-report")
    assert rendered.count() == 1
    markup = rendered.evaluate("el => el.outerHTML")
    for bad in ("<img", "<script", "onclick", "onerror", "<a ", "javascript:", 'type="submit"'):
        assert bad not in markup
    assert "link" in rendered.inner_text()


def test_colour_scale(open_page):
    page, _ = open_page()
    colours = (
        page.locator("table.cfgsim-matrix")
        .first.locator("td.cfgsim-scaled")
        .evaluate_all("cells => cells.map(c => c.style.backgroundColor)")
    )
    assert colours and all(c.startswith("rgb(") for c in colours)
    assert len(set(colours)) > 2  # a scale, not one colour
    assert page.locator("table.cfgsim-matrix td.cfgsim-nan").count() >= 1  # the failed cell's row/column


def _column_values(table, col: int) -> list[float | None]:
    raw = table.locator(f'tbody td[data-cfgsim-col="{col}"]').evaluate_all(
        "cells => cells.map(c => c.getAttribute('data-cfgsim-value'))"
    )
    return [float(v) if v else None for v in raw]


def test_click_a_header_to_sort(open_page):
    page, problems = open_page()
    table = page.locator("table.cfgsim-reference")
    mean_col = 2  # two seeds, then the mean
    header = table.locator(f'thead th[data-cfgsim-col="{mean_col}"]')
    header.click()
    values = [v for v in _column_values(table, mean_col) if v is not None]
    assert values == sorted(values, reverse=True)  # most similar first
    assert header.get_attribute("aria-sort") == "descending"
    assert _column_values(table, mean_col)[-1] is None  # the reference itself: empty, last
    header.click()
    values = [v for v in _column_values(table, mean_col) if v is not None]
    assert values == sorted(values)
    table.locator('thead th[data-cfgsim-col="-1"]').click()
    names = table.locator("tbody th").all_inner_texts()
    assert names == sorted(names)
    rank = table.locator('thead th[data-cfgsim-col="4"]')
    rank.click()
    ranks = [v for v in _column_values(table, 4) if v is not None]
    assert ranks == sorted(ranks)  # ranks: 1 first
    assert problems == []


def test_hover_highlights_row_and_column(open_page):
    page, _ = open_page()
    table = page.locator("table.cfgsim-matrix").first
    cell = table.locator('tbody tr[data-cfgsim-row="1"] td[data-cfgsim-col="2"]')
    cell.hover()
    row_cells = table.locator('tbody tr[data-cfgsim-row="1"] > *')
    assert row_cells.count() == row_cells.evaluate_all(
        "cs => cs.filter(c => c.matches('.cfgsim-hl-row')).length"
    )
    col_cells = table.locator('[data-cfgsim-col="2"]')
    assert col_cells.count() == col_cells.evaluate_all(
        "cs => cs.filter(c => c.matches('.cfgsim-hl-col')).length"
    )
    assert "cfgsim-hl-cell" in (cell.get_attribute("class") or "")
    other = table.locator('tbody tr[data-cfgsim-row="3"] td[data-cfgsim-col="0"]')
    assert "cfgsim-hl-row" not in (other.get_attribute("class") or "")
    page.mouse.move(0, 0)
    assert table.locator(".cfgsim-hl-row, .cfgsim-hl-col, .cfgsim-hl-cell").count() == 0


def test_copy_as_csv(open_page, result):
    page, problems = open_page()
    wrap = page.locator(".cfgsim-table-wrap").filter(has=page.locator("table.cfgsim-reference"))
    wrap.locator("button.cfgsim-copy").click()
    page.wait_for_function("window.cfgsim.lastCsv !== null")
    csv_text = page.evaluate("window.cfgsim.lastCsv")
    lines = csv_text.strip().split("\r\n")
    assert lines[0].startswith("Checkpoint,Seed 1337,Seed 42,Mean")
    assert len(lines) == 1 + len(result.items)
    assert any(line.startswith('"other, with comma",') for line in lines)  # quoted
    assert any(line.startswith(EVIL + ",") for line in lines)
    mean = result.scores["ssim"].reference_mean
    tuned = next(line for line in lines if line.startswith("tuned,")).split(",")
    assert abs(float(tuned[3]) - mean[1]) < 1e-5
    clipboard = page.evaluate("navigator.clipboard.readText().catch(() => null)")
    if clipboard is not None:
        assert clipboard == csv_text
    assert problems == []


def test_hints_on_a_plain_page(open_page):
    page, problems = open_page()
    hint = controls.control("seeds").hint
    assert page.locator("#cfgsim_seeds").get_attribute("title") == hint
    assert page.evaluate("window.cfgsim.hints")["Probe seeds"] == hint
    assert page.locator(".cfgsim-copy").first.get_attribute("title")
    assert page.locator("table.cfgsim-reference thead th").first.get_attribute("title")
    assert not page.locator(".cfgsim-hints").first.is_visible()
    assert problems == []


def test_webui_hooks_and_titles(open_page):
    """With the WebUI's hooks, nothing happens until they fire; then titles gets our labels."""
    page, problems = open_page(webui=True)
    assert page.locator(".cfgsim-report").count() == 0  # still escaped text: the UI has not loaded
    page.evaluate("uiLoadedCallbacks.forEach(cb => cb())")
    assert page.locator(".comments .cfgsim-report").count() == 1
    titles = page.evaluate("titles")
    assert titles["Probe seeds"] == controls.control("seeds").hint
    assert titles["Seed"] == "the WebUI's own hint"  # the WebUI's hints are not touched
    # A later generation: gradio replaces the comments, then onAfterUiUpdate fires.
    page.evaluate(
        "html => { document.querySelector('#html_log_txt2img').innerHTML = html; "
        "uiUpdateCallbacks.forEach(cb => cb()); }",
        plaintext_to_html(
            report.report_html(make_result(n_items=2, seeds=(7,), reference_index=None)), "comments"
        ),
    )
    assert page.locator(".comments .cfgsim-report table.cfgsim-matrix").count() == 1
    assert page.locator("table.cfgsim-reference").count() == 0
    assert problems == []
