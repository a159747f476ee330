"""Edges of the verdict's rules that crafted logs reach only with difficulty: zero pairs won, cells
without objective or rank, equal margin gaps, missing margins, info findings, several names in one
reason. Each cell is a review (the numbers the rules read) and its findings; expected values are
worked out from the rules in prefwatch/core/decide.py (the comment in each test)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from prefwatch.core.decide import CellResult, decide, paired, sign_test
from prefwatch.core.diagnose import Diagnosis, Finding, Review

PAIRS = 100


def result(
    cell_id: str,
    objective: str | None,
    rank: int | None,
    won: int | None,
    train: float | None = 1.0,
    heldout: float | None = 0.5,
    findings: tuple[Finding, ...] = (),
    finished: bool = True,
    seed: int | None = None,
) -> CellResult:
    """A cell that ranks the first ``won`` of 100 held-out pairs right."""
    review = Review(
        train_margin_late=train,
        heldout_margin=heldout,
        heldout_pairs_won=won,
        heldout_pairs=PAIRS if won is not None else None,
        heldout_accuracy=None if won is None else won / PAIRS,
    )
    wins = None if won is None else np.arange(PAIRS) < won
    return CellResult(cell_id, objective, rank, seed, finished, Diagnosis(review, list(findings)), wins)


def warn(kind: str) -> Finding:
    return Finding(kind, "warn", f"{kind} seen", 10)


def test_sign_test_on_unequal_discordant_pairs() -> None:
    # 3 against 1: n = 4, tail P(X <= 1) = (1 + 4) / 16, two-sided 0.625.
    assert sign_test(3, 1) == pytest.approx(0.625)
    assert sign_test(1, 3) == pytest.approx(0.625)
    # 6 against 1: n = 7, tail (1 + 7) / 128, two-sided 0.125.
    assert sign_test(6, 1) == pytest.approx(0.125)


def test_paired_needs_per_pair_results_of_the_same_pairs() -> None:
    a, b = result("a", "dpo", 8, 60), result("b", "simpo", 8, 70)
    assert paired(a, result("c", "simpo", 8, None)) is None
    assert paired(result("c", "simpo", 8, None), a) is None
    other_size = result("d", "simpo", 8, 70)
    other_size.wins = np.ones(50, dtype=bool)
    assert paired(a, other_size) is None
    comparison = paired(b, a)
    assert comparison is not None and (comparison.only_winner, comparison.only_other) == (10, 0)


def test_the_tie_between_ranks_goes_to_the_lower_one_whatever_the_order() -> None:
    # DPO cells tie at 60 (both clean): the best DPO is r=8 even listed after r=16; SimPO 80 > 60,
    # gap 25 % < 50 %: switch, naming dpo-r8.
    verdict = decide(
        [
            result("dpo-r16", "dpo", 16, 60),
            result("dpo-r8", "dpo", 8, 60),
            result("simpo-r16", "simpo", 16, 80, train=2.0, heldout=1.5),
            result("simpo-r8", "simpo", 8, 80, train=2.0, heldout=1.5),
        ]
    )
    assert verdict.reasons[0].startswith("switch to SimPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 ")
    assert verdict.rank == 8


def test_zero_pairs_won_is_a_count_not_a_missing_value() -> None:
    # SimPO 0, DPO 0: SimPO does not win more; stay (not significant: no discordant pair).
    verdict = decide([result("dpo-r8", "dpo", 8, 0), result("simpo-r8", "simpo", 8, 0)])
    assert verdict.reasons == ["stay with DPO: simpo-r8 does not win more held-out pairs than dpo-r8 (0 vs 0)"]
    assert not verdict.decisive
    # SimPO 1, DPO 0, cleaner: switch on one pair.
    verdict = decide([result("dpo-r8", "dpo", 8, 0), result("simpo-r8", "simpo", 8, 1, train=2.0, heldout=1.5)])
    assert verdict.objective == "simpo" and "wins 1 more" in verdict.reasons[0]
    # Two DPO cells at r=8: 1 pair with a warning beats 0 pairs clean (pairs first, then cleanliness);
    # SimPO's 5 pairs are 4 more than that best DPO cell.
    verdict = decide(
        [
            result("dpo-a", "dpo", 8, 0),
            result("dpo-b", "dpo", 8, 1, findings=(warn("saturation"),)),
            result("simpo-r8", "simpo", 8, 5, train=2.0, heldout=1.5),
        ]
    )
    assert verdict.reasons[0].startswith("switch to SimPO: simpo-r8 wins 4 more held-out pair(s) than dpo-b ")
    # Ranks: r=16 with 1 pair, r=8 with 0 and no lower margin: r=16 wins the most pairs.
    verdict = decide([result("dpo-r8", "dpo", 8, 0), result("dpo-r16", "dpo", 16, 1)])
    assert (verdict.rank, verdict.reasons[-1]) == (16, "r=16 wins the most held-out pairs (1)")


def test_an_unlabelled_objective_is_said_to_be_unknown() -> None:
    # Issue 12: never a "?" placeholder; nothing is decided for cells whose objective nothing says.
    verdict = decide([result("run-a", None, None, 60), result("run-b", None, None, 70)])
    assert verdict.objective is None and not verdict.decisive
    assert (
        verdict.reasons[0]
        == "the objective is unknown (no label, and the logs cannot tell): --label NAME=OBJECTIVE:RANK"
    )
    waiting = decide([result("dpo-r8", "dpo", 8, 60), result("run-b", None, None, None, finished=False)])
    assert waiting.reasons[0] == "no held-out evaluation of unknown-objective cells yet"


def test_several_names_in_one_reason_are_listed_with_commas() -> None:
    verdict = decide(
        [
            result("dpo-r8", "dpo", 8, 60),
            result("simpo-r8", "simpo", 8, None, finished=False),
            result("orpo-r8", "orpo", 8, None, finished=False),
        ]
    )
    assert verdict.reasons[0] == "no held-out evaluation of orpo, simpo cells yet"
    assert verdict.needs == ["the cells still running to finish (simpo-r8, orpo-r8)"]
    findings = (warn("overoptimization"), warn("saturation"))
    verdict = decide(
        [result("dpo-r8", "dpo", 8, 60), result("simpo-r8", "simpo", 8, 80, train=2.0, heldout=1.5, findings=findings)]
    )
    assert verdict.reasons[0].endswith("but it shows overoptimization, saturation and dpo-r8 does not")


def test_an_info_finding_does_not_make_margins_less_clean() -> None:
    # brevity_bias is info: SimPO 80 vs 60 with the smaller gap still switches.
    info = Finding("brevity_bias", "info", "chosen answers are shorter", None)
    verdict = decide(
        [result("dpo-r8", "dpo", 8, 60), result("simpo-r8", "simpo", 8, 80, train=2.0, heldout=1.5, findings=(info,))]
    )
    assert verdict.objective == "simpo"


def test_an_equal_margin_gap_is_not_cleaner() -> None:
    # gaps (1.0 - 0.5) / 1.0 = 50 % and (2.0 - 1.0) / 2.0 = 50 %: not smaller, stay with DPO.
    verdict = decide([result("dpo-r8", "dpo", 8, 60), result("simpo-r8", "simpo", 8, 80, train=2.0, heldout=1.0)])
    assert verdict.objective == "dpo"
    assert verdict.reasons[0].endswith(
        "but its train/held-out margin gap is not smaller (50% of its train margin vs 50%)"
    )


@pytest.mark.parametrize("missing", ["candidate", "incumbent"])
def test_a_gap_that_cannot_be_computed_leaves_the_findings_to_decide(missing: str) -> None:
    # One side has no train margin: no gap to compare, and no finding against SimPO: cleaner margins, switch.
    dpo = result("dpo-r8", "dpo", 8, 60, train=None if missing == "incumbent" else 1.0)
    simpo = result("simpo-r8", "simpo", 8, 80, train=None if missing == "candidate" else 2.0, heldout=1.5)
    verdict = decide([dpo, simpo])
    assert verdict.objective == "simpo"
    assert verdict.reasons == [
        "switch to SimPO: simpo-r8 wins 20 more held-out pair(s) than dpo-r8 with cleaner margins"
    ]


def test_seed_spread_equal_to_the_difference_decides_nothing() -> None:
    # DPO 60 / 70 (mean 65), SimPO 80 / 70 (mean 75): difference 10 = spread 10: not decisive.
    cells = [
        result("dpo-s0", "dpo", 8, 60, seed=0),
        result("dpo-s1", "dpo", 8, 70, seed=1),
        result("simpo-s0", "simpo", 8, 80, train=2.0, heldout=1.5, seed=0),
        result("simpo-s1", "simpo", 8, 70, train=2.0, heldout=1.5, seed=1),
    ]
    verdict = decide(cells)
    assert verdict.reasons[-1] == (
        "the objective difference (10.0 pairs on average) is inside the spread across seeds (10 pairs)"
    )
    assert not verdict.decisive
    # One more pair for SimPO's second seed: difference 10.5 > spread 10 -> decisive (80 vs 70: p = 0.002).
    cells[3] = result("simpo-s1", "simpo", 8, 71, train=2.0, heldout=1.5, seed=1)
    assert decide(cells).decisive


def test_a_lower_rank_two_pairs_behind_a_top_of_two_is_not_close() -> None:
    # r=16 wins 2 pairs, r=8 none with lower margins: 2 - 0 = 2 > 1, so r=16 (zero is a count here too).
    verdict = decide([result("dpo-r16", "dpo", 16, 2), result("dpo-r8", "dpo", 8, 0, train=0.5)])
    assert (verdict.rank, verdict.reasons[-1]) == (16, "r=16 wins the most held-out pairs (2)")


def test_ranks_are_not_seeds() -> None:
    # DPO r=8 40, r=16 80 (one seed each), SimPO 90 / 90: the ranks' difference is no spread across
    # seeds (there is none): decisive. SimPO 90 vs DPO's best 80: switch, p = 2 / 1024.
    cells = [
        result("dpo-r8", "dpo", 8, 40),
        result("dpo-r16", "dpo", 16, 80),
        result("simpo-r8", "simpo", 8, 90, train=2.0, heldout=1.5),
        result("simpo-r16", "simpo", 16, 90, train=2.0, heldout=1.5),
    ]
    verdict = decide(cells)
    assert verdict.decisive and not any("spread" in r for r in verdict.reasons)


def test_seeds_of_a_single_objective_do_not_block_the_verdict() -> None:
    # Only DPO, two ranks with two seeds each (r=8: 60 / 70, r=16: 50 / 52): no other objective to hold
    # against the spread across seeds; r=8 wins the most pairs (70); decisive.
    verdict = decide(
        [
            result("dpo-r8-s0", "dpo", 8, 60, seed=0),
            result("dpo-r8-s1", "dpo", 8, 70, seed=1),
            result("dpo-r16-s0", "dpo", 16, 50, seed=0),
            result("dpo-r16-s1", "dpo", 16, 52, seed=1),
        ]
    )
    assert (verdict.objective, verdict.rank) == ("dpo", 8)
    assert verdict.decisive, verdict.reasons


def sized(cell_id: str, objective: str, accuracy: float | None, pairs: int, won: int) -> CellResult:
    review = Review(
        train_margin_late=1.0, heldout_margin=0.5, heldout_pairs_won=won, heldout_pairs=pairs, heldout_accuracy=accuracy
    )
    return CellResult(cell_id, objective, 8, None, True, Diagnosis(review, []), None)


def test_without_per_pair_results_accuracies_come_with_their_intervals() -> None:
    # 1.96 * sqrt(0.6 * 0.4 / 100) = 0.096; 1.96 * sqrt(0.8 * 0.2 / 200) = 0.055.
    two = [sized("dpo-r8", "dpo", 0.6, 100, 60), sized("simpo-r8", "simpo", 0.8, 200, 160)]
    intervals = "no per-pair results: held-out accuracy with 95 % intervals over 100, 200 pairs: "
    assert intervals + "dpo-r8 0.60 ± 0.10, simpo-r8 0.80 ± 0.06" in decide(two).reasons
    # A cell whose accuracy is not known is counted in the sizes, not listed.
    three = [sized("dpo-r16", "dpo", None, 100, 55), *two]
    assert intervals + "dpo-r8 0.60 ± 0.10, simpo-r8 0.80 ± 0.06" in decide(three).reasons
    assert not any(r.startswith("no per-pair") for r in decide(two[:1]).reasons)  # one cell: nothing to compare


def test_cells_without_preference_metrics_are_named_not_compared() -> None:
    sft = dataclasses.replace(result("sft-run", "sft", 8, None), preference=False)
    grpo = dataclasses.replace(result("run2", None, 8, None), preference=False)
    verdict = decide([sft, grpo])
    assert verdict.reasons == [
        "no preference-tuned cell: nothing to compare",
        "not compared (no preference metrics): sft-run (SFT), run2",
    ]
    assert verdict.needs == ["logs of preference runs (DPO, SimPO, ORPO …) with held-out evaluations"]
    assert verdict.decisive is False


def test_accuracy_without_its_size_and_runs_that_stopped() -> None:
    a = dataclasses.replace(sized("a", "dpo", 0.6, 0, 0), diagnosis=Diagnosis(Review(heldout_accuracy=0.6), []))
    b = dataclasses.replace(a, id="b", finished=False, stopped_at=40, max_steps=None)
    c = dataclasses.replace(a, id="c", finished=False, stopped_at=30, max_steps=100)
    verdict = decide([a, b, c])
    assert verdict.reasons == [
        "held-out size unknown: --heldout-pairs N (accuracy is logged for a, b, c; "
        "pairs won cannot be counted without the size)"
    ]
    assert verdict.needs == [
        "the held-out size (--heldout-pairs N) or per-pair results (eval_pairs.jsonl)",
        "complete runs (b stopped at step 40, c stopped at step 30 of 100, without an end-of-training record)",
    ]


def test_one_objective_without_a_rank_and_an_unknown_objective() -> None:
    verdict = decide([result("run", "dpo", None, 60)])
    assert verdict.reasons[0] == "one objective (dpo) and no known rank: nothing was compared"
    unknown = decide([result("a", None, 8, 60), result("b", None, 16, 70)])
    assert (
        unknown.reasons[0]
        == "the objective is unknown (no label, and the logs cannot tell): --label NAME=OBJECTIVE:RANK"
    )
    assert unknown.decisive is False


def test_objectives_the_rules_do_not_compare_and_disputed_labels() -> None:
    verdict = decide([result("dpo-r8", "dpo", 8, 60), result("orpo-r8", "orpo", 8, 80)])
    assert "dpo and orpo: the rules compare DPO with SimPO only" in verdict.reasons and verdict.decisive is False
    disputed = Finding("objective_mismatch", "error", "the folder name says dpo but the logs are SimPO/CPO: …")
    cells = [
        result("dpo-r8", "dpo", 8, 60, findings=(disputed,)),
        result("simpo-r8", "simpo", 8, 80, findings=(disputed,)),
    ]
    assert "the objective of dpo-r8, simpo-r8 is in question: its label and its logs disagree" in decide(cells).reasons
