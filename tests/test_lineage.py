"""Lineage statistics: pair CIs, the paired sign-flip test, the UPGMA tree with support, Newick.

Outside references: the sign-flip p-value against a brute-force enumeration of all 2^R sign
patterns (the textbook definition), UPGMA against a hand-worked textbook example, the Newick text
read back by Biopython's parser, and the test's false-positive rate on simulated null data.
"""

from __future__ import annotations

import itertools
import math
from io import StringIO

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgsim import lineage
from cfgsim.host import Checkpoint
from cfgsim.lineage import SAME, UNRELATED, analyse, analyse_matrices, sign_flip_test
from cfgsim.result import MetricScores, ProbeResult
from cfgsim.spec import ProbeSpec

LABELS = ["base", "fp16", "ft1", "ft2", "merge", "unrel", "unrel2"]


def family_matrices(seeds: int = 8, *, rng_seed: int = 0, dim: int = 400) -> np.ndarray:
    """Per-seed similarity matrices of a family with a known tree (correlations of latent vectors).

    Each seed draws a shared "noise" x (what every model starts from) and per-model deviations:
    base and its fp16 copy are identical up to rounding; ft1 → ft2 is a fine-tune chain; merge is
    half base, half unrel; unrel and unrel2 are independent roots.
    """
    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(seeds):
        x = rng.normal(size=dim)
        base = x + rng.normal(size=dim)
        ft1 = base + 0.4 * rng.normal(size=dim)
        ft2 = ft1 + 0.4 * rng.normal(size=dim)
        unrel = x + rng.normal(size=dim)
        vectors = [
            base,
            base + 0.01 * rng.normal(size=dim),
            ft1,
            ft2,
            0.5 * base + 0.5 * unrel,
            unrel,
            x + rng.normal(size=dim),
        ]
        out.append(np.corrcoef(np.array(vectors)))
    return np.array(out)


def result_from(sims: np.ndarray, labels=LABELS) -> ProbeResult:
    result = ProbeResult(
        spec=ProbeSpec(),
        items=[Checkpoint(name=x, label=x) for x in labels],
        rows=list(range(1, len(sims) + 1)),
    )
    result.scores = {"ssim": MetricScores("ssim", "SSIM", per_row=list(sims))}
    return result


def clades_of(lin) -> dict[frozenset, float | None]:
    return {frozenset(lin.labels[lin.items.index(m)] for m in c.members): c.support for c in lin.clades}


# --- the paired test ---------------------------------------------------------------------------


def brute_force_sign_flip(d: np.ndarray, alternative: str = "two-sided") -> float:
    """p by enumerating every sign pattern: P(|mean(±d)| >= |mean(d)|), or P(mean(±d) >= mean(d))."""
    observed = d.mean()
    hits = 0
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    for signs in patterns:
        flipped = (np.array(signs) * d).mean()
        if alternative == "greater":
            hits += flipped >= observed - 1e-12
        else:
            hits += abs(flipped) >= abs(observed) - 1e-12
    return hits / len(patterns)


@pytest.mark.parametrize(
    "d",
    [
        [0.1, 0.2, 0.05, 0.3, 0.1, 0.2, 0.15, 0.05],
        [0.1, -0.2, 0.05, 0.3, -0.1, 0.2],
        [0.01, 0.02, -0.03, 0.04, 0.05],
        [0.3, -0.01, 0.02, 0.01, 0.2, 0.05, -0.04, 0.06, 0.1, 0.01],
    ],
)
def test_sign_flip_p_matches_enumeration(d):
    d = np.array(d)
    assert sign_flip_test(d) == pytest.approx(brute_force_sign_flip(d), abs=1e-12)
    one_sided = sign_flip_test(d, alternative="greater")
    assert one_sided == pytest.approx(brute_force_sign_flip(d, "greater"), abs=1e-12)


def test_sign_flip_smallest_p_is_two_over_two_to_the_seeds():
    assert sign_flip_test(np.full(8, 0.1) + np.arange(8) * 1e-3) == pytest.approx(2 / 256)
    assert sign_flip_test(np.zeros(5)) == 1.0
    with pytest.raises(ValueError, match="two seeds"):
        sign_flip_test([0.3])


def test_false_positive_rate_under_the_null_is_at_most_alpha():
    """B and C equally related to A: the per-seed differences are symmetric about 0."""
    rng = np.random.default_rng(7)
    trials = 600
    rejections = sum(sign_flip_test(rng.normal(0, 0.02, size=8), rng_seed=k) < 0.05 for k in range(trials))
    rate = rejections / trials
    # Exact test: the rate is at most alpha in expectation; 600 trials give a standard error ~0.009.
    assert rate <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / trials)


# --- UPGMA and support --------------------------------------------------------------------------


