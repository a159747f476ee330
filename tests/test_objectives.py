"""What trained a cell, from records shaped like each trainer's own logging code."""

from __future__ import annotations

import math

import pytest

from prefwatch.core.objectives import Claim, infer, mismatch, name_objective
from prefwatch.core.series import CellSeries


def logs(rows: list[dict]) -> CellSeries:
    series = CellSeries()
    for step, row in enumerate(rows, start=1):
        series.add({"step": step, **row})
    return series


def dpo_rows(loss0: float = math.log(2)) -> list[dict]:
    """DPOTrainer: rewards β·(policy − reference) are 0 before the first update, then drift off 0."""
    rows = [{"loss": loss0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}]
    for s in range(2, 10):
        rows.append(
            {"loss": 0.6, "rewards/chosen": -0.01 * s, "rewards/rejected": -0.03 * s, "rewards/margins": 0.02 * s}
        )
    return rows


def test_dpo_and_ipo_from_the_zero_start_and_the_first_loss() -> None:
    dpo = infer(logs(dpo_rows()))
    assert dpo.objective == "dpo" and "0 at step 1" in dpo.evidence
    ipo = infer(logs(dpo_rows(loss0=25.0)))  # (1/2β)² with β = 0.1
    assert ipo.objective == "ipo" and "squared" in ipo.evidence


def test_a_positive_reward_is_reference_relative() -> None:
    late_start = [{"loss": 0.5, "rewards/chosen": c, "rewards/rejected": -0.5} for c in (-0.2, 0.1, 0.3)]
    assert infer(logs(late_start)).objective == "dpo"


def test_simpo_cpo_rewards_are_beta_times_the_mean_log_probability() -> None:
    rows = [
        {
            "loss": 1.3,
            "rewards/chosen": 2.0 * lp,
            "rewards/rejected": 2.0 * (lp - 0.1),
            "logps/chosen": lp,
            "nll_loss": 0.0,
        }
        for lp in (-5.55, -5.2, -4.9, -4.1)
    ]
    inference = infer(logs(rows))
    assert inference.objective == "simpo" and "2 × logps/chosen" in inference.evidence
    assert "nll_loss" in inference.evidence
    # A SimPO subclass of DPOTrainer logs summed log-probs and their per-token mean beside them.
    summed = [
        {"rewards/chosen": 0.1 * a, "logps/chosen": a * n, "avg_logps/chosen": a} for a, n in ((-1.4, 250), (-1.6, 240))
    ]
    assert "avg_logps/chosen" in infer(logs(summed)).evidence


def test_rewards_that_say_nothing_leave_it_open() -> None:
    rows = [{"rewards/chosen": c, "rewards/rejected": c - 0.1, "logps/chosen": -100.0 - c} for c in (-0.5, -0.7)]
    inference = infer(logs(rows))
    assert inference.objective is None and inference.preference is True and "cannot be told" in inference.evidence


@pytest.mark.parametrize(
    "row, objective, preference",
    [
        ({"loss": 1.0, "log_odds_ratio": 0.2, "log_odds_chosen": 0.1, "rewards/chosen": -0.1}, "orpo", True),
        ({"loss": 1.0, "odds_ratio_loss": 9.0, "sft_loss": 0.03, "rewards/chosen": -0.1}, "orpo", True),
        (
            {"loss": 0.5, "kl": 0.0, "rewards/chosen_sum": 1.0, "logps/chosen_sum": -30.0, "count/chosen": 4},
            "kto",
            True,
        ),
        ({"loss": 0.5, "kl": 0.1, "rewards/chosen": 0.2, "rewards/rejected": -0.1}, "kto", True),
        ({"loss": 0.0, "reward": 0.4, "reward_std": 0.3, "kl": 0.001}, "grpo", False),
        ({"objective/rlhf_reward": 1.0, "objective/kl": 0.1, "loss/policy_avg": 0.2}, "ppo", False),
        ({"loss": 2.1, "mean_token_accuracy": 0.5, "entropy": 1.2, "num_tokens": 4000}, "sft", False),
        ({"loss": 2.1, "grad_norm": 1.0, "learning_rate": 1e-5}, None, False),
    ],
)
def test_trainers_name_themselves_by_their_keys(row: dict, objective: str | None, preference: bool) -> None:
    inference = infer(logs([row, row]))
    assert (inference.objective, inference.preference) == (objective, preference)
    assert "?" not in inference.words


def test_nothing_logged_is_not_a_guess() -> None:
    assert infer(CellSeries()).words == "unknown"
    summary_only = logs([{"train_runtime": 5.0, "train_loss": 0.9}])
    assert infer(summary_only).words == "no preference metrics" and "summary" in infer(summary_only).evidence


def test_names_with_two_objectives_are_ambiguous() -> None:
    assert name_objective("dpo-mix-simpo") == (None, "the name holds both dpo and simpo")
    assert name_objective("cpo_r16") == ("simpo", None)
    assert name_objective("runs-x-adapters") == (None, None)


def test_mismatch_names_both_and_the_evidence() -> None:
    dpo = infer(logs(dpo_rows()))
    why = mismatch(Claim("simpo", "folder name"), dpo)
    assert why is not None and "folder name says simpo" in why and "DPO" in why and "0 at step 1" in why
    assert mismatch(Claim("dpo", "cell.json"), dpo) is None
    assert mismatch(Claim("simpo", "--label"), infer(logs([{"loss": 1.0}]))) is None
