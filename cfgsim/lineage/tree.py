"""The family tree: UPGMA linkage on 1 − similarity, its clades, Felsenstein's bootstrap support
over seeds, and the Newick text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfgsim.lineage.model import Clade


def _tree(mean: np.ndarray, *, ordered: bool = True) -> tuple[np.ndarray, list[int]]:
    """UPGMA linkage on 1 − similarity (leaves in optimal order unless ``ordered`` is False)."""
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    n = mean.shape[0]
    if n < 2:
        return np.zeros((0, 4)), list(range(n))
    y = squareform(_distance(mean), checks=False)
    z = hierarchy.linkage(y, method="average")
    if n >= 3 and ordered:
        z = hierarchy.optimal_leaf_ordering(z, y)
    return z, [int(i) for i in hierarchy.leaves_list(z)]


def _distance(mean: np.ndarray) -> np.ndarray:
    d = 1.0 - (mean + mean.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def _clades(z: np.ndarray, n: int) -> list[Clade]:
    members: list[tuple[int, ...]] = []
    clades: list[Clade] = []
    for left, right, dist, _count in z:
        a, b = int(left), int(right)
        m = tuple(sorted(_members(a, n, members) + _members(b, n, members)))
        members.append(m)
        # UPGMA is ultrametric: a node sits at half the average distance between its two sides.
        clades.append(Clade(members=m, height=float(dist) / 2.0, support=None, children=(a, b)))
    return clades


def _members(node: int, n: int, members: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (node,) if node < n else members[node - n]


def clade_support(
    sims: np.ndarray, clades: Sequence[Clade], *, replicates: int, rng_seed: int
) -> list[float]:
    """Fraction of seed-bootstrap trees that contain each clade (Felsenstein's bootstrap)."""
    n_rows, n = sims.shape[0], sims.shape[1]
    rng = np.random.default_rng(rng_seed)
    wanted = [frozenset(c.members) for c in clades]
    counts = np.zeros(len(clades))
    for _ in range(replicates):
        idx = rng.integers(0, n_rows, size=n_rows)
        z, _order = _tree(sims[idx].mean(axis=0), ordered=False)  # clades do not depend on order
        found = {frozenset(c.members) for c in _clades(z, n)}
        counts += [w in found for w in wanted]
    return [float(c) / replicates for c in counts]


def _smallest_clade(clades: Sequence[Clade], a: int, b: int) -> Clade | None:
    best = None
    for clade in clades:
        if (
            a in clade.members
            and b in clade.members
            and (best is None or len(clade.members) < len(best.members))
        ):
            best = clade
    return best


def to_newick(clades: Sequence[Clade], labels: Sequence[str], n: int) -> str:
    """The tree as Newick: branch lengths in 1 − similarity units, supports as internal labels (%).

    Leaves sit at height 0 and each clade at half its UPGMA merge distance (an ultrametric tree).
    """
    if n == 0:
        return ";"
    if n == 1:
        return f"{_newick_label(labels[0])};"

    def height(node: int) -> float:
        return 0.0 if node < n else clades[node - n].height

    def write(node: int, parent_height: float | None) -> str:
        if node < n:
            text = _newick_label(labels[node])
        else:
            clade = clades[node - n]
            inner = ",".join(write(child, clade.height) for child in clade.children)
            text = f"({inner})"
            if parent_height is not None and clade.support is not None:
                text += str(round(clade.support * 100))
        if parent_height is not None:
            text += f":{max(0.0, parent_height - height(node)):.6f}"
        return text

    return write(n + len(clades) - 1, None) + ";"


_NEWICK_SPECIAL = set(" \t\n()[]':;,")


def _newick_label(label: str) -> str:
    if label and not (set(label) & _NEWICK_SPECIAL):
        return label
    return "'" + label.replace("'", "''") + "'"
