"""The values of a WebUI X/Y plot axis, as its infotext states them (``X Values: "a, b"``), so a
grid cut by :mod:`cfgsim.splitgrid` can name its cells."""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from cfgsim.infotext import Infotext

_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")


def parse_axis_values(text: str) -> list[str]:
    """The values of an X/Y plot axis as the WebUI expands them: comma-separated (CSV quoting),
    integer ranges ``1-5``, ``1-9 (+2)`` and ``1-10 [4]`` expanded."""
    values = [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row]
    out: list[str] = []
    for value in values:
        if not value:
            continue
        m = _RANGE.fullmatch(value)
        mc = _RANGE_COUNT.fullmatch(value)
        if m:
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", ""))
            step = int(m.group(3)) if m.group(3) else 1
            if step and (end - start) / step <= 10_000:
                out.extend(str(v) for v in range(start, end + 1, step))
                continue
        elif mc:
            start, end, num = (
                int(mc.group(1).replace(" ", "")),
                int(mc.group(2).replace(" ", "")),
                int(mc.group(3)),
            )
            if 0 < num <= 10_000:
                out.extend(str(int(v)) for v in np.linspace(start, end, num))
                continue
        out.append(value)
    return out


def axis_values_from_infotext(
    infotext: str | None, rows: int, cols: int
) -> tuple[list[str] | None, list[str] | None] | None:
    """(x values, y values) named by an X/Y plot grid's infotext, or None when it names neither.

    A WebUI X/Y plot grid carries its first cell's infotext plus ``Script``, ``X Type``,
    ``X Values`` (and ``Fixed X Values`` for seeds: the seeds actually used). A list whose length
    does not match the grid is not used (it would label the wrong cells).
    """
    if not infotext:
        return None
    params = Infotext.parse(infotext).params
    if not any(key in params for key in ("X Values", "Y Values", "Fixed X Values", "Fixed Y Values")):
        return None
    found: list[list[str] | None] = []
    for axis, count in (("X", cols), ("Y", rows)):
        raw = params.get(f"Fixed {axis} Values") or params.get(f"{axis} Values")
        values = parse_axis_values(raw) if raw else None
        found.append(values if values is not None and len(values) == count else None)
    if found[0] is None and found[1] is None:
        return None
    return found[0], found[1]
