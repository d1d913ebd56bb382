"""The weight-space view: what a checkpoint is made of, read from its weights (no generation).

One job per module: :mod:`.keys` (tensor names → component, canonical name, merge block),
:mod:`.source` (reading files a slice at a time), :mod:`.gram` (the one streaming pass: per-block
Gram matrices and fingerprints), :mod:`.identity` (identical / up to precision / different, groups),
:mod:`.recipe` (weighted-sum and add-difference recipes from the Gram matrices), :mod:`.report`
(the report, its ProbeResult, text, JSON and CSV), :mod:`.commands` (``cfgsim weights``).

Needs torch and safetensors (the ``standalone`` extra); nothing here imports the WebUI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cfgsim.weights.keys import COMPONENT_NAMES, COMPONENTS
from cfgsim.weights.source import ARCH_NAMES, WeightsInputError, checkpoint_files, open_source

if TYPE_CHECKING:
    from cfgsim.weights.recipe import Recipe
    from cfgsim.weights.report import WeightsReport

__all__ = ["WeightsInputError", "WeightsReport", "compare_checkpoints"]

#: progress(fraction done 0-1, what is being read)
ProgressCallback = Callable[[float, str], None]


def compare_checkpoints(
    paths: Sequence[str | os.PathLike[str]],
    *,
    reference: str | os.PathLike[str] | int | None = None,
    base: str | os.PathLike[str] | None = None,
    vae_dir: str | os.PathLike[str] | None = None,
    recipe_target: str | os.PathLike[str] | None = None,
    recipe_parents: Sequence[str | os.PathLike[str]] | None = None,
    labels: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    budget: int | None = None,
) -> WeightsReport:
    """Compare checkpoints by their weights: identity, per-block similarity, recipes.

        ``paths``: checkpoint files (``.safetensors``, ``.ckpt``) or diffusers folders. ``reference``
        (a path among them or an index): the heatmaps mark it, and every other checkpoint's recipe is
        solved in terms of the reference and the rest. ``base``: also compare the differences from this
        checkpoint (it need not be among ``paths``). ``vae_dir``: VAE files to name the VAEs by.
        ``recipe_target`` / ``recipe_parents``: one recipe with given parents (no parents: the best
        small set among the other checkpoints). ``progress(fraction, what)`` is called after every
    tensor; it may raise to stop the pass (the WebUI's interrupt): the exception propagates, every
    file is closed.

        Raises :class:`WeightsInputError` (one line naming the file and the reason) for a file that
        cannot be compared.
    """
    from cfgsim.weights.gram import DEFAULT_BUDGET, gram_pass
    from cfgsim.weights.identity import identities
    from cfgsim.weights.report import SourceInfo, WeightsReport

    if len(paths) < 1:
        raise WeightsInputError("weights: give at least one checkpoint")
    if labels is not None and len(labels) != len(paths):
        raise WeightsInputError(f"weights: {len(labels)} labels for {len(paths)} checkpoints")
    resolved = [Path(p) for p in paths]
    sources = [open_source(p, label=None if labels is None else labels[i]) for i, p in enumerate(resolved)]
    _unique_labels(sources)
    items = list(range(len(sources)))

    def index_of(path: str | os.PathLike[str] | int, what: str, *, add: bool) -> int:
        if isinstance(path, int):
            if not 0 <= path < len(items):
                raise WeightsInputError(f"weights: {what} index {path} is out of range (0-{len(items) - 1})")
            return path
        p = Path(path)
        for i, q in enumerate(resolved):
            if _same(p, q) or str(path) == sources[i].label:
                return i
        if not add:
            raise WeightsInputError(f"{p}: the {what} must be one of the compared checkpoints")
        sources.append(open_source(p))
        resolved.append(p)
        _unique_labels(sources)
        return len(sources) - 1

    ref = None if reference is None else index_of(reference, "reference", add=False)
    base_i = None if base is None else index_of(base, "base", add=True)
    if base_i is not None and base_i not in items:
        items.append(base_i)
    target = None if recipe_target is None else index_of(recipe_target, "recipe target", add=True)
    if target is not None and target not in items:
        items.append(target)
    parents = [index_of(p, "parent", add=True) for p in recipe_parents or ()]
    for p in parents:
        if p not in items:
            items.append(p)
    if vae_dir is not None:
        for f in checkpoint_files(vae_dir):
            sources.append(open_source(f, vae_only=True))
        _unique_labels(sources)

    fraction = None
    if progress is not None:

        def fraction(done: int, total: int, what: str) -> None:
            progress(done / total if total else 1.0, what)

    gp = gram_pass(sources, base=base_i, budget=budget or DEFAULT_BUDGET, progress=fraction)
    notes = _architecture_notes(sources, items, gp)
    pairs = identities(sources, gp, progress=None if progress is None else (lambda what: progress(1.0, what)))
    infos = [
        SourceInfo(
            label=s.label,
            path=str(s.path),
            architecture=s.architecture,
            layout=s.layout,
            components={
                c: {
                    "fingerprint": gp.fingerprint[(i, c)],
                    "exact": gp.exact[(i, c)],
                    "dtypes": gp.dtypes[(i, c)],
                }
                for c in COMPONENTS
                if (i, c) in gp.fingerprint
            },
            set_aside=dict(s.set_aside),
            vae_only=s.vae_only,
        )
        for i, s in enumerate(sources)
    ]
    report = WeightsReport(infos, items, gp, pairs, reference=ref, base=base_i, notes=notes)
    if target is not None:
        candidates = parents or [i for i in items if i not in (target, base_i)]
        report.recipes += _recipes(report, target, candidates, search=not parents)
    elif ref is not None:
        for t in items:
            if t in (ref, base_i):
                continue
            candidates = [i for i in items if i not in (t, base_i)]
            report.recipes += _recipes(report, t, candidates, search=True, required=[ref])
    return report


def _recipes(
    report: WeightsReport, target: int, candidates: list[int], *, search: bool, required: Sequence[int] = ()
) -> list[Recipe]:
    from cfgsim.weights import recipe as rc

    gp = report.gram
    out = []
    for component in report.components():
        usable = [c for c in candidates if gp.comparable(target, c, component)]
        if not gp.comparable(target, target, component) or not usable:
            continue
        if not search and len(usable) < len(candidates):
            missing = [report.labels[c] for c in candidates if c not in usable]
            report.notes.append(
                f"recipe of {report.labels[target]}: {COMPONENT_NAMES[component]} not solved "
                f"({', '.join(missing)} has no comparable {COMPONENT_NAMES[component]})"
            )
            continue
        # Differences from the group's anchor: the same recipes (they are affine), better conditioned.
        blocks = [b for b in gp.component_blocks(component) if b in gp.anchored]
        grams = {b: gp.anchored[b] for b in blocks}
        norms = {b: float(max(gp.gram[b][target, target], 0.0)) ** 0.5 for b in blocks}
        if search:
            out.append(rc.search(grams, norms, target, usable, component, required=required))
        else:
            out.append(rc.solve(grams, norms, target, usable, component))
    return out


def _architecture_notes(sources, items: Sequence[int], gp) -> list[str]:
    """What was not compared and why: mixed architectures, components a file lacks."""
    notes = []
    archs = {sources[i].architecture for i in items}
    if len(archs) > 1:
        kinds = ", ".join(
            f"{sources[i].label} ({ARCH_NAMES.get(sources[i].architecture, sources[i].architecture)})"
            for i in items
        )
        compared, not_compared = [], []
        for c in COMPONENTS:
            holders = [i for i in items if (i, c) in gp.group]
            if not holders:
                continue
            groups = {gp.group[(i, c)] for i in holders}
            (compared if len(groups) == 1 and len(holders) == len(items) else not_compared).append(
                COMPONENT_NAMES[c]
            )
        notes.append(
            f"mixed architectures: {kinds}. Each component is compared only between files whose "
            f"component has the same tensors; compared across all: {', '.join(compared) or 'none'}; "
            f"not across all: {', '.join(not_compared) or 'none'}"
        )
    for i in items:
        s = sources[i]
        missing = [COMPONENT_NAMES[c] for c in ("unet", "text", "vae") if c not in s.components()]
        if missing and s.architecture != "vae":
            notes.append(f"{s.label}: no {', no '.join(missing)} in the file (compared on the rest)")
    return notes


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _unique_labels(sources) -> None:
    seen: dict[str, int] = {}
    for s in sources:
        key = s.label
        if key in seen:
            seen[key] += 1
            s.label = f"{key}-{seen[key]}"
        else:
            seen[key] = 1


def __getattr__(name: str):
    if name == "WeightsReport":
        from cfgsim.weights.report import WeightsReport

        return WeightsReport
    raise AttributeError(name)
