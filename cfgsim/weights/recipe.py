"""Merge recipes from Gram matrices: which combination of parents best explains a target.

Two merge kinds, as the WebUI's checkpoint merger makes them:

* **weighted sum** — ``t ≈ Σ wᵢ·pᵢ`` with ``wᵢ ≥ 0`` and ``Σ wᵢ = 1`` (two parents: "(1 − α)·A + α·B"),
  solved with :func:`scipy.optimize.minimize` (SLSQP: the bounds and the equality constraint);
* **add difference** — ``t ≈ A + α·(B − C)``, α unconstrained, solved with
  :func:`scipy.linalg.lstsq` for each choice of A among the three.

Everything is computed from inner products only: the Gram matrix of {target, parents} is the
Gram matrix of its own eigen-embedding (``G = V Λ Vᵀ`` → vectors ``V √Λ``), so the least-squares
problems run in k + 1 dimensions instead of a billion. When the Gram of differences from a base
is available it is used (the same affine recipes, without the cancellation of large norms).

Residual: ``||t − fit|| / ||t||``. The verdict compares the residual with the distance from the
target to its nearest parent: a recipe that removes less than :data:`EXPLAINED` of that distance
does not explain the target ("not explained by these parents").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: A recipe explains the target when its residual is at most this fraction of the distance to the
#: nearest parent (a fine-tune of a merge stays in between).
EXPLAINED = 0.3
#: A target this close to a parent (relative L2) is that parent's copy: bf16 storage alone moves
#: weights by about 1e-3 of their norm.
COPY_DISTANCE = 2e-3
WEIGHTED_SUM, ADD_DIFFERENCE, COPY = "weighted sum", "add difference", "copy"


@dataclass
class Fit:
    """One recipe for one block (or a whole component)."""

    kind: str
    parents: list[int]
    coefficients: list[float]
    residual: float  # ||t − fit|| / ||t||
    nearest_distance: float  # ||t − nearest parent|| / ||t||
    explained: bool

    @property
    def remaining(self) -> float:
        """The residual as a fraction of the distance to the nearest parent (0 = fully explained)."""
        if self.nearest_distance <= 0:
            return 0.0
        return self.residual / self.nearest_distance

    def formula(self, labels: Sequence[str]) -> str:
        if self.kind == ADD_DIFFERENCE:
            a, b, c = (labels[i] for i in self.parents)
            return f"{a} + {self.coefficients[0]:.2f}·({b} − {c})"
        if self.kind == COPY:
            return f"{labels[self.parents[0]]} (a copy)"
        terms = [f"{w:.2f}·{labels[i]}" for i, w in zip(self.parents, self.coefficients, strict=True)]
        return " + ".join(terms)

    def to_dict(self, labels: Sequence[str]) -> dict[str, object]:
        return {
            "kind": self.kind,
            "parents": [labels[i] for i in self.parents],
            "coefficients": [round(float(c), 6) for c in self.coefficients],
            "residual": round(float(self.residual), 6),
            "nearest_distance": round(float(self.nearest_distance), 6),
            "explained": self.explained,
            "formula": self.formula(labels),
        }


@dataclass
class Recipe:
    """A target's recipe for one component: overall and per block.

    A block-weighted merge (each block its own ratio, as the WebUI's block-weighted mergers make)
    is not explained by one overall ratio, but every block is by its own: :attr:`explained` is true
    and :attr:`block_weighted` says which.
    """

    target: int
    component: str
    overall: Fit
    blocks: dict[str, Fit] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)  # ||target|| per block

    @property
    def block_residual(self) -> float:
        """||t − fit|| / ||t|| over the component when every block has its own coefficients."""
        if not self.blocks:
            return self.overall.residual
        num = sum((f.residual * self.norms.get(b, 0.0)) ** 2 for b, f in self.blocks.items())
        den = sum(self.norms.get(b, 0.0) ** 2 for b in self.blocks)
        return math.sqrt(num / den) if den > 0 else self.overall.residual

    @property
    def explained(self) -> bool:
        near = self.overall.nearest_distance
        return self.overall.explained or near <= 0 or self.block_residual <= EXPLAINED * near

    @property
    def block_weighted(self) -> bool:
        return self.explained and not self.overall.explained

    def summary(self, labels: Sequence[str]) -> str:
        o = self.overall
        if not self.explained:
            return (
                f"{labels[self.target]}: not explained by these parents "
                f"(best: {o.formula(labels)}, residual {o.residual:.1%}, "
                f"{o.remaining:.0%} of the distance to the nearest parent left)"
            )
        if o.kind == COPY:
            return f"{labels[self.target]} ≈ {labels[o.parents[0]]} (a copy, up to precision)"
        if self.block_weighted:
            names = ", ".join(labels[i] for i in o.parents)
            text = (
                f"{labels[self.target]} ≈ block-weighted {o.kind} of {names} "
                f"(one ratio per block; residual {self.block_residual:.2%})"
            )
        else:
            text = f"{labels[self.target]} ≈ {o.formula(labels)}, residual {o.residual:.2%}"
        spread = _block_spread(self, labels)
        if spread:
            text += f"; {spread}"
        return text

    def to_dict(self, labels: Sequence[str]) -> dict[str, object]:
        return {
            "target": labels[self.target],
            "component": self.component,
            "summary": self.summary(labels),
            "explained": self.explained,
            "block_weighted": self.block_weighted,
            "block_residual": round(self.block_residual, 6),
            "overall": self.overall.to_dict(labels),
            "blocks": {b: f.to_dict(labels) for b, f in self.blocks.items()},
        }


def _block_spread(recipe: Recipe, labels: Sequence[str]) -> str:
    """The range of the last parent's coefficient (or α) over the blocks, when it varies."""
    fits = [
        f
        for f in recipe.blocks.values()
        if f.kind == recipe.overall.kind and f.parents == recipe.overall.parents
    ]
    if len(fits) < 2:
        return ""
    coefs = np.array([f.coefficients[-1] for f in fits])
    if float(np.ptp(coefs)) < 0.05:
        return ""
    names = [b for b, f in recipe.blocks.items() if f in fits]
    what = "α" if recipe.overall.kind == ADD_DIFFERENCE else f"weight of {labels[recipe.overall.parents[-1]]}"
    lo, hi = int(coefs.argmin()), int(coefs.argmax())
    return f"{what} per block {coefs[lo]:.2f} ({names[lo]}) to {coefs[hi]:.2f} ({names[hi]})"


def embed(gram: np.ndarray) -> np.ndarray:
    """Vectors (rows) whose inner products are ``gram`` (its eigen-embedding; negative eigenvalues,
    rounding, clipped to zero)."""
    from scipy.linalg import eigh

    vals, vecs = eigh((gram + gram.T) / 2.0)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def _sub(gram: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    return np.asarray(gram)[np.ix_(idx, idx)]


def weighted_sum(gram: np.ndarray, target: int, parents: Sequence[int], norm: float) -> Fit:
    """The non-negative weights summing to 1 that best explain ``target`` (see the module docstring)."""
    from scipy.optimize import minimize

    idx = [target, *parents]
    vec = embed(_sub(gram, idx))
    t, p = vec[0], vec[1:].T  # p: dims × k
    k = len(parents)
    nearest = _nearest(vec)
    if nearest[1] <= COPY_DISTANCE * norm:
        # Several parents may carry the same weights (one VAE): the first in the given order names it.
        d = np.linalg.norm(vec[1:] - vec[0], axis=1)
        first = int(np.flatnonzero(d <= COPY_DISTANCE * norm)[0])
        return Fit(COPY, [parents[first]], [1.0], float(d[first]) / norm if norm > 0 else 0.0, 0.0, True)
    scale = max(float(t @ t), 1e-300)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        r = p @ w - t
        return float(r @ r) / scale, 2.0 * (p.T @ r) / scale

    if k == 1:
        w = np.ones(1)
    else:
        res = minimize(
            objective,
            np.full(k, 1.0 / k),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": np.ones_like}],
            options={"ftol": 1e-15, "maxiter": 500},
        )
        w = np.clip(res.x, 0.0, 1.0)
        w /= w.sum()
    resid = float(np.linalg.norm(p @ w - t))
    return _fit(WEIGHTED_SUM, list(parents), list(map(float, w)), resid, nearest[1], norm)


def add_difference(gram: np.ndarray, target: int, parents: Sequence[int], norm: float) -> Fit:
    """The best ``A + α·(B − C)`` over the choices of A among three parents."""
    from scipy.linalg import lstsq

    if len(parents) != 3:
        raise ValueError("add difference takes three parents (A, B, C)")
    idx = [target, *parents]
    vec = embed(_sub(gram, idx))
    t = vec[0]
    best: Fit | None = None
    nearest = _nearest(vec)[1]
    for a in range(3):
        b, c = [j for j in range(3) if j != a]
        direction = vec[1 + b] - vec[1 + c]
        if float(direction @ direction) <= 0:
            continue
        sol, _res, _rank, _sv = lstsq(direction[:, None], t - vec[1 + a])
        alpha = float(sol[0])
        if alpha < 0:
            b, c, alpha = c, b, -alpha
        resid = float(np.linalg.norm(t - vec[1 + a] - alpha * (vec[1 + b] - vec[1 + c])))
        fit = _fit(ADD_DIFFERENCE, [parents[a], parents[b], parents[c]], [alpha], resid, nearest, norm)
        if best is None or fit.residual < best.residual:
            best = fit
    if best is None:
        raise ValueError("add difference: B and C are the same model")
    return best


def _nearest(vec: np.ndarray) -> tuple[int, float]:
    d = np.linalg.norm(vec[1:] - vec[0], axis=1)
    i = int(np.argmin(d))
    return i, float(d[i])


def _fit(kind: str, parents: list[int], coefs: list[float], resid: float, nearest: float, norm: float) -> Fit:  # noqa: PLR0917
    norm = norm if norm > 0 else 1.0
    residual, near = resid / norm, nearest / norm
    explained = near <= 0 or residual <= EXPLAINED * near
    return Fit(kind, parents, coefs, residual, near, explained)


def best_fit(
    gram: np.ndarray, target: int, parents: Sequence[int], norm: float, kind: str | None = None
) -> Fit:
    """The better of a weighted sum and (with three parents) an add difference; ``kind`` forces one."""
    fits = []
    if kind in (None, WEIGHTED_SUM):
        fits.append(weighted_sum(gram, target, parents, norm))
    if kind in (None, ADD_DIFFERENCE) and len(parents) == 3:
        try:
            fits.append(add_difference(gram, target, parents, norm))
        except ValueError:  # B and C carry the same weights: there is no difference to add
            if kind == ADD_DIFFERENCE:
                raise
    if not fits:
        raise ValueError(f"recipe kind {kind!r} needs three parents")
    # A weighted sum is preferred unless the add difference is clearly better (it has one more
    # degree of freedom: an equal fit is no evidence for it).
    fits.sort(key=lambda f: f.residual * (1.0 if f.kind != ADD_DIFFERENCE else 1.5))
    return fits[0]


def solve(
    grams: dict[str, np.ndarray],
    norms: dict[str, float],
    target: int,
    parents: Sequence[int],
    component: str,
    *,
    kind: str | None = None,
) -> Recipe:
    """The recipe of ``target`` from ``parents``: per block (each Gram in ``grams``) and overall (their sum).

    ``norms`` holds ||target|| per block (the residual's denominator).
    """
    if target in parents:
        raise ValueError("the target cannot be one of its own parents")
    total = np.sum(list(grams.values()), axis=0)
    overall = best_fit(total, target, parents, math.sqrt(sum(v**2 for v in norms.values())), kind)
    blocks = {block: _fixed(g, target, overall, norms[block]) for block, g in grams.items()}
    return Recipe(target, component, overall, blocks, dict(norms))


def _fixed(gram: np.ndarray, target: int, overall: Fit, norm: float) -> Fit:
    """A block's own coefficients for the overall recipe's parents and kind."""
    if overall.kind == ADD_DIFFERENCE:
        a, b, c = overall.parents
        vec = embed(_sub(gram, [target, a, b, c]))
        from scipy.linalg import lstsq

        direction = vec[2] - vec[3]
        nearest = _nearest(vec)[1]
        if float(direction @ direction) <= 0:
            resid = float(np.linalg.norm(vec[0] - vec[1]))
            return _fit(ADD_DIFFERENCE, [a, b, c], [0.0], resid, nearest, norm)
        sol = lstsq(direction[:, None], vec[0] - vec[1])[0]
        resid = float(np.linalg.norm(vec[0] - vec[1] - sol[0] * direction))
        return _fit(ADD_DIFFERENCE, [a, b, c], [float(sol[0])], resid, nearest, norm)
    parents = overall.parents
    fit = weighted_sum(gram, target, parents, norm)
    if fit.kind == COPY and len(parents) > 1:  # keep the block's coefficients in the parents' order
        w = [1.0 if p == fit.parents[0] else 0.0 for p in parents]
        return Fit(WEIGHTED_SUM, list(parents), w, fit.residual, 0.0, True)
    return fit


def search(
    grams: dict[str, np.ndarray],
    norms: dict[str, float],
    target: int,
    candidates: Sequence[int],
    component: str,
    *,
    max_parents: int = 3,
    required: Sequence[int] = (),
    shortlist: int = 12,
) -> Recipe:
    """The smallest set of parents (up to ``max_parents``) that explains ``target`` best.

    Every set of 1..max_parents candidates is tried as a weighted sum, and every triple as an add
    difference; the ``shortlist`` best overall fits of each size are then solved block by block (a
    block-weighted merge fits only that way). A larger set wins only when it leaves clearly less
    unexplained (less than half the smaller set's residual): more parents always fit a little better.
    """
    candidates = [c for c in candidates if c != target]
    if not candidates:
        raise ValueError("no candidate parents")
    candidates = [c for c in required if c in candidates] + [c for c in candidates if c not in required]
    total = np.sum(list(grams.values()), axis=0)
    norm = math.sqrt(sum(v**2 for v in norms.values()))
    best: Recipe | None = None
    for size in range(1, min(max_parents, len(candidates)) + 1):
        fits = [
            best_fit(total, target, subset, norm)
            for subset in itertools.combinations(candidates, size)
            if all(r in subset for r in required if r in candidates)
        ]
        fits.sort(key=lambda f: f.residual)
        best_here: Recipe | None = None
        for fit in fits[:shortlist]:
            recipe = Recipe(
                target,
                component,
                fit,
                {b: _fixed(g, target, fit, norms[b]) for b, g in grams.items()},
                dict(norms),
            )
            if best_here is None or recipe.block_residual < best_here.block_residual:
                best_here = recipe
        if best_here is None:
            continue
        if best is None or best_here.block_residual < 0.5 * best.block_residual:
            best = best_here
    if best is None:
        raise ValueError("no candidate set holds the required parents")
    return best
