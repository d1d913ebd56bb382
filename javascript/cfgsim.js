// cfgsim: the similarity table under the WebUI's gallery, and hover hints for the probe's controls.
//
// The script's report arrives as the text of the WebUI's "comments" paragraph: the WebUI escapes
// processed.comments (plaintext_to_html), so the markup cfgsim.report wrote is visible as text.
// This file finds that text by its marker, parses it inertly (DOMParser runs no script and loads no
// image) and rebuilds it from an allowlist of the tags and attributes cfgsim.report writes: a name
// like <img src=x onerror=...> stays text whatever happens upstream. Then each table gets a colour
// scale, sorting by a click on a header, row/column highlight on hover and a "Copy as CSV" button.
//
// Everything is inside one function; the only global is `cfgsim` (tests and other code use it).
// The WebUI's hooks (onUiLoaded, onAfterUiUpdate) are used when they exist; on a plain page the
// work is done once the document is loaded.

(function() {
    "use strict";

    var MARKER = '<div class="cfgsim-report"';
    var TAGS = {
        DIV: 1, SECTION: 1, H4: 1, P: 1, UL: 1, LI: 1, B: 1, STRONG: 1, SPAN: 1, SMALL: 1, CODE: 1,
        DETAILS: 1, SUMMARY: 1, TABLE: 1, CAPTION: 1, THEAD: 1, TBODY: 1, TR: 1, TH: 1, TD: 1, BUTTON: 1,
    };
    var ATTRIBUTES = {"class": 1, "title": 1, "scope": 1, "type": 1, "colspan": 1, "rowspan": 1};
    // 17 samples of matplotlib's viridis (CC0), the grid's colour map: the table reads like the grid.
    var VIRIDIS = [
        [68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
        [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115],
        [94, 201, 98], [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37],
    ];

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    // -- rendering the escaped report ------------------------------------------------------------------

    function cleanCopy(node, doc) {
        if (node.nodeType === 3) {
            return doc.createTextNode(node.nodeValue);
        }
        if (node.nodeType !== 1 || !TAGS[node.tagName]) {
            // Unknown elements keep their text only; comments and the like are dropped.
            return node.nodeType === 1 ? doc.createTextNode(node.textContent) : null;
        }
        var copy = doc.createElement(node.tagName.toLowerCase());
        for (var i = 0; i < node.attributes.length; i++) {
            var attr = node.attributes[i];
            var name = attr.name.toLowerCase();
            if (ATTRIBUTES[name] || /^data-cfgsim-[a-z-]+$/.test(name)) {
                if (name === "type" && attr.value !== "button") continue;
                copy.setAttribute(name, attr.value);
            }
        }
        for (var child = node.firstChild; child; child = child.nextSibling) {
            var cleaned = cleanCopy(child, doc);
            if (cleaned) copy.appendChild(cleaned);
        }
        return copy;
    }

    // The report's markup, as a safe fragment of the current document.
    function sanitize(markup, doc) {
        doc = doc || document;
        var parsed = new DOMParser().parseFromString(markup, "text/html");
        var fragment = doc.createDocumentFragment();
        for (var node = parsed.body.firstChild; node; node = node.nextSibling) {
            var cleaned = cleanCopy(node, doc);
            if (cleaned) fragment.appendChild(cleaned);
        }
        return fragment;
    }

    function renderEscaped(scope) {
        var candidates = scope.querySelectorAll(".comments, .cfgsim-escaped");
        for (var i = 0; i < candidates.length; i++) {
            var el = candidates[i];
            if (el.dataset.cfgsimRendered) continue;
            var text = el.textContent.trim();
            if (text.indexOf(MARKER) !== 0) continue;
            el.dataset.cfgsimRendered = "1";
            el.textContent = "";
            el.appendChild(sanitize(text, el.ownerDocument));
            el.classList.add("cfgsim-rendered");
        }
    }

    // -- colour, sort, highlight, copy ----------------------------------------------------------------------

    function valueOf(cell) {
        var raw = cell ? cell.getAttribute("data-cfgsim-value") : null;
        if (raw === null || raw === "") return null;
        var number = parseFloat(raw);
        return isNaN(number) ? null : number;
    }

    function viridis(t) {
        var x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
        var i = Math.min(Math.floor(x), VIRIDIS.length - 2);
        var f = x - i;
        var a = VIRIDIS[i], b = VIRIDIS[i + 1];
        return [0, 1, 2].map(function(k) {
            return Math.round(a[k] + (b[k] - a[k]) * f);
        });
    }

    // The table's colour scale: the absolute one cfgsim.report writes on it (the grid's and the
    // heatmap's scale, so a colour means the same score everywhere); tables without one (older
    // reports) span 0-1.
    function scaleOf(table) {
        var lo = parseFloat(table.getAttribute("data-cfgsim-low"));
        var hi = parseFloat(table.getAttribute("data-cfgsim-high"));
        if (isNaN(lo) || isNaN(hi) || !(hi > lo)) return [0, 1];
        return [lo, hi];
    }

    function colour(table) {
        var cells = table.querySelectorAll("td[data-cfgsim-value]");
        var scale = scaleOf(table);
        for (var i = 0; i < cells.length; i++) {
            var cell = cells[i];
            if (cell.classList.contains("cfgsim-noscale")) continue;
            var v = valueOf(cell);
            if (v === null) {
                cell.classList.add("cfgsim-nan");
                continue;
            }
            var rgb = viridis((v - scale[0]) / (scale[1] - scale[0]));
            var light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140;
            cell.style.backgroundColor = "rgb(" + rgb.join(",") + ")";
            cell.style.color = light ? "#000" : "#fff";
            cell.classList.add("cfgsim-scaled");
        }
        table.setAttribute("data-cfgsim-scale", scale[0].toFixed(3) + " – " + scale[1].toFixed(3));
    }

    function cellIn(row, col) {
        return row.querySelector('[data-cfgsim-col="' + col + '"]');
    }

    function sortTable(table, col) {
        var body = table.tBodies[0];
        if (!body) return;
        var header = table.tHead.querySelector('[data-cfgsim-col="' + col + '"]');
        var rows = Array.prototype.slice.call(body.rows);
        // Columns of scores sort by value; columns of names and verdicts (no values) by text.
        var numeric = col !== "-1" && rows.some(function(r) {
            return valueOf(cellIn(r, col)) !== null;
        });
        var previous = table.getAttribute("data-cfgsim-sort");
        var ascending;
        if (previous === col + ":desc") {
            ascending = true;
        } else if (previous === col + ":asc") {
            ascending = false;
        } else {
            // First click: text A→Z, ranks 1 first, scores highest (most similar) first.
            var first = rows.length ? cellIn(rows[0], col) : null;
            ascending = !numeric || (first && first.getAttribute("data-cfgsim-order") === "asc");
        }
        rows.sort(function(a, b) {
            var ca = cellIn(a, col), cb = cellIn(b, col);
            if (!numeric) {
                var ta = ca ? ca.textContent : "", tb = cb ? cb.textContent : "";
                return ascending ? ta.localeCompare(tb) : tb.localeCompare(ta);
            }
            var va = valueOf(ca), vb = valueOf(cb);
            if (va === null && vb === null) return 0;
            if (va === null) return 1; // empty cells last, whichever the direction
            if (vb === null) return -1;
            return ascending ? va - vb : vb - va;
        });
        rows.forEach(function(row) {
            body.appendChild(row);
        });
        table.setAttribute("data-cfgsim-sort", col + (ascending ? ":asc" : ":desc"));
        var heads = table.tHead.querySelectorAll("th");
        for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
        if (header) header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    }

    function clearHighlight(table) {
        var lit = table.querySelectorAll(".cfgsim-hl-row, .cfgsim-hl-col, .cfgsim-hl-cell");
        for (var i = 0; i < lit.length; i++) lit[i].classList.remove("cfgsim-hl-row", "cfgsim-hl-col", "cfgsim-hl-cell");
    }

    function highlight(table, cell) {
        clearHighlight(table);
        var row = cell.parentNode;
        var col = cell.getAttribute("data-cfgsim-col");
        for (var i = 0; i < row.cells.length; i++) row.cells[i].classList.add("cfgsim-hl-row");
        if (col !== null && col !== "-1") {
            var column = table.querySelectorAll('[data-cfgsim-col="' + col + '"]');
            for (var j = 0; j < column.length; j++) column[j].classList.add("cfgsim-hl-col");
        }
        cell.classList.add("cfgsim-hl-cell");
    }

    // A spreadsheet runs a cell that starts with = + - @ (or a tab or CR before them) as a formula
    // ("CSV injection"); checkpoint names come from file names anyone can choose. Such text gets a
    // leading apostrophe, which spreadsheets show as text. Plain numbers (a negative score) stay.
    var NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i;

    function csvField(text) {
        if (/^[=+\-@\t\r]/.test(text) && !NUMBER.test(text)) text = "'" + text;
        return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
    }

    // The table as CSV in its current (sorted) order; scores at full stored precision.
    function toCsv(table) {
        var lines = [];
        var rows = table.querySelectorAll("tr");
        for (var i = 0; i < rows.length; i++) {
            var fields = [];
            for (var j = 0; j < rows[i].cells.length; j++) {
                var cell = rows[i].cells[j];
                var raw = cell.getAttribute("data-cfgsim-value");
                var text = cell.textContent.trim();
                // A score: its stored value; no score: empty, unless the cell says why ("reference").
                if (raw) text = raw;
                else if (raw !== null && text === "\u2014") text = "";
                fields.push(csvField(text));
            }
            lines.push(fields.join(","));
        }
        return lines.join("\r\n") + "\r\n";
    }

    function fallbackCopy(text, doc) {
        var area = doc.createElement("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.className = "cfgsim-copy-buffer";
        doc.body.appendChild(area);
        area.select();
        var ok = false;
        try {
            ok = doc.execCommand("copy");
        } catch (e) {
            ok = false;
        }
        doc.body.removeChild(area);
        return ok;
    }

    function copyCsv(table, button) {
        var text = toCsv(table);
        cfgsim.lastCsv = text;
        var done = function(ok) {
            if (!button) return;
            button.textContent = ok ? "Copied" : "Copy failed: select the table";
            setTimeout(function() {
                button.textContent = "Copy as CSV";
            }, 1500);
        };
        var doc = table.ownerDocument;
        if (navigator.clipboard && navigator.clipboard.writeText) {
            navigator.clipboard.writeText(text).then(function() {
                done(true);
            }, function() {
                done(fallbackCopy(text, doc));
            });
        } else {
            done(fallbackCopy(text, doc));
        }
        return text;
    }

    function enhanceTable(table) {
        if (table.dataset.cfgsimEnhanced) return;
        table.dataset.cfgsimEnhanced = "1";
        colour(table);
        if (table.tHead) {
            table.tHead.addEventListener("click", function(event) {
                var th = event.target.closest("th[data-cfgsim-col]");
                if (th) sortTable(table, th.getAttribute("data-cfgsim-col"));
            });
        }
        table.addEventListener("mouseover", function(event) {
            var cell = event.target.closest("td, th");
            if (cell && table.contains(cell) && cell.parentNode.parentNode !== table.tHead) highlight(table, cell);
        });
        table.addEventListener("mouseleave", function() {
            clearHighlight(table);
        });
        var wrap = table.closest(".cfgsim-table-wrap");
        var button = wrap ? wrap.querySelector(".cfgsim-copy") : null;
        if (button) {
            button.addEventListener("click", function() {
                copyCsv(table, button);
            });
        }
    }

    // -- hints -----------------------------------------------------------------------------------------------

    function applyHints(scope) {
        var carriers = scope.querySelectorAll(".cfgsim-hints[data-cfgsim-hints]");
        for (var i = 0; i < carriers.length; i++) {
            var el = carriers[i];
            if (el.dataset.cfgsimApplied) continue;
            var hints;
            try {
                hints = JSON.parse(el.getAttribute("data-cfgsim-hints"));
            } catch (e) {
                continue;
            }
            el.dataset.cfgsimApplied = "1";
            // The WebUI's hints.js reads the global `titles` (label text → hint) for every label it
            // sees, also those of components shown later: extend it when it exists.
            if (typeof titles === "object" && titles !== null) {
                for (var label in hints.labels) {
                    if (!(label in titles)) titles[label] = hints.labels[label];
                }
            }
            cfgsim.hints = hints.labels;
            for (var id in hints.ids) {
                var target = scope.querySelector("#" + CSS.escape(id));
                if (target && !target.title) target.title = hints.ids[id];
            }
        }
    }

    // -- entry points -----------------------------------------------------------------------------------------

    function update(scope) {
        scope = scope || root();
        if (!scope || !scope.querySelectorAll) return;
        renderEscaped(scope);
        var tables = scope.querySelectorAll("table.cfgsim-table");
        for (var i = 0; i < tables.length; i++) enhanceTable(tables[i]);
        applyHints(scope);
    }

    var cfgsim = {
        lastCsv: null,
        hints: null,
        update: update,
        sanitize: sanitize,
        sortTable: sortTable,
        toCsv: toCsv,
        copyCsv: copyCsv,
        csvField: csvField,
        scaleOf: scaleOf,
        colour: colour,
    };
    window.cfgsim = cfgsim;

    var hooked = false;
    if (typeof onUiLoaded === "function") {
        onUiLoaded(function() {
            update();
        });
        hooked = true;
    }
    if (typeof onAfterUiUpdate === "function") {
        onAfterUiUpdate(function() {
            update();
        });
        hooked = true;
    }
    if (!hooked) {
        // A plain page (tests, a saved report): no WebUI hooks, so run when the document is ready.
        if (document.readyState === "loading") {
            document.addEventListener("DOMContentLoaded", function() {
                update(document);
            });
        } else {
            update(document);
        }
    }
})();