def test_upgma_matches_a_hand_worked_example():
    """Distances a–b 2, a–c 4, b–c 4, (ab)–d 6, c–d 6: UPGMA joins ab at 1, abc at 2, all at 3."""
    dist = np.array([[0, 2, 4, 6], [2, 0, 4, 6], [4, 4, 0, 6], [6, 6, 6, 0]], dtype=float) / 10
    lin = analyse_matrices((1 - dist)[None], list("abcd"), replicates=0)
    heights = {frozenset("abcd"[m] for m in c.members): c.height for c in lin.clades}
    assert heights == pytest.approx(
        {frozenset("ab"): 0.1, frozenset("abc"): 0.2, frozenset("abcd"): 0.3}  # half the distance
    )


def test_known_family_is_recovered_with_full_support():
    lin = analyse_matrices(family_matrices(8), LABELS, replicates=300)
    clades = clades_of(lin)
    # The unambiguous clades of the truth (ft1 sits between base and ft2, so {ft1, ft2} is not one).
    for clade in ({"base", "fp16"}, {"base", "fp16", "ft1", "ft2"}):
        assert clades[frozenset(clade)] >= 0.95, clade
    rel = {r.label: r for r in lin.relatives}
    assert rel["fp16"].nearest_label == "base" and rel["fp16"].band == SAME
    assert rel["unrel2"].nearest_label in ("merge", "unrel", "base", "fp16", "ft1", "ft2")
    assert rel["ft2"].nearest_label == "ft1" and rel["ft2"].decided
    assert rel["ft2"].seeds_won == 8 and rel["ft2"].p_value == pytest.approx(1 / 256)


def test_undecided_is_said_when_the_runner_up_is_as_close():
    # A's two relatives B and C are equally related (independent draws around one centre).
    rng = np.random.default_rng(3)
    sims = []
    for _ in range(8):
        a = rng.normal(size=300)
        b = a + rng.normal(size=300)
        c = a + rng.normal(size=300)
        sims.append(np.corrcoef([a, b, c, rng.normal(size=300)]))
    lin = analyse_matrices(np.array(sims), ["a", "b", "c", "d"], replicates=200)
    rel = lin.relatives[0]
    assert rel.p_value is not None and rel.p_value >= 0.05
    assert not rel.decided
    assert "undecided between" in rel.verdict


def margin_case(ratio: float, seeds: int = 8) -> np.ndarray:
    """A's relatives B and C over seeds, C ``ratio`` times as far as B (distance = 1 − similarity)."""
    rng = np.random.default_rng(11)
    sims = []
    for _ in range(seeds):
        d_b = 0.10 + rng.normal(0, 0.002)
        d_c = ratio * 0.10 + rng.normal(0, 0.002)
        m = np.full((4, 4), 0.2)
        np.fill_diagonal(m, 1.0)
        m[0, 1] = m[1, 0] = 1 - d_b
        m[0, 2] = m[2, 0] = 1 - d_c
        m[1, 2] = m[2, 1] = 0.85
        sims.append(m)
    return np.array(sims)


@pytest.mark.parametrize(("ratio", "decided"), [(1.15, False), (1.3, False), (2.5, True), (4.0, True)])
def test_the_runner_up_must_be_materially_farther(ratio, decided):
    lin = analyse_matrices(margin_case(ratio), ["a", "b", "c", "d"], replicates=0)
    rel = lin.relatives[0]
    assert rel.nearest_label == "b" and rel.runner_up_label == "c"
    assert rel.distance_ratio == pytest.approx(ratio, rel=0.15)
    assert rel.decided is decided, rel.verdict
    # A plain "nearer at all" test would call even the small difference (all 8 seeds agree).
    assert rel.seeds_won == 8


def test_margin_one_is_the_plain_one_sided_test():
    lin = analyse_matrices(margin_case(1.15), ["a", "b", "c", "d"], replicates=0, margin=1.0)
    assert lin.relatives[0].decided and lin.relatives[0].p_value == pytest.approx(1 / 256)
    with pytest.raises(ValueError, match="margin"):
        analyse_matrices(margin_case(1.15), ["a", "b", "c", "d"], margin=0.5)


def test_same_rng_seed_gives_identical_output_and_another_seed_may_not():
    sims = family_matrices(6, rng_seed=2)
    one = analyse_matrices(sims, LABELS, replicates=200, rng_seed=11).to_dict()
    two = analyse_matrices(sims, LABELS, replicates=200, rng_seed=11).to_dict()
    assert one == two


def test_one_seed_gives_a_tree_without_support_and_says_so():
    lin = analyse_matrices(family_matrices(1), LABELS, replicates=300)
    assert lin.replicates == 0 and all(c.support is None for c in lin.clades)
    assert any("one seed" in note for note in lin.notes)
    assert all(r.p_value is None and math.isnan(r.ci[0]) for r in lin.relatives)
    assert ")" in lin.newick and "100" not in lin.newick


def test_two_items_say_there_is_no_tree_to_speak_of():
    lin = analyse_matrices(family_matrices(4)[:, :2, :2], LABELS[:2], replicates=300)
    assert any("two items" in note for note in lin.notes)
    assert lin.relatives[0].nearest_label == "fp16" and lin.relatives[0].runner_up is None


