"""The verdict, situation by situation, on TRL-shaped logs with per-pair held-out results."""

from __future__ import annotations

import numpy as np
from test_diagnose import peaked, run

from prefwatch.core.decide import CellResult, decide, sign_test
from prefwatch.core.diagnose import diagnose
from prefwatch.ingest.sources import PairLog

PAIRS = 100


def pairs_won(won: int, curve, shift: int = 0) -> PairLog:
    """Per-pair results that follow an accuracy curve and end with the first `won` pairs ranked right."""
    log = PairLog()
    for step in range(10, 101, 10):
        right = round(won * curve(step) / curve(100))
        wins = np.roll(np.arange(PAIRS) < right, shift)
        chosen = np.where(wins, 1.0, -1.0)
        log.add(
            {
                "step": step,
                "pair_ids": [f"h{i:04d}" for i in range(PAIRS)],
                "chosen": chosen.tolist(),
                "rejected": np.zeros(PAIRS).tolist(),
            }
        )
    return log


def cell(
    cell_id: str,
    won: int,
    overoptimises: bool = False,
    margin_scale: float = 1.0,
    shift: int = 0,
    seed: int | None = None,
) -> CellResult:
    objective, rank = cell_id.split("-")[0], int(cell_id.split("-r")[1].split("-")[0])
    curve = peaked if overoptimises else (lambda s: 0.5 + 0.002 * s)
    series = run(margin=lambda s: margin_scale * 0.01 * s, accuracy=curve)
    pairs = pairs_won(won, curve, shift)
    diagnosis = diagnose(series, pairs, objective=objective)
    return CellResult(cell_id, objective, rank, seed, True, diagnosis, pairs.wins())


def test_sign_test_is_exact() -> None:
    assert sign_test(0, 0) == 1.0
    assert abs(sign_test(10, 0) - 2 / 1024) < 1e-12
    assert sign_test(5, 5) == 1.0


def test_simpo_wins_one_pair_with_clean_margins_switches() -> None:
    verdict = decide([cell("dpo-r16", 70), cell("dpo-r8", 69), cell("simpo-r16", 71), cell("simpo-r8", 70)])
    assert verdict.objective == "simpo"
    assert "switch to SimPO" in verdict.reasons[0]


def test_simpo_wins_one_pair_but_overoptimises_stays() -> None:
    verdict = decide(
        [
            cell("dpo-r16", 70),
            cell("dpo-r8", 69),
            cell("simpo-r16", 71, overoptimises=True),
            cell("simpo-r8", 70, overoptimises=True),
        ]
    )
    assert verdict.objective == "dpo"
    assert "overoptimization" in verdict.reasons[0]


def test_tie_stays_with_dpo_and_is_not_decisive() -> None:
    verdict = decide([cell("dpo-r16", 70), cell("dpo-r8", 70), cell("simpo-r16", 70), cell("simpo-r8", 70)])
    assert verdict.objective == "dpo" and not verdict.decisive
    assert verdict.needs


def test_lower_rank_similar_with_lower_margins_is_preferred() -> None:
    verdict = decide(
        [cell("dpo-r16", 72), cell("dpo-r8", 71, margin_scale=0.5), cell("simpo-r16", 60), cell("simpo-r8", 60)]
    )
    assert (verdict.objective, verdict.rank) == ("dpo", 8)


def test_higher_rank_clearly_better_is_kept() -> None:
    verdict = decide(
        [cell("dpo-r16", 80), cell("dpo-r8", 70, margin_scale=0.5), cell("simpo-r16", 60), cell("simpo-r8", 60)]
    )
    assert (verdict.objective, verdict.rank) == ("dpo", 16)


def test_clear_paired_win_is_decisive() -> None:
    verdict = decide([cell("dpo-r16", 60), cell("dpo-r8", 60), cell("simpo-r16", 85), cell("simpo-r8", 80)])
    assert verdict.objective == "simpo" and verdict.decisive
    (comparison,) = verdict.comparisons
    assert comparison.only_winner == 25 and comparison.only_other == 0 and comparison.p_value < 1e-6


def test_seed_spread_that_swallows_the_difference_is_not_decisive() -> None:
    cells = [
        cell("dpo-r8-seed0", 60, seed=0),
        cell("dpo-r8-seed1", 80, seed=1),
        cell("simpo-r8-seed0", 85, seed=0),
        cell("simpo-r8-seed1", 65, seed=1),
    ]
    verdict = decide(cells)
    assert not verdict.decisive
    assert any("spread across seeds" in r for r in verdict.reasons)


