"""The weight-space comparison as a report: identity, similarity, recipes, and a ProbeResult.

:class:`WeightsReport` holds the numbers; :meth:`WeightsReport.result` is a
:class:`cfgsim.result.ProbeResult` whose ``scores`` are "weights" metrics (one row each, no
images: ``weights-unet``, ``weights-text``, ``weights-vae`` and, with a base, ``…-delta``), so the
heatmap renderer, the CSV writer and the lineage tree work on it as on image scores.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cfgsim.weights.gram import GramPass
from cfgsim.weights.identity import Identity, group_lines
from cfgsim.weights.keys import COMPONENT_NAMES, COMPONENTS
from cfgsim.weights.recipe import Recipe
from cfgsim.weights.source import ARCH_NAMES

if TYPE_CHECKING:
    from PIL import Image

    from cfgsim.result import ProbeResult

METRIC_PREFIX = "weights-"
SCHEMA = "cfgsim.weights-report"
SCHEMA_VERSION = 1


@dataclass
class SourceInfo:
    label: str
    path: str
    architecture: str
    layout: str
    components: dict[str, dict[str, object]]  # component → {fingerprint, exact, dtypes}
    set_aside: dict[str, int]
    vae_only: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "path": self.path,
            "architecture": self.architecture,
            "layout": self.layout,
            "components": self.components,
            "set_aside": self.set_aside,
            "vae_only": self.vae_only,
        }


@dataclass
class Agreement:
    """Rank agreement of a weights metric with an image metric over the pairs both compared."""

    weights_metric: str
    image_metric: str
    rho: float
    p_value: float
    pairs: int

    def line(self) -> str:
        return (
            f"{self.weights_metric} vs {self.image_metric}: "
            f"Spearman ρ = {self.rho:.3f} over {self.pairs} pairs"
            f" (p = {self.p_value:.3g})"
        )


@dataclass
class WeightsReport:
    """Everything :func:`cfgsim.weights.compare_checkpoints` found. Indices refer to ``sources``."""

    sources: list[SourceInfo]
    items: list[int]  # the compared checkpoints (files from a VAE folder are identity-only)
    gram: GramPass
    identities: list[Identity]
    recipes: list[Recipe] = field(default_factory=list)
    reference: int | None = None
    base: int | None = None
    notes: list[str] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    _result: ProbeResult | None = field(default=None, repr=False)

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sources]

    # -- numbers ----------------------------------------------------------------------------------

    def components(self) -> list[str]:
        return [c for c in COMPONENTS if self.gram.component_blocks(c)]

    def matrix(self, component: str, *, kind: str = "cosine", delta: bool = False) -> np.ndarray:
        """The items' N×N cosine (or ``kind="relative_l2"``) matrix of ``component`` (NaN: not compared)."""
        n = len(self.items)
        stats = self.gram.stats(self.gram.component_blocks(component), delta=delta)
        if stats is None:
            return np.full((n, n), np.nan)
        m = stats[0] if kind == "cosine" else stats[1]
        return m[np.ix_(self.items, self.items)]

    def block_profile(self, a: int, b: int, *, kind: str = "cosine", delta: bool = False) -> dict[str, float]:
        """Per-block cosine (or relative L2) of sources ``a`` and ``b``: {block: value}."""
        out = {}
        for block in self.gram.blocks:
            stats = self.gram.stats([block], delta=delta)
            if stats is not None:
                out[block] = float((stats[0] if kind == "cosine" else stats[1])[a, b])
        return out

    def overall(self, a: int, b: int) -> tuple[float, float]:
        """(cosine, relative L2) of the whole model (every component both files have in common)."""
        blocks = [blk for blk, c in self.gram.blocks.items() if self.gram.comparable(a, b, c)]
        stats = self.gram.stats(blocks) if blocks else None
        return (math.nan, math.nan) if stats is None else (float(stats[0][a, b]), float(stats[1][a, b]))

    # -- the shared result machinery ---------------------------------------------------------------

    def result(self) -> ProbeResult:
        """The comparison as a ProbeResult ("weights" metrics, one row, no images) with its lineage."""
        if self._result is None:
            self._result = self._build_result()
        return self._result

    def _build_result(self) -> ProbeResult:
        from cfgsim.host import Checkpoint
        from cfgsim.lineage import analyse
        from cfgsim.result import MetricScores, ProbeResult, Reference
        from cfgsim.spec import ProbeSpec
        from cfgsim.standalone.checkpoint import legacy_model_hash

        items = []
        for i in self.items:
            s = self.sources[i]
            try:
                model_hash = legacy_model_hash(s.path) if not s.path.endswith("/") else None
            except OSError:
                model_hash = None
            items.append(
                Checkpoint(
                    name=s.path,
                    label=s.label,
                    file=s.path,
                    model_hash=model_hash,
                    architecture=s.architecture,
                )
            )
        ref_pos = self.items.index(self.reference) if self.reference in self.items else None
        reference = (
            Reference(
                kind="item",
                index=ref_pos,
                label=self.sources[self.reference].label,
                file=self.sources[self.reference].path,
            )
            if ref_pos is not None and self.reference is not None
            else Reference()
        )
        scores = {}
        for component in self.components():
            for delta in (False, True) if self.base is not None else (False,):
                m = self.matrix(component, delta=delta)
                if np.isfinite(m).sum() - np.isfinite(np.diag(m)).sum() == 0:
                    continue  # no pair compared
                name = f"{METRIC_PREFIX}{component}{'-delta' if delta else ''}"
                what = COMPONENT_NAMES[component]
                label = f"Weights: {what}" + (f" − {self.sources[self.base].label}" if delta else "")
                description = (
                    f"cosine similarity of the {what} weights"
                    + (f" minus those of {self.sources[self.base].label} (the base)" if delta else "")
                    + ", all blocks; 1.0 = identical"
                )
                vs = (
                    None
                    if ref_pos is None
                    else [np.where(np.arange(len(items)) == ref_pos, np.nan, m[ref_pos])]
                )
                scores[name] = MetricScores(name, label, description, per_row=[m], vs_reference=vs)
        result = ProbeResult(
            spec=ProbeSpec(),
            items=items,
            rows=[0],
            row_axis="",
            reference=reference,
            scores=scores,
            host="cfgsim weights",
            environment={"source": "checkpoint weights (no images)"},
            kind="weights",
        )
        if scores:
            metric = next((k for k in scores if k.endswith("-delta") and "unet" in k), None) or next(
                iter(scores)
            )
            result.lineage = analyse(result, metric)
        return result

    # -- text, JSON, CSV, pictures ----------------------------------------------------------------

    def identity_lines(self) -> list[str]:
        return group_lines(self.labels, self.identities, items=self.items)

    def recipe_lines(self) -> list[str]:
        return [f"{COMPONENT_NAMES[r.component]}: {r.summary(self.labels)}" for r in self.recipes]

    def text(self) -> str:
        """The report for a terminal or the WebUI's HTML box (plain text)."""
        lines = []
        size = self.gram.bytes_read / 1e9
        lines.append(
            f"cfgsim weights: {len(self.items)} checkpoints, "
            f"{size:.2f} GB of weights read once in {self.gram.seconds:.1f} s"
        )
        for s in (self.sources[i] for i in self.items):
            comps = ", ".join(
                f"{COMPONENT_NAMES[c]} {info['fingerprint']} ({'/'.join(info['dtypes'])})"  # type: ignore[arg-type]
                for c, info in s.components.items()
            )
            aside = ", ".join(f"{n} {k}" for k, n in s.set_aside.items())
            lines.append(
                f"  {s.label}: {ARCH_NAMES.get(s.architecture, s.architecture)}, {s.layout}; {comps}"
                + (f"; set aside: {aside}" if aside else "")
            )
        lines.append("Fingerprints: sha256 of names, shapes and values at float16 precision (first 16 hex).")
        lines.append("Identity:")
        lines += ["  " + x for x in self.identity_lines()] or ["  no two files share a component"]
        labels = [self.sources[i].label for i in self.items]
        for _name, scores in self.result().scores.items():
            lines.append(f"{scores.label} (cosine; 1.0 = identical):")
            lines += ["  " + x for x in _table(labels, scores.per_row[0])]
        if self.recipes:
            lines.append("Recipes:")
            lines += ["  " + x for x in self.recipe_lines()]
        if self.agreements:
            lines.append("Agreement with the image probe (rank correlation over pairs):")
            lines += ["  " + a.line() for a in self.agreements]
        lineage = self.result().lineage
        if lineage is not None and lineage.newick:
            lines.append(f"Family tree ({lineage.metric}): {lineage.newick}")
        if self.notes:
            lines.append("Notes:")
            lines += ["  " + n for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        labels = self.labels
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "sources": [s.to_dict() for s in self.sources],
            "items": [labels[i] for i in self.items],
            "reference": None if self.reference is None else labels[self.reference],
            "base": None if self.base is None else labels[self.base],
            "blocks": dict(self.gram.blocks),
            "bytes_read": self.gram.bytes_read,
            "seconds": round(self.gram.seconds, 3),
            "identity": {
                "groups": self.identity_lines(),
                "pairs": [dict(p.to_dict(), a=labels[p.a], b=labels[p.b]) for p in self.identities],
            },
            "matrices": {
                c: {
                    "cosine": _json(self.matrix(c)),
                    "relative_l2": _json(self.matrix(c, kind="relative_l2")),
                }
                for c in self.components()
            },
            "per_block": {
                f"{labels[a]}|{labels[b]}": {k: _num(v) for k, v in self.block_profile(a, b).items()}
                for x, a in enumerate(self.items)
                for b in self.items[x + 1 :]
            },
            "recipes": [r.to_dict(labels) for r in self.recipes],
            "agreement": [a.__dict__ for a in self.agreements],
            "notes": list(self.notes),
            "result": self.result().to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1, allow_nan=False)

    def to_csv(self) -> str:
        """One row per pair and block: cosine and relative L2 (and of the differences from the base)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["a", "b", "component", "block", "cosine", "relative_l2", "cosine_delta", "relative_l2_delta"]
        )
        labels = self.labels
        for x, a in enumerate(self.items):
            for b in self.items[x + 1 :]:
                cos, rel = self.block_profile(a, b), self.block_profile(a, b, kind="relative_l2")
                dcos = self.block_profile(a, b, delta=True) if self.base is not None else {}
                drel = (
                    self.block_profile(a, b, kind="relative_l2", delta=True) if self.base is not None else {}
                )
                for block, component in self.gram.blocks.items():
                    if block in cos and math.isfinite(cos[block]):
                        writer.writerow(
                            [labels[a], labels[b], component, block, _fmt(cos[block]), _fmt(rel.get(block)),
                             _fmt(dcos.get(block)), _fmt(drel.get(block))]
                        )  # fmt: skip
        return buffer.getvalue()

    def images(self) -> dict[str, Image.Image]:
        """The pictures: one heatmap per weights metric, the family tree, the per-block charts."""
        from cfgsim.render.blocks import render_block_chart
        from cfgsim.render.dendrogram import render_dendrogram
        from cfgsim.render.heatmap import render_heatmap

        result = self.result()
        out: dict[str, Image.Image] = {}
        if len(result.items) >= 2:
            ordered = result.reordered(result.tree_order()) if result.lineage is not None else result
            if ordered.lineage is not None and len(ordered.lineage.items) >= 3:
                out["tree"] = render_dendrogram(ordered)
            for name in ordered.scores:
                out[f"heatmap-{name}"] = render_heatmap(ordered, name)
        anchor = self.reference if self.reference is not None else (self.items[0] if self.items else None)
        if anchor is not None and len(self.items) >= 2:
            delta = self.base is not None
            for use_delta in (False, True) if delta else (False,):
                series = {
                    self.sources[i].label: self.block_profile(anchor, i, delta=use_delta)
                    for i in self.items
                    if i != anchor and (not use_delta or i != self.base)
                }
                blocks = [b for b in self.gram.blocks if any(b in s for s in series.values())]
                if not blocks:
                    continue
                base_note = (
                    f" − {self.sources[self.base].label}" if use_delta and self.base is not None else ""
                )
                out["blocks" + ("-delta" if use_delta else "")] = render_block_chart(
                    blocks,
                    {k: [v.get(b, math.nan) for b in blocks] for k, v in series.items()},
                    title=f"Per-block weight similarity to {self.sources[anchor].label}{base_note}",
                    subtitle="cosine of each block's weights; 1.0 = identical",
                    y_label="cosine",
                )
        for r in self.recipes:
            if len(r.blocks) < 2:
                continue
            parents = r.overall.parents
            blocks = list(r.blocks)
            if r.overall.kind == "add difference":
                series = {"α": [r.blocks[b].coefficients[0] for b in blocks]}
            else:
                series = {
                    self.labels[p]: [
                        r.blocks[b].coefficients[r.blocks[b].parents.index(p)]
                        if p in r.blocks[b].parents
                        else 0.0
                        for b in blocks
                    ]
                    for p in parents
                }
            out[f"recipe-{self.labels[r.target]}-{r.component}"] = render_block_chart(
                blocks,
                series,
                title=f"Recipe of {self.labels[r.target]} ({COMPONENT_NAMES[r.component]}) per block",
                subtitle=r.summary(self.labels),
                y_label="coefficient",
                residuals=[r.blocks[b].residual for b in blocks],
            )
        return out

    # -- agreement with the image probe -------------------------------------------------------------

    def agree_with(self, image_result: ProbeResult) -> list[Agreement]:
        """Spearman rank correlation, over the pairs of checkpoints both results hold, between each
        weights metric and the image result's first metric (its mean over seeds)."""
        from scipy.stats import spearmanr

        if not image_result.scores:
            raise ValueError("the image result holds no scores")
        image_metric = next(iter(image_result.scores))
        image = np.asarray(image_result.scores[image_metric].mean, dtype=float)
        mine = self.result()
        pos = _match(mine.items, image_result.items)
        out = []
        for name, scores in mine.scores.items():
            w = scores.per_row[0]
            xs, ys = [], []
            keys = sorted(pos)
            for x, i in enumerate(keys):
                for j in keys[x + 1 :]:
                    a, b = w[i, j], image[pos[i], pos[j]]
                    if math.isfinite(a) and math.isfinite(b):
                        xs.append(a)
                        ys.append(b)
            if len(xs) >= 3:
                rho, p = spearmanr(xs, ys)
                out.append(Agreement(name, image_metric, float(rho), float(p), len(xs)))
        self.agreements = out
        return out


def _match(mine: Sequence, theirs: Sequence) -> dict[int, int]:
    """{my item: their item} by resolved file path, then full hash, then label."""
    from pathlib import Path

    def resolved(p: str | None) -> str | None:
        try:
            return str(Path(p).resolve()) if p else None
        except OSError:
            return None

    out = {}
    for i, item in enumerate(mine):
        for j, other in enumerate(theirs):
            if (
                (resolved(item.file) and resolved(item.file) == resolved(other.file))
                or (item.model_hash and item.model_hash == other.model_hash)
                or item.label == other.label
            ):
                out[i] = j
                break
    return out


def _table(labels: Sequence[str], m: np.ndarray) -> list[str]:
    width = min(18, max(len(x) for x in labels))
    head = " " * (width + 1) + " ".join(f"{x[:8]:>8}" for x in labels)
    rows = [head]
    for i, label in enumerate(labels):
        cells = " ".join(f"{'—':>8}" if not math.isfinite(v) else f"{v:8.4f}" for v in m[i])
        rows.append(f"{label[:width]:<{width}} {cells}")
    return rows


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _fmt(v: float | None) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.6f}"


def _json(m: np.ndarray) -> list:
    return [[_num(float(x)) for x in row] for row in m]
