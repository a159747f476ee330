"""Each finding's full message, step and severity pinned, and each threshold tried on both sides of
its boundary. The numbers were worked out by hand from the TRL-shaped runs of test_diagnose.run
(margin 0.01 * step, held-out accuracy per evaluation, one row a second from t = 1001)."""

from __future__ import annotations

import math

import pytest
from test_diagnose import peaked, run

from prefwatch.core.diagnose import Diagnosis, Finding, Review, brevity_summary, diagnose, review
from prefwatch.core.series import CellSeries
from prefwatch.ingest.sources import PairLog

LN2 = math.log(2)


def only(series: CellSeries, kind: str, **kwargs) -> Finding | None:
    found = [f for f in diagnose(series, **kwargs).findings if f.kind == kind]
    assert len(found) <= 1
    return found[0] if found else None


def unfinished(steps: int = 20) -> CellSeries:
    """A train log of ``steps`` rows, one a second from t = 1001, with no end record."""
    series = CellSeries()
    for s in range(1, steps + 1):
        series.add({"loss": 0.5, "rewards/margins": 0.1, "step": s, "time": 1000.0 + s})
    return series


def test_non_finite_message() -> None:
    # grad_norm NaN from step 60: the last finite train step is 59.
    finding = only(run(extra=lambda s: {"grad_norm": math.nan} if s >= 60 else {}), "non_finite")
    assert finding == Finding(
        "non_finite", "error", "grad_norm is NaN or infinite from step 60 to the end (last finite step 59)", 60
    )
    # a held-out loss of NaN at step 10, the only evaluation: said to be held-out, never finite before
    # (issue 12: a divergence runs to the end, and no message prints None).
    series = unfinished()
    series.add({"eval_loss": math.nan, "eval_rewards/accuracies": 0.5, "step": 10, "time": 1010.5})
    finding = only(series, "non_finite")
    assert finding == Finding(
        "non_finite", "error", "held-out loss is NaN or infinite from step 10 to the end (never finite before)", 10
    )
    # a NaN in a metric nobody watches (learning_rate) is no finding
    assert only(run(extra=lambda s: {"learning_rate": math.nan}), "non_finite") is None


def test_reference_equals_policy_message_and_its_two_thresholds() -> None:
    finding = only(run(margin=lambda s: 0.0, loss=lambda s: LN2), "reference_equals_policy")
    assert finding == Finding(
        "reference_equals_policy",
        "error",
        "rewards are exactly 0 and loss is ln 2 in 100 of 100 train rows: the policy equals the reference "
        "(is the adapter trained, or the reference the adapted model?)",
        1,
    )

    def stuck(first: int, steps: int) -> CellSeries:
        return run(
            steps=steps, margin=lambda s: 0.0 if s <= first else 0.01 * s, loss=lambda s: LN2 if s <= first else 0.5
        )

    # 5 of 10 rows: at least reference_rows (5) and at least half: fires, from step 1.
    assert only(stuck(5, 10), "reference_equals_policy").message.startswith(
        "rewards are exactly 0 and loss is ln 2 in 5 of 10 "
    )
    assert only(stuck(4, 8), "reference_equals_policy") is None  # 4 rows: too few, though half
    assert only(stuck(5, 11), "reference_equals_policy") is None  # 5 of 11: less than half
    # a loss 0.001 away from ln 2 is not ln 2
    assert only(run(margin=lambda s: 0.0, loss=lambda s: LN2 + 0.0011), "reference_equals_policy") is None


def test_overoptimization_message() -> None:
    # Peak at step 30 (accuracy 0.80). Margin at the peak: the later half of steps 1..30, mean of
    # 0.16..0.30 = 0.23; now: the later half of steps 31..100, mean of 0.66..1.00 = 0.83. The last three
    # evaluations: 0.65, 0.62, 0.59 -> 0.62.
    finding = only(run(accuracy=peaked), "overoptimization")
    assert finding == Finding(
        "overoptimization",
        "warn",
        "train margin rose 0.23 -> 0.83 after step 30 while held-out accuracy peaked there at 0.80 and "
        "averages 0.62 over the last 3 evaluations",
        30,
    )


