"""The diagnosis rules at their edges, each case built row by row so the expected finding can be worked
out by hand: non-finite values told apart (diverged, grad-scaler skips, intermittent; how steps are
listed), the moving mean, degeneration and displacement of the chosen log-probability, a label the logs
contradict, a stall, and an inconsistent held-out margin."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prefwatch.core import metrics as m
from prefwatch.core.diagnose import (
    DEFAULT,
    ERROR,
    INFO,
    WARN,
    Finding,
    brevity_bias,
    brevity_summary,
    degeneration,
    diagnose,
    falls,
    likelihood_displacement,
    margin_inconsistent,
    non_finite,
    objective_mismatch,
    smooth,
    stalled,
)
from prefwatch.core.objectives import Claim, Inference
from prefwatch.core.series import CellSeries, median, row_medians

NAN = math.nan


def series_of(rows: list[dict[str, Any]]) -> CellSeries:
    """Train rows; each gets a step (its position from 1) and a time a second apart unless it says."""
    series = CellSeries()
    series.add_all([{"step": i, "time": 1000.0 + i, **row} for i, row in enumerate(rows, start=1)])
    return series


def healthy(**changes: float) -> dict[str, float]:
    return {m.LOSS: 0.5, m.GRAD_NORM: 1.0, m.LEARNING_RATE: 1e-4, m.MARGINS: 0.5, **changes}


def only(findings: list[Finding]) -> tuple[str, str, str, int | None]:
    (finding,) = findings
    return finding.kind, finding.severity, finding.message, finding.step


# ---- non-finite values ---------------------------------------------------------------------------


def test_a_loss_non_finite_to_the_end_diverged() -> None:
    rows = [healthy() for _ in range(4)] + [healthy(loss=NAN) for _ in range(3)]
    assert only(non_finite(series_of(rows))) == (
        "non_finite",
        ERROR,
        "loss is NaN or infinite from step 5 to the end (last finite step 4)",
        5,
    )


def test_a_value_non_finite_between_the_last_two_finite_rows_is_intermittent() -> None:
    rows = [healthy() for _ in range(8)] + [healthy(**{m.MARGINS: NAN}), healthy()]
    assert only(non_finite(series_of(rows))) == (
        "intermittent_non_finite",
        WARN,
        "rewards/margins is NaN or infinite at step 9 (finite again after)",
        9,
    )


def test_grad_norm_skips_with_the_learning_rate_held_are_the_grad_scaler() -> None:
    rows = [healthy() for _ in range(10)]
    rows[2] = healthy(grad_norm=NAN)
    rows[4] = healthy(grad_norm=NAN)
    assert only(non_finite(series_of(rows))) == (
        "grad_scaler_skips",
        INFO,
        "grad_norm is NaN at steps 3, 5 with a finite loss and the learning rate held: "
        "the mixed-precision grad scaler skipped those updates (normal)",
        3,
    )
    one = [healthy() for _ in range(10)]
    one[9] = healthy(grad_norm=NAN)  # the last row: no next row says otherwise
    assert only(non_finite(series_of(one)))[:3] == (
        "grad_scaler_skips",
        INFO,
        "grad_norm is NaN at step 10 with a finite loss and the learning rate held: "
        "the mixed-precision grad scaler skipped those updates (normal)",
    )


def test_grad_norm_non_finite_while_the_learning_rate_moves_is_intermittent() -> None:
    rows = [healthy(learning_rate=1e-4 * (i + 1)) for i in range(10)]
    rows[8] = healthy(grad_norm=NAN, learning_rate=9e-4)  # step 9; the rate moves at step 10
    assert only(non_finite(series_of(rows))) == (
        "intermittent_non_finite",
        WARN,
        "grad_norm is NaN or infinite at step 9 (finite again after)",
        9,
    )


def test_grad_norm_on_the_last_row_with_the_loss_is_the_last_row() -> None:
    rows = [healthy() for _ in range(9)] + [healthy(loss=NAN, grad_norm=NAN)]
    findings = {f.kind: (f.message, f.step) for f in non_finite(series_of(rows))}
    assert findings == {
        "non_finite": ("loss is NaN or infinite from step 10 to the end (last finite step 9)", 10),
        "intermittent_non_finite": ("grad_norm is NaN or infinite at step 10 (the last row)", 10),
    }
    two = [healthy() for _ in range(8)] + [healthy(grad_norm=NAN) for _ in range(2)]
    assert only(non_finite(series_of(two)))[:2] == ("non_finite", ERROR)  # two rows of grad_norm: diverged


def test_a_grad_norm_skip_with_a_non_finite_loss_is_not_the_scaler() -> None:
    rows = [healthy() for _ in range(10)]
    rows[2] = healthy(loss=NAN, grad_norm=NAN)
    kinds = {f.kind: f.message for f in non_finite(series_of(rows))}
    assert kinds == {
        "intermittent_non_finite": "loss is NaN or infinite at step 3 (finite again after); "
        "grad_norm is NaN or infinite at step 3 (finite again after)"
    }


def test_many_steps_are_listed_up_to_eight() -> None:
    eight = [healthy(**{m.MARGINS: NAN}) if i % 2 else healthy() for i in range(17)]  # steps 2, 4, ... 16
    assert only(non_finite(series_of(eight)))[2] == (
        "rewards/margins is NaN or infinite at steps 2, 4, 6, 8, 10, 12, 14, 16 (finite again after)"
    )
    nine = [healthy(**{m.MARGINS: NAN}) if i % 2 else healthy() for i in range(19)]
    assert only(non_finite(series_of(nine)))[2] == (
        "rewards/margins is NaN or infinite at steps 2, 4, 6, 8, 10, 12, 14, 16 … (9 in all) (finite again after)"
    )


def test_rows_count_when_they_logged_anything_and_only_from_the_first_bad_step() -> None:
    # Step 1 logged no loss (only grad_norm); step 2 a NaN loss beside a metric sorted first; step 3 a NaN
    # loss beside one sorted last. Steps 2 and 3 are the bad ones; step 1 is before the first.
    rows: list[dict[str, float]] = [
        {m.GRAD_NORM: 1.0},
        {m.LOSS: NAN, "aaa": 1.0},
        {m.LOSS: NAN, "zzz": 1.0},
        {m.LOSS: 0.5, "zzz": 1.0},
    ]
    assert only(non_finite(series_of(rows)))[2] == "loss is NaN or infinite at steps 2, 3 (finite again after)"


def test_a_non_finite_value_cut_away_by_a_resume_is_reported_where_the_reader_saw_it() -> None:
    series = series_of([healthy() for _ in range(7)] + [healthy(loss=NAN)] + [healthy() for _ in range(2)])
    series.add({"step": 6, "time": 2000.0, **healthy()})  # resumed at step 6: steps 6..10 replaced
    series.add({"step": 7, "time": 2001.0, **healthy()})
    series.add({"step": 8, "time": 2002.0, **healthy()})
    assert only(non_finite(series))[2:] == ("loss is NaN or infinite at step 8 (finite again after)", 8)
    earlier = series_of([healthy() for _ in range(7)] + [healthy(loss=NAN)] + [healthy() for _ in range(2)])
    earlier.add({"step": 5, "time": 2000.0, **healthy()})  # nothing from step 8 on is left: the last row
    assert only(non_finite(earlier))[2:] == ("loss is NaN or infinite at step 5 (finite again after)", 5)


# ---- the moving mean -----------------------------------------------------------------------------


def test_smooth_is_a_centred_mean_that_skips_nan() -> None:
    assert list(smooth(np.array([0.0, 3.0, 6.0, 9.0]), 3)) == [1.5, 3.0, 6.0, 7.5]
    assert list(smooth(np.array([0.0, 3.0, 6.0, 9.0]), 2)) == [0.0, 1.5, 4.5, 7.5]
    assert list(smooth(np.array([0.0, NAN, 6.0]), 3)) == [0.0, 3.0, 6.0]
    assert np.isnan(smooth(np.array([NAN, NAN, 4.0]), 3)[:1]).all()
    assert list(smooth(np.array([NAN, NAN, 4.0]), 3)[1:]) == [4.0, 4.0]
    values = np.array([1.0, math.inf, NAN])
    same = smooth(values, 1)  # a window of one leaves the values as they are
    assert same[0] == 1.0 and same[1] == math.inf and np.isnan(same[2])


# ---- the chosen log-probability ------------------------------------------------------------------


def test_degeneration_edges() -> None:
    t = DEFAULT
    start = -0.0625  # 10x lower is -0.625; a drop of 1 nat is -1.0625
    rows = np.array([start] * 3 + [-0.625] + [start - 1.0] * 4)  # 8 finite rows: enough
    assert degeneration(rows, t) == (start, start - 1.0, 3)  # late mean just 1 nat lower; first row at 10x
    assert degeneration(rows[:7], t) is None  # 7 rows: not enough
    shallow = np.array([start] * 4 + [-0.7] * 4)  # 10x lower but less than 1 nat lower
    assert degeneration(shallow, t) is None
    exact = np.array([-2.0] * 4 + [-20.0] * 4)  # exactly 10x lower
    assert degeneration(exact, t) == (-2.0, -20.0, 4)
    assert degeneration(np.array([0.0] * 4 + [-50.0] * 4), t) is None  # a start at 0 has no 10x
    # The start is the median of the first max(3, n // 20) rows: 4 of 80 here.
    eighty = np.array([-1.0, -1.0, -3.0, -3.0] + [-2.0] * 56 + [-40.0] * 20)
    assert degeneration(eighty, t) == (-2.0, -40.0, 60)


def test_degeneration_is_an_error_with_its_numbers() -> None:
    rows = [healthy(**{m.LOGPS_CHOSEN: -2.0}) for _ in range(4)] + [
        healthy(**{m.LOGPS_CHOSEN: -40.0}) for _ in range(4)
    ]
    assert only([f for f in [likelihood_displacement(series_of(rows), DEFAULT)] if f]) == (
        "likelihood_displacement",
        ERROR,
        "degeneration: chosen log-prob fell from -2 at the start to -40 late in the run (20× lower): "
        "the model no longer gives the chosen answers their probability",
        5,
    )


def test_displacement_while_the_margin_rises_is_a_warning_at_the_chosen_peak() -> None:
    # Per-token mean log-probs (SimPO: rewards = 2 × logps on every row), rewritten with issue 23 (the rule
    # reads per-token log-probs where the trainer logs them, not summed ones of different batches).
    # Chosen -1.0 -> -1.2 (one row at -0.95, step 6), rejected -1.1 -> -1.4 over 20 rows; margin 2 × (c - r):
    # halves 0.21 and 0.4. The chosen halves: -0.995 and -1.2, a drop of 0.205 nats a token (> 0.05, and
    # > 3 standard errors: 0.015). The peak is that of the chosen log-prob's 5-row moving mean: every
    # window holding step 6 ties; the first is step 4.
    rows = []
    for i in range(20):
        late_ = i >= 10
        chosen = (-1.2 if late_ else -1.0) + (0.05 if i == 5 else 0.0)
        rejected = -1.4 if late_ else -1.1
        rows.append(
            healthy(
                **{
                    m.LOGPS_CHOSEN: chosen,
                    m.LOGPS_REJECTED: rejected,
                    m.CHOSEN: 2 * chosen,
                    m.REJECTED: 2 * rejected,
                    m.MARGINS: 2 * (chosen - rejected),
                }
            )
        )
    finding = likelihood_displacement(series_of(rows), DEFAULT)
    assert finding is not None
    assert (finding.kind, finding.severity, finding.step) == ("likelihood_displacement", WARN, 4)
    assert finding.message.startswith(
        "chosen logps/chosen (per token) fell -0.995 -> -1.2 while the margin rose 0.21 -> 0.4"
    )
    flat = [dict(r, **{m.MARGINS: 0.2}) for r in rows]  # the margin did not rise: no warning
    assert likelihood_displacement(series_of(flat), DEFAULT) is None
    # The same log-probs summed over the answers' tokens (x 100, below -10: summed) fall 20 nats between
    # halves of different batches: no train-row finding.
    summed = [
        dict(r, **{m.LOGPS_CHOSEN: 100 * r[m.LOGPS_CHOSEN], m.LOGPS_REJECTED: 100 * r[m.LOGPS_REJECTED]}) for r in rows
    ]
    assert likelihood_displacement(series_of(summed), DEFAULT) is None


def test_falls_needs_eight_values_and_more_than_the_drop() -> None:
    assert falls(np.array([0.0] * 4 + [-2.0] * 4), 1.0, 3.0) == (0.0, -2.0)
    assert falls(np.array([0.0] * 3 + [-2.0] * 4), 1.0, 3.0) is None  # 7 values
    assert falls(np.array([0.0] * 4 + [-1.0] * 4), 1.0, 3.0) is None  # exactly the drop: not more


# ---- labels, stalls, margins ---------------------------------------------------------------------


def test_a_label_the_logs_contradict() -> None:
    claim = Claim("dpo", "folder name")
    logs = Inference("simpo", True, "rewards are 2 × logps")
    assert objective_mismatch(claim, logs) == Finding(
        "objective_mismatch",
        ERROR,
        "the folder name says dpo but the logs are SimPO/CPO: rewards are 2 × logps",
        None,
    )
    assert objective_mismatch(None, logs) is None and objective_mismatch(claim, None) is None
    assert objective_mismatch(Claim("simpo", "folder name"), logs) is None
    (finding,) = diagnose(series_of([healthy()]), claim=claim, inference=logs).findings
    assert finding.kind == "objective_mismatch"


def test_stall_edges() -> None:
    t = DEFAULT
    three = series_of([healthy() for _ in range(3)])  # times 1001..1003: three are enough
    assert stalled(three, 1003 + 61, True, t) is not None
    assert stalled(three, 1003 + 61, False, t) is None
    assert diagnose(three, now=1003 + 61).findings == []  # not alive unless told
    assert stalled(series_of([healthy() for _ in range(2)]), 2000, True, t) is None
    three.add({"train_runtime": 3.0, "step": 3})
    assert stalled(three, 1003 + 61, True, t) is None  # finished
    # The usual interval is the median of the last stall_history intervals.
    spaced = CellSeries()
    spaced.add_all([{"step": i + 1, "time": s, m.LOSS: 0.5} for i, s in enumerate([0.0, 1.0, 2.0, 102.0, 202.0])])
    recent = dataclasses.replace(t, stall_history=3)
    finding = stalled(spaced, 202.0 + 1000, True, recent)
    assert finding is not None and finding.message == (
        "no new log line for 1000 s (usually every 1e+02 s) while the job is alive"
    )
    assert stalled(spaced, 202.0 + 400, True, recent) is None  # 400 s is under 5 x 100 s


def test_an_inconsistent_held_out_margin() -> None:
    series = CellSeries()
    for step in range(1, 11):
        margin = 5.0 if step in (3, 7) else 1.0  # 2 of 10 rows: more than max(1, 10 %)
        series.add(
            {"step": step, "eval_rewards/chosen": 0.5, "eval_rewards/rejected": -0.5, "eval_rewards/margins": margin}
        )
    assert margin_inconsistent(series, DEFAULT) == Finding(
        "margin_inconsistent",
        WARN,
        "held-out rewards/margins differs from chosen - rejected in 2 of 10 rows: an aggregation bug in the logger?",
        3,
    )


def test_brevity_at_the_threshold_and_with_one_length_missing() -> None:
    at = {"train": {"chosen_shorter_share": 0.6, "mean_chosen_tokens": 20.0}}  # no rejected length
    assert brevity_summary(at) == (
        "chosen answers are shorter than rejected ones in 60% of train pairs: "
        "consistently shorter: brevity bias, SimPO's length-normalised reward addresses it"
    )
    finding = brevity_bias(at, "dpo", DEFAULT)
    assert finding is not None and finding.message == (
        "chosen answers are shorter than rejected ones in 60% of train pairs: "
        "a summed-log-prob reward can learn 'shorter wins'; SimPO's length-normalised reward is the remedy"
    )


@given(
    st.integers(1, 25).flatmap(
        lambda width: st.lists(
            st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=64), min_size=width, max_size=width),
            min_size=1,
            max_size=12,
        )
    )
)
@settings(max_examples=300, deadline=None)
def test_the_spike_rule_s_row_medians_are_numpy_s_medians(rows: list[list[float]]) -> None:
    """The loss-spike rule takes block medians with np.partition (numpy's median wrapper cost a quarter of
    a large log's analysis): bit for bit what np.median gives, odd and even widths, ties and signs."""
    grouped = np.array(rows)
    assert np.array_equal(row_medians(grouped), np.median(grouped, axis=1))
    assert median(grouped[0]) == np.median(grouped[0])  # the one-row form the other rules use
