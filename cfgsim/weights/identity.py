"""Component identity: which files carry the same UNet, text encoder or VAE.

Three verdicts per pair and component:

* ``identical`` — the same values at the files' own precision (equal exact fingerprints);
* ``identical up to precision`` — equal at float16 precision (an fp32 file and its fp16 copy), or,
  checked value by value, every value within the rounding of the coarser storage (a bf16 copy:
  |a − b| ≤ 2⁻⁸·max(|a|, |b|) + 1e-7 for every value; bf16 keeps 8 significant bits);
* ``different`` — anything else, with the largest absolute difference and the cosine.

The value-by-value check reads only pairs whose Gram distance is already below
:data:`CANDIDATE_DISTANCE` of their norm, so it costs nothing in the usual case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from cfgsim.weights.gram import GramPass
from cfgsim.weights.keys import COMPONENT_NAMES, COMPONENTS
from cfgsim.weights.source import Source

IDENTICAL, UP_TO_PRECISION, DIFFERENT = "identical", "identical up to precision", "different"
#: Pairs closer than this (relative L2) are checked value by value.
CANDIDATE_DISTANCE = 1e-2
#: bf16 keeps 8 significant bits: two roundings of one value differ by at most 2⁻⁸ of it.
RELATIVE_TOLERANCE = 2.0**-8
ABSOLUTE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class Identity:
    """The verdict on one component of one pair of files."""

    a: int
    b: int
    component: str
    verdict: str
    cosine: float
    relative_l2: float
    max_abs_diff: float | None = None  # measured value by value (only for close pairs)
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "component": self.component,
            "verdict": self.verdict,
            "cosine": _num(self.cosine),
            "relative_l2": _num(self.relative_l2),
            "max_abs_diff": _num(self.max_abs_diff),
            "detail": self.detail,
        }


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 9)


def compare_values(a: Source, b: Source, component: str, *, rows: int = 1 << 20) -> tuple[float, float]:
    """(largest |a − b|, largest |a − b| / tolerance) over every value of ``component`` in both files."""
    import torch

    worst_abs, worst_ratio = 0.0, 0.0
    for e in a.component_entries(component):
        f = b.entries[e.name]
        n_rows = e.shape[0] if e.shape else 1
        step = max(1, rows // max(1, e.numel // max(1, n_rows)))
        for start in range(0, n_rows, step):
            x = a.read(e, start, min(n_rows, start + step)).to(torch.float32)
            y = b.read(f, start, min(n_rows, start + step)).to(torch.float32)
            diff = (x - y).abs()
            if diff.numel():
                worst_abs = max(worst_abs, float(diff.max()))
                tol = RELATIVE_TOLERANCE * torch.maximum(x.abs(), y.abs()) + ABSOLUTE_TOLERANCE
                worst_ratio = max(worst_ratio, float((diff / tol).max()))
    a.close()
    b.close()
    return worst_abs, worst_ratio


def identities(
    sources: Sequence[Source], gp: GramPass, *, progress: Callable[[str], None] | None = None
) -> list[Identity]:
    """The verdict on every compared pair and component (see the module docstring)."""
    out = []
    for component in COMPONENTS:
        stats = gp.stats(gp.component_blocks(component))
        if stats is None:
            continue
        cos, rel = stats
        n = len(sources)
        for a in range(n):
            for b in range(a + 1, n):
                if not gp.comparable(a, b, component):
                    continue
                key_a, key_b = (a, component), (b, component)
                max_abs, detail = None, ""
                if gp.exact[key_a] == gp.exact[key_b]:
                    verdict = IDENTICAL
                elif gp.fingerprint[key_a] == gp.fingerprint[key_b]:
                    verdict = UP_TO_PRECISION
                    detail = "equal at float16 precision"
                elif np.isfinite(rel[a, b]) and rel[a, b] < CANDIDATE_DISTANCE:
                    if progress is not None:
                        progress(
                            f"checking {sources[a].label} vs {sources[b].label} ({component}) value by value"
                        )
                    max_abs, ratio = compare_values(sources[a], sources[b], component)
                    if ratio <= 1.0:
                        verdict = UP_TO_PRECISION
                        kinds = "/".join(sorted(set(gp.dtypes[key_a]) | set(gp.dtypes[key_b])))
                        detail = f"every value within bf16 rounding ({kinds} storage)"
                    else:
                        verdict = DIFFERENT
                        detail = (
                            f"close but not a copy (a value differs by {ratio:.1f}× the rounding tolerance)"
                        )
                else:
                    verdict = DIFFERENT
                out.append(
                    Identity(a, b, component, verdict, float(cos[a, b]), float(rel[a, b]), max_abs, detail)
                )
    return out


def groups(n: int, pairs: Sequence[Identity], component: str) -> list[list[int]]:
    """Sets of files sharing ``component`` (identical or up to precision), two files or more each."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        if p.component == component and p.verdict != DIFFERENT:
            parent[find(p.a)] = find(p.b)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]


def group_lines(labels: Sequence[str], pairs: Sequence[Identity], *, items: Sequence[int]) -> list[str]:
    """Human-readable identity groups, e.g. "UNet: a = b = c (identical up to precision)"."""
    lines = []
    for component in COMPONENTS:
        for members in groups(len(labels), pairs, component):
            verdicts = {
                p.verdict for p in pairs if p.component == component and p.a in members and p.b in members
            }
            kind = IDENTICAL if verdicts == {IDENTICAL} else "identical or up to precision"
            if verdicts == {UP_TO_PRECISION}:
                kind = UP_TO_PRECISION
            inside = [labels[i] for i in members if i in items]
            outside = [labels[i] for i in members if i not in items]
            if inside and outside:
                lines.append(
                    f"{COMPONENT_NAMES[component]}: {' = '.join(inside)} — identical to "
                    f"{', '.join(outside)} ({kind})"
                )
            elif len(inside) > 1:
                lines.append(f"{COMPONENT_NAMES[component]}: {' = '.join(inside)} ({kind})")
    return lines