def test_unfinished_cells_keep_it_open() -> None:
    cells = [cell("dpo-r16", 60), cell("simpo-r16", 85)]
    cells[0].finished = False
    verdict = decide(cells)
    assert not verdict.decisive and any("still running" in n for n in verdict.needs)


def test_no_evaluation_yet() -> None:
    result = cell("dpo-r16", 60)
    result.diagnosis.review.__dict__["heldout_pairs_won"] = None
    verdict = decide([result])
    assert verdict.objective is None and not verdict.decisive


def test_both_objectives_unstable_suggests_orpo() -> None:
    def spiky(cell_id: str) -> CellResult:
        objective, rank = cell_id.split("-")[0], int(cell_id.split("-r")[1])
        series = run(loss=lambda s: 50.0 if s % 15 == 0 else 0.5 + 0.01 * (s % 3))
        curve = lambda s: 0.5 + 0.002 * s  # noqa: E731
        pairs = pairs_won(60, curve)
        return CellResult(cell_id, objective, rank, None, True, diagnose(series, pairs), pairs.wins())

    verdict = decide([spiky("dpo-r8"), spiky("simpo-r8")])
    assert verdict.objective == "orpo" and not verdict.decisive
    assert "unstable" in verdict.reasons[0]
    steady = decide([cell("dpo-r8", 60), cell("simpo-r8", 60)])
    assert steady.objective == "dpo"


def test_an_objective_without_evaluations_yet_is_waited_for() -> None:
    waiting = cell("simpo-r8", 0)
    waiting.diagnosis.review.__dict__["heldout_pairs_won"] = None
    waiting.finished = False
    verdict = decide([cell("dpo-r8", 60), waiting])
    assert verdict.reasons[0] == "no held-out evaluation of simpo cells yet"
    assert not verdict.decisive


def test_one_objective_at_one_rank_compares_nothing() -> None:
    verdict = decide([cell("dpo-r16", 70)])
    assert verdict.objective == "dpo" and verdict.rank == 16 and not verdict.decisive
    assert verdict.reasons[0] == "one objective (dpo) and one rank (r=16): nothing was compared"
    ranks = decide([cell("dpo-r16", 80), cell("dpo-r8", 50, margin_scale=0.5)])
    assert ranks.reasons[0] == "only dpo cells to compare: the objective is not in question"


def test_cells_without_preference_metrics_are_named_not_compared() -> None:
    grpo = cell("dpo-r16", 0)
    grpo.preference, grpo.objective, grpo.id = False, "grpo", "grpo-run"
    verdict = decide([grpo])
    assert verdict.objective is None and not verdict.decisive
    assert verdict.reasons == [
        "no preference-tuned cell: nothing to compare",
        "not compared (no preference metrics): grpo-run (GRPO)",
    ]
    with_pairs = decide([cell("dpo-r16", 60), cell("dpo-r8", 60), cell("simpo-r16", 85), cell("simpo-r8", 80), grpo])
    assert with_pairs.objective == "simpo" and with_pairs.decisive
    assert with_pairs.reasons[-1].startswith("not compared")


def test_a_label_the_logs_contradict_keeps_the_objective_in_question() -> None:
    from prefwatch.core.diagnose import Finding

    cells = [cell("dpo-r16", 60), cell("dpo-r8", 60), cell("simpo-r16", 85), cell("simpo-r8", 80)]
    cells[2].diagnosis.findings.append(Finding("objective_mismatch", "error", "the folder name says simpo ..."))
    verdict = decide(cells)
    assert not verdict.decisive
    assert any("objective of simpo-r16 is in question" in r for r in verdict.reasons)


def test_held_out_accuracy_without_its_size_says_what_is_missing() -> None:
    unsized = cell("dpo-r16", 60)
    unsized.diagnosis.review.__dict__["heldout_pairs_won"] = None
    verdict = decide([unsized])
    assert verdict.reasons[0].startswith("held-out size unknown: --heldout-pairs N")
    assert any("--heldout-pairs N" in n for n in verdict.needs)


def test_an_incomplete_run_says_where_it_stopped() -> None:
    stopped = cell("dpo-r16", 60)
    stopped.finished, stopped.stopped_at, stopped.max_steps = False, 75, 100
    verdict = decide([stopped, cell("simpo-r16", 85)])
    assert not verdict.decisive
    assert any("dpo-r16 stopped at step 75 of 100" in n for n in verdict.needs)