def test_overoptimization_needs_three_evaluations_after_the_peak() -> None:
    # Evaluations every 10 steps. Peak at step 70: 3 evaluations after it (80, 90, 100): fires; peak at
    # 80: only 2 after: does not.
    def peak_at(step: int):
        return lambda s: 0.5 + 0.01 * s if s <= step else 0.5 + 0.01 * step - 0.05 * (s - step) / 10

    assert only(run(accuracy=peak_at(70)), "overoptimization").step == 70
    assert only(run(accuracy=peak_at(80)), "overoptimization") is None


def test_likelihood_displacement_message() -> None:
    # Rewritten with issue 23: the rule reads DPO's reference-relative chosen reward, not raw summed train
    # log-probs. Chosen reward -0.012 (s - 1), margin 0.03 (s - 1) over 100 rows (both 0 at step 1: DPO).
    # Halves of the chosen reward: mean of (s - 1) is 24.5 and 74.5, so -0.294 and -0.894 (3 standard
    # errors of the difference: 0.105, under the 0.6 drop); below 0 on rows 2-100, 99 of 100; late window
    # (last 25 rows, mean s - 1 = 87): -1.044 = -1.04, beside a late margin of 2.61 (bar 0.25 x 2.61 =
    # 0.65); margin halves 0.735 and 2.235 (printed 2.23). The 5-row moving mean of a falling reward is
    # highest at its first row: step 1.
    below = run(margin=lambda s: 0.03 * (s - 1), chosen_reward=lambda s: -0.012 * (s - 1))
    assert only(below, "likelihood_displacement") == Finding(
        "likelihood_displacement",
        "warn",
        "chosen reward (β·log-ratio to the reference) fell -0.294 -> -0.894 and is below 0 on 99 of 100 rows "
        "(late mean -1.04) while the margin rose 0.735 -> 2.23: the chosen answers end 1.04/β nats less likely "
        "than under the reference",
        1,
    )
    # Late mean -1.044 against a late margin of 26.1 (bar 6.5): noise around the reference, no finding.
    wide = run(margin=lambda s: 0.3 * (s - 1), chosen_reward=lambda s: -0.012 * (s - 1))
    assert only(wide, "likelihood_displacement") is None
    # A margin that falls: no finding.
    falling_margin = run(margin=lambda s: -0.01 * (s - 1), chosen_reward=lambda s: -0.012 * (s - 1))
    assert only(falling_margin, "likelihood_displacement") is None
    # Summed train log-probs falling 5 nats between halves (-52.55 -> -57.55, different batches each row)
    # with rewards that rise: no finding (the old rule fired here).
    assert (
        only(run(chosen_logp=lambda s: -50 - 0.1 * s, rejected_logp=lambda s: -60 - 0.2 * s), "likelihood_displacement")
        is None
    )


def test_saturation_message_and_boundaries() -> None:
    finding = only(run(loss=lambda s: 0.001, train_accuracy=lambda s: 1.0), "saturation")
    assert finding == Finding(
        "saturation",
        "warn",
        "train loss 0.001 with every train batch ranked right: nothing left to learn from these pairs",
        1,
    )
    # the late window is the last quarter (steps 76..100): a loss under 0.01 from step 76 saturates
    # there; from step 80 the window still averages (4 x 0.5 + 21 x 0.002) / 25 = 0.08: no finding
    late = only(run(loss=lambda s: 0.5 if s < 76 else 0.002, train_accuracy=lambda s: 1.0), "saturation")
    assert late is not None and late.step == 76
    assert only(run(loss=lambda s: 0.5 if s < 80 else 0.002, train_accuracy=lambda s: 1.0), "saturation") is None
    assert only(run(loss=lambda s: 0.01, train_accuracy=lambda s: 1.0), "saturation") is None  # not below 0.01
    assert only(run(loss=lambda s: 0.001, train_accuracy=lambda s: 0.999), "saturation") is None


