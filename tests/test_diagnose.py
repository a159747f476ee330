"""Findings: each fires on logs that show it and stays quiet on logs that do not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefwatch.core.diagnose import Thresholds, diagnose, review
from prefwatch.core.series import CellSeries


def run(
    steps: int = 100,
    margin=lambda s: 0.01 * s,
    accuracy=lambda s: 0.5 + 0.002 * s,
    chosen_logp=lambda s: -50.0,
    rejected_logp=lambda s: -60.0,
    loss=lambda s: 0.5,
    train_accuracy=lambda s: 0.8,
    eval_every: int = 10,
    extra=lambda s: {},
    chosen_reward=None,
) -> CellSeries:
    """TRL-shaped log records of one cell, as a DPO run writes them."""
    series = CellSeries()
    for s in range(1, steps + 1):
        m = margin(s)
        series.add(
            {
                "loss": loss(s),
                "grad_norm": 1.0,
                "learning_rate": 5e-4,
                "rewards/chosen": m / 2 if chosen_reward is None else chosen_reward(s),
                "rewards/rejected": -m / 2 if chosen_reward is None else chosen_reward(s) - m,
                "rewards/margins": m,
                "rewards/accuracies": train_accuracy(s),
                "logps/chosen": chosen_logp(s),
                "logps/rejected": rejected_logp(s),
                "step": s,
                "time": 1000.0 + s,
                **extra(s),
            }
        )
        if s % eval_every == 0:
            series.add(
                {
                    "eval_loss": 0.6,
                    "eval_rewards/margins": 0.2,
                    "eval_rewards/chosen": 0.1,
                    "eval_rewards/rejected": -0.1,
                    "eval_rewards/accuracies": accuracy(s),
                    "step": s,
                    "time": 1000.0 + s,
                }
            )
    series.add({"train_runtime": 10.0, "train_loss": 0.5, "step": steps})
    return series


def kinds(series: CellSeries, **kwargs) -> set[str]:
    return {f.kind for f in diagnose(series, **kwargs).findings}


def peaked(s: int) -> float:
    return 0.5 + 0.01 * s if s <= 30 else 0.8 - 0.003 * (s - 30)


def test_healthy_run_has_no_findings() -> None:
    assert kinds(run()) == set()


def test_overoptimization_fires_with_the_peak_step() -> None:
    findings = diagnose(run(accuracy=peaked)).findings
    (finding,) = [f for f in findings if f.kind == "overoptimization"]
    assert finding.step == 30 and finding.severity == "warn"
    assert "peaked" in finding.message


def test_no_overoptimization_when_train_margin_flattens_with_heldout() -> None:
    assert "overoptimization" not in kinds(run(accuracy=peaked, margin=lambda s: min(s, 30) * 0.01))


def test_no_overoptimization_when_heldout_peaks_at_the_end() -> None:
    assert "overoptimization" not in kinds(run(accuracy=lambda s: 0.5 + 0.003 * s))


def test_likelihood_displacement_from_the_reference_relative_reward() -> None:
    """DPO's rewards/chosen = β·log π/π_ref: below 0 and falling while the margin rises is the chosen
    answer pushed below the reference. (The rule changed with issue 23: it read raw summed train
    log-probs, which different batches move by tens of nats; those alone fire nothing now.)"""
    below = run(margin=lambda s: 0.03 * (s - 1), chosen_reward=lambda s: -0.015 * (s - 1))
    (finding,) = [f for f in diagnose(below).findings if f.kind == "likelihood_displacement"]
    assert finding.severity == "warn" and "below 0 on 99 of 100 rows" in finding.message
    # The same fall beside a margin ten times larger is noise around the reference.
    small = run(margin=lambda s: 0.3 * (s - 1), chosen_reward=lambda s: -0.015 * (s - 1))
    assert "likelihood_displacement" not in kinds(small)
    # A chosen reward that rises, or a margin that falls, is no displacement.
    rising = run(margin=lambda s: 0.03 * (s - 1), chosen_reward=lambda s: 0.01 * (s - 1))
    assert "likelihood_displacement" not in kinds(rising)
    shrinking = run(margin=lambda s: -0.01 * (s - 1), chosen_reward=lambda s: -0.015 * (s - 1))
    assert "likelihood_displacement" not in kinds(shrinking)
    # The rule fires on that shrinking run's rewards once its margin rises instead.
    assert "likelihood_displacement" in kinds(
        run(margin=lambda s: 0.03 * (s - 1), chosen_reward=lambda s: -0.015 * (s - 1))
    )
    # Summed train log-probs falling by a few nats (different batches each row) say nothing alone.
    falling = run(chosen_logp=lambda s: -50 - 0.1 * s, rejected_logp=lambda s: -60 - 0.2 * s)
    assert "likelihood_displacement" not in kinds(falling)


def test_saturation() -> None:
    assert "saturation" in kinds(run(loss=lambda s: 0.001, train_accuracy=lambda s: 1.0))
    assert "saturation" not in kinds(run(loss=lambda s: 0.001, train_accuracy=lambda s: 0.9))


def test_reference_equals_policy() -> None:
    stuck = run(margin=lambda s: 0.0, loss=lambda s: math.log(2))
    assert "reference_equals_policy" in kinds(stuck)
    first_step_only = run(margin=lambda s: 0.0 if s == 1 else 0.01 * s, loss=lambda s: math.log(2) if s == 1 else 0.5)
    assert "reference_equals_policy" not in kinds(first_step_only)


def test_non_finite_gives_the_last_finite_step() -> None:
    exploding = run(extra=lambda s: {"grad_norm": math.nan} if s >= 60 else {})
    (finding,) = [f for f in diagnose(exploding).findings if f.kind == "non_finite"]
    assert finding.step == 60 and "last finite step 59" in finding.message and finding.severity == "error"


def test_a_loss_that_stays_non_finite_has_diverged() -> None:
    diverged = run(extra=lambda s: {"loss": math.inf if s >= 80 else 0.5})
    (finding,) = [f for f in diagnose(diverged).findings if f.kind.endswith("non_finite")]
    assert finding.kind == "non_finite" and finding.severity == "error"
    assert "from step 80 to the end (last finite step 79)" in finding.message
    never = run(extra=lambda s: {"loss": math.nan})
    (finding,) = [f for f in diagnose(never).findings if f.kind == "non_finite"]
    assert "never finite before" in finding.message and "None" not in finding.message


def test_intermittent_non_finite_lists_the_steps_without_a_divergence_story() -> None:
    spotty = run(extra=lambda s: {"rewards/margins": math.nan} if s in (7, 30, 31) else {})
    (finding,) = [f for f in diagnose(spotty).findings if f.kind.endswith("non_finite")]
    assert finding.kind == "intermittent_non_finite" and finding.severity == "warn"
    assert "steps 7, 30, 31" in finding.message and "last finite" not in finding.message


def test_grad_scaler_skips_are_info() -> None:
    """fp16: grad_norm NaN on a skipped step, loss finite, and the scheduler did not step."""

    skips = (1, 2, 39)

    def rate(s: int) -> float:  # the scheduler steps only after an update that was not skipped
        updates = sum(1 for done in range(1, s) if done not in skips)
        return 5e-4 * min(updates, 20) / 20

    skipped = run(extra=lambda s: {"grad_norm": math.nan if s in skips else 1.0, "learning_rate": rate(s)})
    (finding,) = [f for f in diagnose(skipped).findings if "non_finite" in f.kind or "scaler" in f.kind]
    assert finding.kind == "grad_scaler_skips" and finding.severity == "info" and "steps 1, 2, 39" in finding.message
    moving = run(extra=lambda s: {"grad_norm": math.nan if s == 50 else 1.0, "learning_rate": 1e-4 * s})
    assert {f.kind for f in diagnose(moving).findings} >= {"intermittent_non_finite"}


def test_chosen_log_probs_an_order_of_magnitude_down_is_degeneration() -> None:
    collapse = run(chosen_logp=lambda s: -360.0 if s < 20 else -13000.0, rejected_logp=lambda s: -400.0)
    (finding,) = [f for f in diagnose(collapse).findings if f.kind == "likelihood_displacement"]
    assert finding.severity == "error" and finding.message.startswith("degeneration") and finding.step == 20
    mild = run(
        chosen_logp=lambda s: -50.0 - 0.05 * s,
        rejected_logp=lambda s: -60.0 - 0.2 * s,
        margin=lambda s: 0.03 * (s - 1),
        chosen_reward=lambda s: -0.015 * (s - 1),
    )
    (finding,) = [f for f in diagnose(mild).findings if f.kind == "likelihood_displacement"]
    assert finding.severity == "warn"


def test_margin_inconsistent() -> None:
    assert "margin_inconsistent" in kinds(run(extra=lambda s: {"rewards/margins": 5.0}))


def test_brevity_bias_from_data_stats() -> None:
    stats = {"train": {"chosen_shorter_share": 0.7, "mean_chosen_tokens": 20.0, "mean_rejected_tokens": 35.0}}
    (finding,) = diagnose(run(), data_stats=stats, objective="dpo").findings
    assert finding.kind == "brevity_bias" and "SimPO" in finding.message and "70%" in finding.message
    balanced = {"train": {"chosen_shorter_share": 0.5}}
    assert kinds(run(), data_stats=balanced) == set()


def test_stalled_only_while_alive() -> None:
    series = CellSeries()
    for s in range(1, 20):
        series.add({"loss": 0.5, "step": s, "time": 1000.0 + s})
    assert "stalled" in kinds(series, now=1000.0 + 19 + 120, alive=True)
    assert "stalled" not in kinds(series, now=1000.0 + 19 + 120, alive=False)
    assert "stalled" not in kinds(series, now=1000.0 + 19 + 2, alive=True)


def test_thresholds_can_be_overridden() -> None:
    series = run(accuracy=peaked)
    assert "overoptimization" not in kinds(series, t=Thresholds(margin_rise=100.0))


def test_review_splits_train_and_eval_and_reads_trl_keys() -> None:
    r = review(run(accuracy=peaked))
    assert r.train_margin_early == pytest.approx(np.mean(np.arange(1, 51) * 0.01))
    assert r.train_margin_late == pytest.approx(np.mean(np.arange(51, 101) * 0.01))
    assert r.heldout_accuracy == pytest.approx(peaked(100))
    assert r.peak_heldout_step == 30 and r.evaluations == 10


def test_loss_spikes_are_counted_robustly() -> None:
    from prefwatch.core.diagnose import count_loss_spikes

    rng = np.random.default_rng(0)
    noisy = 0.5 + 0.05 * rng.standard_normal(200)
    assert count_loss_spikes(noisy) == 0
    noisy[[50, 120, 180]] = 9.0
    assert count_loss_spikes(noisy) == 3
