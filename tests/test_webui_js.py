"""javascript/cfgsim.js without a browser: its pure parts run in Node (skipped where Node is
missing) — CSV cells that a spreadsheet would run as formulas, and the table's absolute colour scale.
The browser tests (tests/test_browser.py) cover the page as a whole."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cfgsim import report
from cfgsim.render import score_scale
from cfgsim.result import MetricScores

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")

# A window/document just big enough for cfgsim.js to load (a WebUI hook keeps it from scanning the
# page), and tables/cells with the few DOM methods colour() uses.
HARNESS = """
global.window = {};
global.document = {readyState: "complete"};
global.onUiLoaded = function() {};
require(process.argv[2]);
var cfgsim = window.cfgsim;
function cell(value, classes) {
  var list = classes || [];
  return {
    style: {}, attrs: {"data-cfgsim-value": value},
    getAttribute: function(n) { return n in this.attrs ? this.attrs[n] : null; },
    classList: {contains: function(c) { return list.indexOf(c) >= 0; }, add: function(c) { list.push(c); }},
  };
}
function table(attrs, cells) {
  return {
    attrs: attrs,
    getAttribute: function(n) { return n in this.attrs ? this.attrs[n] : null; },
    setAttribute: function(n, v) { this.attrs[n] = v; },
    querySelectorAll: function() { return cells; },
  };
}
var input = JSON.parse(process.argv[3]);
var out = {csv: input.csv.map(cfgsim.csvField), colours: []};
input.tables.forEach(function(t) {
  var cells = t.values.map(function(v) { return cell(v); });
  var tab = table(t.attrs, cells);
  cfgsim.colour(tab);
  var colours = cells.map(function(c) { return c.style.backgroundColor; });
  out.colours.push({scale: cfgsim.scaleOf(tab), cells: colours});
});
console.log(JSON.stringify(out));
"""


def run_node(tmp_path: Path, payload: dict) -> dict:
    if NODE is None:
        pytest.skip("node is not installed")
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    done = subprocess.run(
        [NODE, str(harness), str(ROOT / "javascript" / "cfgsim.js"), json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


CSV_CASES = [
    ('=HYPERLINK("http://x")', '"\'=HYPERLINK(""http://x"")"'),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
    ("\t=1+1", "'\t=1+1"),
    ("-0.0123", "-0.0123"),  # a negative score stays a number
    ("1e-05", "1e-05"),
    ("base, v2", '"base, v2"'),
    ("model-a", "model-a"),
]


def test_copy_as_csv_neutralises_formulas(tmp_path):
    got = run_node(tmp_path, {"csv": [text for text, _ in CSV_CASES], "tables": []})["csv"]
    assert got == [expected for _, expected in CSV_CASES]


def test_table_scale_is_the_one_the_report_writes(tmp_path):
    got = run_node(
        tmp_path,
        {
            "csv": [],
            "tables": [
                {"attrs": {"data-cfgsim-low": "0.1", "data-cfgsim-high": "1"}, "values": ["0.166", "0.186"]},
                {"attrs": {}, "values": ["0.5"]},
            ],
        },
    )["colours"]
    assert [t["scale"] for t in got] == [[0.1, 1], [0, 1]]
    # Both low scores sit at the dark end of viridis, next to each other (not at opposite ends).
    low, high = ([int(c) for c in colour[4:-1].split(",")] for colour in got[0]["cells"])
    assert max(abs(a - b) for a, b in zip(low, high, strict=True)) < 20
    assert low[0] < 80 and high[0] < 80  # viridis' purple/blue end, red channel low


def test_report_tables_carry_the_grid_and_heatmap_scales():
    """0.166 and 0.186 against the reference: one absolute scale (the grid's), not each column's
    own minimum to maximum."""
    vs = [np.array([np.nan, 0.186, 0.166])]
    matrix = np.array([[1.0, 0.186, 0.166], [0.186, 1.0, 0.5], [0.166, 0.5, 1.0]])
    scores = MetricScores(metric="ssim", label="SSIM", per_row=[matrix], vs_reference=vs)
    assert report.reference_scale(scores) == score_scale(vs) == (0.1, 1.0)
    assert report.matrix_scale(scores) == score_scale(matrix)
