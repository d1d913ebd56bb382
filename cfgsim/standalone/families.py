"""The demo's model families as recipes, and the tree each one should give (torch-free).

A :class:`FamilySpec` lists its members (:class:`Member`: a root, a fine-tune, a merge or a copy)
and its :class:`FamilyTruth`; :mod:`cfgsim.standalone.demo` builds the weights and probes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Weight seeds of the small (default) family, kept from its first version so its files and scores
# stay the same: the roots, the shared VAE and the fine-tune's noise (UNet: seed, text encoder: seed + 1).
SEEDS = {"base": 1, "unrelated": 2, "unrelated-2": 3, "vae": 100, "finetune-noise": 11}
FINETUNE_NOISE = 0.05  # weight noise of the small family's fine-tune, relative to each tensor's own std


@dataclass(frozen=True)
class Member:
    """How one demo checkpoint is made (its recipe).

    ``kind``: ``root`` (independent random weights from ``seed``), ``finetune`` (``parents[0]`` plus
    Gaussian weight noise of ``strength`` x each tensor's std, drawn from ``seed``), ``merge`` (the
    WebUI merger's weighted sum of ``parents`` with ``weights``, summing to 1) or ``copy``
    (``parents[0]``'s weights unchanged: a re-save). ``dtype`` is the stored precision, ``ema``
    whether the file also carries ldm's EMA copy of the UNet (``model_ema.*``, ignored by loaders).
    """

    name: str
    kind: str
    parents: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    strength: float = 0.0
    seed: int = 0
    dtype: str = "float16"
    ema: bool = False

    @property
    def recipe(self) -> str:
        """One line: what this checkpoint is, e.g. ``merge: 0.75 base + 0.25 unrel``."""
        store = f"{'fp16' if self.dtype == 'float16' else 'fp32'}{', with EMA' if self.ema else ''}"
        if self.kind == "root":
            return f"root: independent random weights (seed {self.seed}); {store}"
        if self.kind == "finetune":
            return f"fine-tune of {self.parents[0]}: + weight noise {self.strength:g} x std; {store}"
        if self.kind == "merge":
            terms = " + ".join(f"{w:g} {p}" for p, w in zip(self.parents, self.weights, strict=True))
            return f"merge (weighted sum): {terms}; {store}"
        return f"copy of {self.parents[0]}: same weights, stored {store}"


@dataclass(frozen=True)
class FamilyTruth:
    """What the probe should recover from a family, by construction.

    * ``same_model``: groups of checkpoints with the same weights (files differ only by precision or
      EMA keys): their pictures agree to rounding.
    * ``clades``: groups that are unambiguous in the tree — every member nearer to every other
      member than to anything outside (in weight space, by a clear margin).
    * ``nearest``: for each item whose nearest relative is unambiguous, the acceptable answers
      (several when they are the same model, e.g. base and its copies).
    * ``merge_parents``: each merge of two parents -> (the parent with the larger weight, the other);
      a 50/50 merge is not listed here (see ``equally_related``).
    * ``equally_related``: triples (A, B, C) where B and C are equally related to A by construction
      (exchangeable: swapping B and C gives the same recipe) — the null case for a paired test.
      On one random draw of weights the two similarities still differ a little.
    * ``unrelated``: items related to nothing else in the family (independent roots).
    """

    same_model: tuple[frozenset[str], ...] = ()
    clades: tuple[frozenset[str], ...] = ()
    nearest: Mapping[str, frozenset[str]] = field(default_factory=dict)
    merge_parents: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    equally_related: tuple[tuple[str, str, str], ...] = ()
    unrelated: frozenset[str] = frozenset()

    def violations(
        self, labels: Sequence[str], similarity: Any, *, same_model_min: float = 0.99
    ) -> list[str]:
        """What a similarity matrix (N x N, higher = closer, ``labels`` in its order; e.g. the mean
        SSIM over seeds) gets wrong against this truth, one line each; [] when it agrees.

        Checked: same-model pairs at least ``same_model_min``; each unambiguous nearest relative is
        the most similar item; every clade member more similar to every other member than to anything
        outside; each unequal merge more similar to its heavier parent.
        """
        idx = {label: i for i, label in enumerate(labels)}

        def s(a: str, b: str) -> float:
            return float(similarity[idx[a]][idx[b]])

        out = []
        for group in self.same_model:
            out += [
                f"same model {a} / {b}: {s(a, b):.4f}"
                for a in group
                for b in group
                if a < b and s(a, b) < same_model_min
            ]
        for item, nearest in self.nearest.items():
            best = max((b for b in labels if b != item), key=lambda b: s(item, b))
            if best not in nearest:
                out.append(
                    f"nearest of {item}: {best} ({s(item, best):.4f}), expected one of {sorted(nearest)}"
                )
        for clade in self.clades:
            inside = min(s(a, b) for a in clade for b in clade if a != b)
            outside = max(s(a, b) for a in clade for b in labels if b not in clade)
            if inside <= outside:
                out.append(
                    f"clade {sorted(clade)}: weakest inside {inside:.4f} <= strongest outside {outside:.4f}"
                )
        for item, (near, far) in self.merge_parents.items():
            if s(item, near) <= s(item, far):
                out.append(f"merge {item}: {near} {s(item, near):.4f} <= {far} {s(item, far):.4f}")
        return out

    def nearest_is_ambiguous(self, item: str) -> bool:
        """True when the truth names no single nearest relative (or set of same-model ones) for ``item``."""
        return item not in self.nearest


@dataclass(frozen=True)
class FamilySpec:
    """A demo family: its members in order (parents before children), the reference item, the truth."""

    name: str
    description: str
    members: tuple[Member, ...]
    truth: FamilyTruth
    reference: str = "base"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)


_SMALL = FamilySpec(
    name="small",
    description="base, a fine-tune, a 50/50 merge of base with an unrelated model, two unrelated models",
    members=(
        Member("base", "root", seed=SEEDS["base"]),
        Member("finetune", "finetune", ("base",), strength=FINETUNE_NOISE, seed=SEEDS["finetune-noise"]),
        Member("merge", "merge", ("base", "unrelated"), (0.5, 0.5)),
        Member("unrelated", "root", seed=SEEDS["unrelated"]),
        Member("unrelated-2", "root", seed=SEEDS["unrelated-2"]),
    ),
    truth=FamilyTruth(
        clades=(frozenset({"base", "finetune"}),),
        nearest={"base": frozenset({"finetune"}), "finetune": frozenset({"base"})},
        equally_related=(("merge", "base", "unrelated"),),
        unrelated=frozenset({"unrelated-2"}),
    ),
)

# The full family's noise levels (relative to each tensor's std). ft2 is a lighter fine-tune of ft1
# than ft1 is of base, so ft1 and ft2 are each other's nearest relatives; every fine-tune distance
# stays well below the 0.25 merge's (0.25 x sqrt 2 = 0.35 of a std from base).
FULL_FT1_NOISE = 0.10
FULL_FT2_NOISE = 0.05
_BASE = frozenset({"base", "base-fp16", "base-pruned"})
_FULL = FamilySpec(
    name="full",
    description=(
        "base (+ fp16 and EMA-pruned copies), a fine-tune chain base > ft1 > ft2, a second fine-tune ft1b "
        "and the 50/50 merge of ft1 and ft1b, merges of base with an unrelated root at 0.75/0.5/0.25, "
        "that root with a fine-tune of its own, and a second unrelated root"
    ),
    members=(
        Member("base", "root", seed=SEEDS["base"], dtype="float32", ema=True),
        Member("base-fp16", "copy", ("base",), dtype="float16", ema=True),
        Member("base-pruned", "copy", ("base",), dtype="float32"),
        Member("ft1", "finetune", ("base",), strength=FULL_FT1_NOISE, seed=21, dtype="float32"),
        Member("ft2", "finetune", ("ft1",), strength=FULL_FT2_NOISE, seed=23, dtype="float32"),
        Member("ft1b", "finetune", ("base",), strength=FULL_FT1_NOISE, seed=25, dtype="float32"),
        Member("merge-ft1-ft1b", "merge", ("ft1", "ft1b"), (0.5, 0.5), dtype="float32"),
        Member("merge-base75-unrel25", "merge", ("base", "unrel"), (0.75, 0.25), dtype="float32"),
        Member("merge-base50-unrel50", "merge", ("base", "unrel"), (0.5, 0.5), dtype="float32"),
        Member("merge-base25-unrel75", "merge", ("base", "unrel"), (0.25, 0.75), dtype="float32"),
        Member("unrel", "root", seed=SEEDS["unrelated"], dtype="float32"),
        Member("unrel-ft", "finetune", ("unrel",), strength=FULL_FT1_NOISE, seed=27, dtype="float32"),
        Member("unrel2", "root", seed=SEEDS["unrelated-2"], dtype="float32"),
    ),
    truth=FamilyTruth(
        same_model=(_BASE,),
        clades=(
            _BASE,
            frozenset({"ft1", "ft2"}),
            _BASE | {"ft1", "ft2", "ft1b", "merge-ft1-ft1b"},
            frozenset({"unrel", "unrel-ft"}),
        ),
        nearest={
            "base": _BASE,
            "base-fp16": _BASE,
            "base-pruned": _BASE,
            "ft1": frozenset({"ft2"}),
            "ft2": frozenset({"ft1"}),
            "unrel": frozenset({"unrel-ft"}),
            "unrel-ft": frozenset({"unrel"}),
        },
        merge_parents={
            "merge-base75-unrel25": ("base", "unrel"),
            "merge-base25-unrel75": ("unrel", "base"),
        },
        equally_related=(
            ("merge-ft1-ft1b", "ft1", "ft1b"),
            ("merge-base50-unrel50", "base", "unrel"),
        ),
        unrelated=frozenset({"unrel2"}),
    ),
)

# Each family by name: members with their recipes, the reference item and the expected tree.
DEMO_FAMILIES: dict[str, FamilySpec] = {"small": _SMALL, "full": _FULL}
DEFAULT_FAMILY = "small"
DEMO_MODELS = _SMALL.names  # the default family's members, in order


def get_family(family: str | FamilySpec) -> FamilySpec:
    """A :class:`FamilySpec` by name (see :data:`DEMO_FAMILIES`); an InputError names the known ones."""
    if isinstance(family, FamilySpec):
        return family
    try:
        return DEMO_FAMILIES[family]
    except KeyError:
        from cfgsim.errors import InputError

        raise InputError(f"demo family {family!r}: unknown (known: {', '.join(DEMO_FAMILIES)})") from None