def test_margin_inconsistent_message_and_tolerance() -> None:
    finding = only(run(extra=lambda s: {"rewards/margins": 5.0}), "margin_inconsistent")
    assert finding == Finding(
        "margin_inconsistent",
        "warn",
        "train rewards/margins differs from chosen - rejected in 100 of 100 rows: an aggregation bug in the logger?",
        1,
    )
    # more than a tenth of the rows must be off: 11 of 100 fire (from step 5), 10 do not
    eleven = only(run(extra=lambda s: {"rewards/margins": 5.0} if 5 <= s < 16 else {}), "margin_inconsistent")
    assert eleven is not None and eleven.step == 5 and "in 11 of 100 rows" in eleven.message
    assert only(run(extra=lambda s: {"rewards/margins": 5.0} if 5 <= s < 15 else {}), "margin_inconsistent") is None
    # 1 % off (tolerance 2 % of |chosen| + |rejected|) is not off; 3 % is
    assert only(run(extra=lambda s: {"rewards/margins": 0.01 * s * 1.01}), "margin_inconsistent") is None
    assert only(run(extra=lambda s: {"rewards/margins": 0.01 * s * 1.03}), "margin_inconsistent") is not None


def test_brevity_messages() -> None:
    stats = {"train": {"chosen_shorter_share": 0.7, "mean_chosen_tokens": 30, "mean_rejected_tokens": 40}}
    head = "chosen answers are shorter than rejected ones in 70% of train pairs (mean 30 vs 40 tokens): "
    assert only(run(), "brevity_bias", data_stats=stats, objective="dpo") == Finding(
        "brevity_bias",
        "info",
        head + "a summed-log-prob reward can learn 'shorter wins'; SimPO's length-normalised reward is the remedy",
    )
    assert only(run(), "brevity_bias", data_stats=stats, objective="simpo").message.endswith(
        "this cell's length-normalised reward already addresses it"
    )
    at_threshold = {"train": {"chosen_shorter_share": 0.6}}
    assert only(run(), "brevity_bias", data_stats=at_threshold).message.startswith(
        "chosen answers are shorter than rejected ones in 60% of train pairs: "
    )
    assert only(run(), "brevity_bias", data_stats={"train": {"chosen_shorter_share": 0.59}}) is None
    assert brevity_summary(stats) == (
        "chosen answers are shorter than rejected ones in 70% of train pairs (mean 30.0 vs 40.0 tokens): "
        "consistently shorter: brevity bias, SimPO's length-normalised reward addresses it"
    )
    assert brevity_summary({"train": {"chosen_shorter_share": 0.4}}) == (
        "chosen answers are shorter than rejected ones in 40% of train pairs: not consistently shorter "
        "(the check needs 60%)"
    )
    assert brevity_summary(None) is None and brevity_summary({"train": {}}) is None


def test_stalled_message_and_threshold() -> None:
    # rows every second up to t = 1020; the threshold is max(5 x 1 s, 60 s) = 60 s of silence
    series = unfinished()
    finding = only(series, "stalled", now=1020.0 + 600, alive=True)
    assert finding == Finding(
        "stalled", "warn", "no new log line for 600 s (usually every 1 s) while the job is alive", 20
    )
    assert only(series, "stalled", now=1020.0 + 60, alive=True) is not None
    assert only(series, "stalled", now=1020.0 + 59, alive=True) is None
    assert only(unfinished(2), "stalled", now=1002.0 + 600, alive=True) is None  # too few rows to know the pace


def test_diagnosis_summaries_and_json() -> None:
    findings = [Finding("brevity_bias", "info", "m"), Finding("saturation", "warn", "m", 3)]
    diagnosis = Diagnosis(Review(train_margin_late=math.inf, heldout_pairs_won=3), findings)
    assert diagnosis.worst == "warn" and not diagnosis.clean and diagnosis.has("saturation", "x")
    assert not diagnosis.has("stalled")
    assert Diagnosis(Review(), [findings[0]]).clean  # info (brevity) is not trouble
    assert Diagnosis(Review(), []).worst is None
    assert Diagnosis(Review(), [Finding("non_finite", "error", "m"), findings[1]]).worst == "error"
    as_json = diagnosis.review.to_json()
    assert as_json["train_margin_late"] is None and as_json["heldout_pairs_won"] == 3  # inf is not JSON
    assert findings[1].to_json() == {"kind": "saturation", "severity": "warn", "message": "m", "step": 3}