def test_few_seeds_say_no_test_can_be_significant():
    lin = analyse_matrices(family_matrices(4), LABELS, replicates=200)
    assert any("smallest p-value" in note and "0.062" in note for note in lin.notes)
    assert not any("smallest p-value" in note for note in analyse_matrices(family_matrices(5), LABELS).notes)


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(7))))
def test_permuting_items_only_permutes_the_results(perm):
    sims = family_matrices(6, rng_seed=5)
    base = analyse_matrices(sims, LABELS, replicates=0)
    permuted = analyse_matrices(sims[:, perm][:, :, perm], [LABELS[p] for p in perm], replicates=0)
    by_label = {r.label: r for r in base.relatives}
    for rel in permuted.relatives:
        ref = by_label[rel.label]
        assert rel.nearest_label == ref.nearest_label
        assert rel.similarity == pytest.approx(ref.similarity)
        assert rel.ci == pytest.approx(ref.ci, nan_ok=True)
        assert rel.p_value == pytest.approx(ref.p_value) if ref.p_value is not None else rel.p_value is None
    assert {k: None for k in clades_of(permuted)} == {k: None for k in clades_of(base)}


# --- CIs ------------------------------------------------------------------------------------------


def test_pair_interval_contains_the_mean_and_is_degenerate_for_constant_pairs():
    sims = family_matrices(8)
    sims[:, 0, 1] = sims[:, 1, 0] = 0.99
    lin = analyse_matrices(sims, LABELS, replicates=0)
    assert lin.ci_low[0, 1] == lin.ci_high[0, 1] == pytest.approx(0.99)
    iu = np.triu_indices(len(LABELS), 1)
    assert np.all(lin.ci_low[iu] <= lin.mean[iu] + 1e-12)
    assert np.all(lin.mean[iu] <= lin.ci_high[iu] + 1e-12)
    assert np.all(lin.ci_low[iu] >= sims.min(axis=0)[iu] - 1e-12)


# --- Newick -------------------------------------------------------------------------------------


def test_newick_reads_back_with_biopython():
    phylo = pytest.importorskip("Bio.Phylo")
    labels = ["base", "fp16 copy", "ft(1)", "it's", "merge,x", "unrel", "unrel2"]
    lin = analyse_matrices(family_matrices(8), labels, replicates=200)
    tree = phylo.read(StringIO(lin.newick), "newick")
    assert sorted(t.name for t in tree.get_terminals()) == sorted(labels)
    supports = sorted(
        c.confidence for c in tree.get_nonterminals() if c.confidence is not None and c is not tree.root
    )
    expected = sorted(round(c.support * 100) for c in lin.clades[:-1])
    assert supports == expected
    # Ultrametric: every leaf is the root height away from the root.
    depths = tree.depths()
    root_height = lin.clades[-1].height
    for leaf in tree.get_terminals():
        assert depths[leaf] == pytest.approx(root_height, abs=1e-5)


# --- on a result --------------------------------------------------------------------------------


def test_analyse_leaves_out_incomplete_seeds_and_items_without_images():
    sims = family_matrices(6)
    sims[2, 3, :] = sims[2, :, 3] = np.nan  # ft2 has no image on the third seed
    sims[:, 6, :] = sims[:, :, 6] = np.nan  # unrel2 failed everywhere
    lin = analyse(result_from(sims), replicates=200)
    assert lin.rows_used == [1, 2, 4, 5, 6] and lin.rows_left_out == [3]
    assert 6 not in lin.items
    assert any("unrel2" in note for note in lin.notes) and any("3" in note for note in lin.notes)


def test_lineage_round_trips_through_json_and_reorders_with_the_result():
    result = result_from(family_matrices(6))
    result.lineage = analyse(result, replicates=200)
    back = ProbeResult.from_dict(result.to_dict())
    assert back.lineage.to_dict() == result.lineage.to_dict()
    ordered = result.reordered(result.tree_order())
    assert ordered.lineage.order == list(range(len(LABELS)))
    for rel in ordered.lineage.relatives:
        assert ordered.items[rel.item].label == rel.label
        assert ordered.items[rel.nearest].label == rel.nearest_label
    # The matrices follow the items.
    i, j = result.tree_order()[0], result.tree_order()[1]
    assert ordered.scores["ssim"].mean[0, 1] == pytest.approx(result.scores["ssim"].mean[i, j])


def test_unknown_metric_gets_nearest_relatives_without_bands():
    result = result_from(family_matrices(6))
    result.scores = {"clip": MetricScores("clip", "CLIP", per_row=result.scores["ssim"].per_row)}
    lin = analyse(result, replicates=0)
    assert lin.bands is None
    assert all(r.band == UNRELATED and "verdict bands" not in r.verdict for r in lin.relatives)
    assert any("calibrated for SSIM only" in note for note in lin.notes)


def test_summary_line_names_each_items_nearest():
    result = result_from(family_matrices(8))
    lin = analyse(result, replicates=0)
    line = lin.summary()
    assert "fp16→base" in line and "(same)" in line


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        analyse_matrices(family_matrices(2), LABELS, alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        analyse_matrices(family_matrices(2), LABELS[:3])
    assert lineage.BANDS["ssim"].band(0.99) == SAME
