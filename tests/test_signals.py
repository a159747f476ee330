"""Findings read from the signal that carries them (issue 23): a frozen run from its gradient norm and
its repeating log-probs, NaN and Infinity in every encoding a store uses. Records are shaped like TRL
DPOTrainer's own logging (dpo_trainer.py:1051-1058 @ v0.7.11: rewards/*, logps/*, logits/*) where no
published log shows the case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from prefwatch.core.diagnose import DEFAULT, Finding, Thresholds, diagnose
from prefwatch.core.series import CellSeries
from prefwatch.ingest.discover import open_path

BATCHES = 10  # a data set of 10 batches, seen twice over 20 steps


def dpo_rows(steps: int = 20, grad_norm=lambda s: 1.5, moving: bool = True) -> list[dict]:
    """DPOTrainer records of a run over 10 batches (the same batch every 10 steps). A moving policy
    changes every value a little each step; a frozen one gives each batch the same values again."""
    rows = []
    for s in range(1, steps + 1):
        batch = (s - 1) % BATCHES
        drift = 0.013 * s if moving else 0.0
        chosen, rejected = -250.0 - 7.0 * batch - drift, -260.0 - 5.0 * batch - 3 * drift
        rows.append(
            {
                "loss": 0.69 - 0.004 * batch,
                "grad_norm": grad_norm(s),
                "learning_rate": 5e-6,
                "rewards/chosen": 0.1 * (0.2 + 0.01 * batch - drift),
                "rewards/rejected": 0.1 * (0.1 - 0.02 * batch - 3 * drift),
                "rewards/margins": 0.1 * (0.1 + 0.03 * batch + 2 * drift),
                "rewards/accuracies": 0.5,
                "logps/chosen": chosen,
                "logps/rejected": rejected,
                "logits/chosen": -1.4,
                "logits/rejected": -1.3,
                "epoch": s / BATCHES,
                "step": s,
            }
        )
    return rows


def series_of(rows: list[dict]) -> CellSeries:
    series = CellSeries()
    series.add_all(rows)
    return series


def findings(rows: list[dict], t: Thresholds = DEFAULT) -> dict[str, Finding]:
    return {f.kind: f for f in diagnose(series_of(rows), t=t).findings}


def test_a_run_whose_grad_norm_is_zero_and_whose_batches_repeat_is_frozen() -> None:
    """Issue 23's case: grad_norm exactly 0.0 on all 20 rows, and 20 rows showing only 10 distinct
    log-probs (each batch seen again through the same weights): an error, from the first step."""
    found = findings(dpo_rows(grad_norm=lambda s: 0.0, moving=False))
    frozen = found["frozen"]
    assert frozen.severity == "error" and frozen.step == 1
    assert "grad_norm is exactly 0 on 20 consecutive rows (steps 1-20)" in frozen.message
    assert "10 of those rows repeat" in frozen.message


def test_repeating_rows_alone_are_frozen_and_the_count_is_exact() -> None:
    rows = dpo_rows(moving=False)  # grad_norm 1.5 (a logger's figure), values of each batch repeat exactly
    frozen = findings(rows)["frozen"]
    assert frozen.severity == "error" and frozen.step == 11 and frozen.message.startswith("10 of the last 20")
    # Four repeats is below frozen_rows (5): no finding; with frozen_rows 4 it fires.
    assert "frozen" not in findings(rows[:14])
    assert "frozen" in findings(rows[:14], Thresholds(frozen_rows=4))


def test_a_zero_grad_norm_beside_moving_rewards_is_the_logger_not_the_run() -> None:
    """trl issue 1778: grad_norm 0.0 printed while rewards/chosen is 1.109375 (DeepSpeed ZeRO-3 reports 0):
    rewards and log-probs that differ on every row show a policy that moves."""
    assert "frozen" not in findings(dpo_rows(grad_norm=lambda s: 0.0, moving=True))


def test_a_few_zero_grad_norms_are_not_frozen() -> None:
    """An fp16 run skips a step now and then (simpo-training: runs of at most 2 zero rows)."""
    assert "frozen" not in findings(dpo_rows(grad_norm=lambda s: 0.0 if s in (3, 4, 9, 10, 11, 12) else 1.5))
    assert "frozen" in findings(dpo_rows(grad_norm=lambda s: 0.0 if 3 <= s <= 7 else 1.5, moving=False))


def test_a_loss_only_log_with_a_zero_grad_norm_is_frozen() -> None:
    rows = [{"loss": 2.0 - 0.01 * s, "grad_norm": 0.0, "step": s} for s in range(1, 9)]
    assert findings(rows)["frozen"].severity == "error"


def test_rewards_exactly_zero_repeating_are_the_reference_not_a_frozen_run() -> None:
    rows = dpo_rows()
    for row in rows:
        row.update({"rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0})
        row.pop("logps/chosen")
        row.pop("logps/rejected")
    assert "frozen" not in findings(rows)


# ---- NaN and Infinity in every encoding -------------------------------------------------------------

SPELLINGS = ["NaN", '"NaN"', '"nan"', '"Infinity"', '"-Infinity"', "Infinity"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_non_finite_value_in_any_spelling_is_a_non_finite_finding(spelling: str, tmp_path: Path) -> None:
    """metrics.jsonl with the loss diverging at step 6: Python's json writes a bare NaN token, other
    writers the string "NaN" or "Infinity". Each reads as the same finding, and nothing is rejected."""
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for s in range(1, 11):
        loss = spelling if s >= 6 else str(0.5 - 0.01 * s)
        lines.append(f'{{"loss": {loss}, "rewards/margins": {0.01 * s}, "step": {s}, "time": {1000 + s}}}')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    grid = open_path(run)
    grid.poll()
    series = grid.cells[0].series
    assert not series.rejected and series.first_non_finite[("train", "loss")] == 6
    (finding,) = [f for f in diagnose(series).findings if f.kind == "non_finite"]
    assert finding.severity == "error" and "loss is NaN or infinite from step 6 to the end" in finding.message


def test_a_string_that_is_not_a_non_finite_number_is_still_rejected() -> None:
    series = CellSeries()
    series.add({"loss": "0.5", "step": 1})
    series.add({"loss": "NaNa", "step": 2})
    assert series.rejected["wrong type"] == 2 and not series.first_non_finite


@pytest.mark.skipif(find_spec("trackio") is None, reason="needs trackio")
def test_a_trackio_store_keeps_nan_as_a_string_and_it_is_flagged(tmp_path: Path) -> None:
    """Real trackio (its client, in a child process) stores NaN as the string "NaN" and inf as
    "Infinity" in its metrics JSON; a diverged run reads as non_finite, as through MLflow or W&B."""
    script = (
        "import trackio\n"
        "trackio.init(project='diverged', name='simpo-r8')\n"
        "for s in range(1, 7):\n"
        "    bad = s >= 4\n"
        "    trackio.log({'train/loss': float('nan') if bad else 1.0 - 0.1 * s,\n"
        "                 'train/rewards/chosen': float('inf') if bad else -1.0, 'train/global_step': s})\n"
        "trackio.finish()\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=300)
    (db,) = tmp_path.glob("*.db")
    import sqlite3

    stored = [json.loads(r[0]) for r in sqlite3.connect(db).execute("SELECT metrics FROM metrics ORDER BY id")]
    assert stored[-1]["train/loss"] == "NaN" and stored[-1]["train/rewards/chosen"] == "Infinity"
    grid = open_path(db)
    grid.poll()
    series = grid.cells[0].series
    assert series.first_non_finite[("train", "loss")] == 4
    (finding,) = [f for f in diagnose(series).findings if f.kind == "non_finite"]
    assert "loss is NaN or infinite from step 4 to the end (last finite step 3)" in finding.message


# ---- summed log-probs compared only within the same examples ---------------------------------------


def with_evaluations(eval_chosen: list[float], eval_margin: list[float]) -> CellSeries:
    """A moving DPO run (rewards up, no train-row sign of displacement) evaluated every 5 steps on the
    same held-out pairs: eval_logps/chosen is the mean over the same examples each time."""
    series = series_of(dpo_rows())
    for i, (chosen, margin) in enumerate(zip(eval_chosen, eval_margin), start=1):
        series.add(
            {
                "eval_loss": 0.6,
                "eval_rewards/chosen": 0.1,
                "eval_rewards/rejected": 0.1 - margin,
                "eval_rewards/margins": margin,
                "eval_rewards/accuracies": 0.7,
                "eval_logps/chosen": chosen,
                "eval_logps/rejected": chosen - 10.0,
                "step": 5 * i,
            }
        )
    return series


def test_held_out_chosen_log_probs_falling_on_the_same_examples_are_displacement() -> None:
    falling = with_evaluations([-301.2, -302.0, -303.1, -304.4], [0.1, 0.4, 0.8, 1.2])
    (finding,) = [f for f in diagnose(falling).findings if f.kind == "likelihood_displacement"]
    assert finding.severity == "warn" and finding.step == 20
    assert "fell -301.2 -> -304.4 over 4 evaluations" in finding.message and "rose 0.1 -> 1.2" in finding.message
    # Under 1 nat (logp_drop), or two evaluations only, or a held-out margin that falls: no finding.
    assert not [
        f
        for f in diagnose(with_evaluations([-301.2, -301.5, -301.9], [0.1, 0.4, 0.8])).findings
        if f.kind == "likelihood_displacement"
    ]
    assert not [
        f
        for f in diagnose(with_evaluations([-301.2, -304.4], [0.1, 1.2])).findings
        if f.kind == "likelihood_displacement"
    ]
    assert not [
        f
        for f in diagnose(with_evaluations([-301.2, -302.0, -304.4], [1.2, 0.8, 0.1])).findings
        if f.kind == "likelihood_displacement"
    ]


def test_a_kto_margin_averaged_over_other_batches_than_its_rewards_is_not_inconsistent() -> None:
    """TRL 1.5+ KTO appends rewards/margins only for batches holding both classes, each reward for the
    batches holding it (kto_trainer.py:1637-1655 @ v1.9.0): averaged over a logging window they differ."""
    from prefwatch.core.objectives import infer

    rows = [{"loss": 0.5, "kl": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0, "step": 1}]
    for s in range(2, 21):
        rows.append(
            {
                "loss": 0.45,
                "kl": 0.1,
                "rewards/chosen": 0.05 * s,
                "rewards/rejected": -0.02 * s,
                "rewards/margins": 0.05 * s,  # the batches holding both classes only
                "logps/chosen": -40.0 - s,
                "logps/rejected": -80.0 - s,
                "step": s,
            }
        )
    series = series_of(rows)
    assert infer(series).objective == "kto"
    assert "margin_inconsistent" not in {f.kind for f in diagnose(series, inference=infer(series)).findings}
    dpo = [{**r, "rewards/accuracies": 0.5} for r in rows]  # the same numbers logged by DPOTrainer: flagged
    dpo = [{k: v for k, v in r.items() if k != "kl"} for r in dpo]
    assert "margin_inconsistent" in {f.kind for f in diagnose(series_of(dpo)).findings}