def test_the_review_of_a_run() -> None:
    # margins 0.01 s over steps 1..100: halves average 0.255 and 0.755; the last quarter (76..100) of
    # chosen = margin / 2 averages 0.44; held-out: margin 0.2 at every evaluation, accuracy 0.5 + s / 500
    # rising to 0.70 at step 100 (its peak); 10 evaluations; no spike.
    r = review(run(), heldout_pairs=50)
    assert r.train_margin_early == pytest.approx(0.255) and r.train_margin_late == pytest.approx(0.755)
    assert r.late_chosen == pytest.approx(0.44) and r.late_rejected == pytest.approx(-0.44)
    assert r.heldout_margin == pytest.approx(0.2) and r.heldout_accuracy == pytest.approx(0.7)
    assert (r.peak_heldout_accuracy, r.peak_heldout_step) == (pytest.approx(0.7), 100)
    assert (r.evaluations, r.loss_spikes) == (10, 0)
    assert (r.heldout_pairs_won, r.heldout_pairs, r.heldout_pairs_source) == (35, 50, "given")
    # one train row: no early half; the late margin is that row's
    one = review(unfinished(1))
    assert one.train_margin_early is None and one.train_margin_late == pytest.approx(0.1)
    assert (one.heldout_accuracy, one.heldout_pairs_won, one.evaluations) == (None, None, 0)


def test_where_the_held_out_size_comes_from() -> None:
    # per-pair results beat everything; --heldout-pairs beats data.json; data.json beats the estimate
    # from eval_samples_per_second x eval_runtime (here 12.5 x 8 = 100); accuracy 0.7 at the end.
    series = unfinished()
    for s, accuracy in ((10, 0.6), (20, 0.7)):
        row = {"eval_rewards/accuracies": accuracy, "eval_runtime": 8.0, "eval_samples_per_second": 12.5}
        series.add({**row, "eval_rewards/margins": 0.3, "step": s, "time": 1000.0 + s + 0.5})
    stats = {"heldout_pairs": 40}
    estimated = review(series)
    assert (estimated.heldout_pairs_won, estimated.heldout_pairs, estimated.heldout_pairs_source) == (
        70,
        100,
        "estimated",
    )
    from_data = review(series, data_stats=stats)
    assert (from_data.heldout_pairs_won, from_data.heldout_pairs, from_data.heldout_pairs_source) == (
        28,
        40,
        "data.json",
    )
    given = review(series, heldout_pairs=20, data_stats=stats)
    assert (given.heldout_pairs_won, given.heldout_pairs, given.heldout_pairs_source) == (14, 20, "given")
    pairs = PairLog()
    pairs.add({"step": 100, "chosen": [1.0, 1.0, -1.0], "rejected": [0.0, 0.0, 0.0]})
    per_pair = review(series, pairs, heldout_pairs=20, data_stats=stats)
    assert (per_pair.heldout_pairs_won, per_pair.heldout_pairs, per_pair.heldout_pairs_source) == (2, 3, "per-pair")
    assert per_pair.heldout_accuracy == pytest.approx(2 / 3) and per_pair.heldout_margin == pytest.approx(1 / 3)
    # a size but no evaluation yet: the size is known, the pairs won are not
    no_eval = review(unfinished(), heldout_pairs=20)
    assert (no_eval.heldout_pairs_won, no_eval.heldout_pairs, no_eval.heldout_pairs_source) == (None, 20, "given")
    assert review(unfinished(), data_stats={"heldout_pairs": "many"}).heldout_pairs is None


def test_loss_spikes_against_the_block_before() -> None:
    # loss alternating 0.5 / 0.6 (median 0.55, MAD 0.05, scale 0.074): a row counts as a spike above
    # 0.55 + 10 x 0.074 = 1.29 in blocks of 20 after the first. 1.4 counts, 1.2 does not, one in the
    # first block has nothing before it.
    def loss(spikes: dict[int, float]) -> CellSeries:
        return run(loss=lambda s: spikes.get(s, 0.5 if s % 2 else 0.6))

    assert review(loss({30: 1.4, 50: 1.4, 90: 1.4})).loss_spikes == 3
    assert review(loss({30: 1.2, 50: 1.2})).loss_spikes == 0
    assert review(loss({5: 9.0})).loss_spikes == 0
    assert review(run(steps=39, loss=lambda s: 9.0 if s == 30 else 0.5)).loss_spikes == 0  # under two blocks
