"""analyse() and what it hands on: each cell's JSON (what was read, from where, what was found), the
verdict compared at the final or the best evaluation, and a cell's result for the verdict (seed, steps,
where an unfinished run stopped, whether it is a preference run).

In-process and from real files: crafted run directories (tests/crafted.py) and plain folders of logs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from crafted import Cell, write_grid

from prefwatch.analysis.analyse import analyse, cell_result, objective_source
from prefwatch.analysis.peak import At
from prefwatch.core.diagnose import DEFAULT
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.readers.jsonl import MetricsLog
from prefwatch.ingest.sources import CellSource

BREVITY = {"train": {"chosen_shorter_share": 0.7, "mean_chosen_tokens": 20, "mean_rejected_tokens": 30}}


def opened(path: Path):  # type: ignore[no-untyped-def]
    grid = open_path(path)
    grid.poll()
    return grid


def crafted_grid(tmp_path: Path) -> Path:
    """simpo-r8 (seed 3) wins 80 pairs at its last evaluation; dpo-r8 peaks at 70 at step 30 and ends at 60.
    simpo-r8 has data statistics that show a brevity bias, and one line of its log is not JSON."""
    run = write_grid(
        tmp_path,
        "g",
        [
            Cell("simpo-r8", "simpo", 8, 80, train_margin=2.0, heldout_margin=1.5, seed=3),
            Cell("dpo-r8", "dpo", 8, 60, peaked=True),
        ],
    )
    (run / "cells" / "simpo-r8" / "data.json").write_text(json.dumps(BREVITY))
    with open(run / "cells" / "simpo-r8" / "metrics.jsonl", "a") as f:
        f.write("not json\n")
    return run


def test_a_cells_json_says_what_was_read_and_what_was_found(tmp_path: Path) -> None:
    run = crafted_grid(tmp_path)
    analysis = analyse(opened(run))
    report = analysis.to_json()
    assert (report["grid"], report["path"], report["verdict"]["at"]) == ("g", str(run), "final")
    simpo = analysis.cells[0]
    # crafted.py: the train margin is 1.0 over the first half and 2.0 over the second, SimPO's rewards sit
    # around -10 (late chosen -9, rejected -11), 80 of 100 pairs right at the last of 10 evaluations,
    # which is also the best; 100 train rows, 10 evaluations and the end record; the bad line rejected.
    assert report["cells"][0] == {
        "id": "simpo-r8",
        "objective": "simpo",
        "rank": 8,
        "seed": 3,
        "objective_source": "logs",
        "rank_source": "cell.json",
        "label": {"objective": "simpo", "source": "cell.json", "note": None},
        "logs": {
            "objective": "simpo",
            "preference": True,
            "says": "SimPO/CPO",
            "evidence": simpo.source.inference.evidence,
            # crafted rows lack logits/*: no catalogued trainer logs exactly these keys; the reward is
            # 2 x logps/chosen of -4.5 to -5.5 (above -10: a per-token mean)
            "trainer": None,
            "loss_type": None,
            "reward": "β·mean per-token log-probability",
        },
        # crafted.py's cell.json names the rank, the seed and max_steps; the objective is the logs' (a
        # constant rewards / log-prob ratio), the held-out size the per-pair results' (100 pair ids).
        "factors": {
            "rank": {"value": 8, "from": "cell.json", "detail": "rank"},
            "seed": {"value": 3, "from": "cell.json", "detail": "seed"},
            "max_steps": {"value": 100, "from": "cell.json", "detail": "train.max_steps"},
            "objective": {"value": "simpo", "from": "logs", "detail": None},
            "heldout": {"value": 100, "from": "evaluations", "detail": "per-pair"},
        },
        "state": "finished",
        "status": "finished",
        "step": 100,
        "max_steps": 100,
        "review": {
            "train_margin_early": 1.0,
            "train_margin_late": 2.0,
            "late_chosen": -9.0,
            "late_rejected": -11.0,
            "heldout_margin": 1.5,
            "heldout_accuracy": 0.8,
            "heldout_pairs_won": 80,
            "heldout_pairs": 100,
            "heldout_pairs_source": "per-pair",
            "peak_heldout_accuracy": 0.8,
            "peak_heldout_step": 100,
            "evaluations": 10,
            "loss_spikes": 0,
        },
        "best": {"step": 100, "heldout_accuracy": 0.8, "pairs_won": 80, "pairs": 100, "folder": None},
        "findings": [
            {
                "kind": "brevity_bias",
                "severity": "info",
                # the cell's own objective decides the remedy: SimPO's reward already normalises length
                "message": "chosen answers are shorter than rejected ones in 70% of train pairs (mean 20 vs 30 "
                "tokens): a summed-log-prob reward can learn 'shorter wins'; this cell's length-normalised "
                "reward already addresses it",
                "step": None,
            }
        ],
        "data": BREVITY,
        "completions": None,  # the crafted cell sampled no completions (no completions.jsonl)
        "ingest": {"records": 111, "rejected": 1, "rejected_by_reason": {"not JSON": 1}, "segments": 1, "error": None},
    }


def test_the_verdict_compares_final_or_best_evaluations(tmp_path: Path) -> None:
    grid = opened(crafted_grid(tmp_path))
    final, best = analyse(grid), analyse(grid, at=At.BEST)
    assert best.to_json()["verdict"]["at"] == "best"
    # Final: simpo-r8 80 pairs against dpo-r8's 60, all 20 discordant pairs simpo's. Best: dpo-r8's best
    # evaluation (step 30) ranks its first 70 pairs right, so only 10 pairs differ.
    assert [(c.only_winner, c.only_other) for c in final.verdict.comparisons] == [(20, 0)]
    assert [(c.only_winner, c.only_other) for c in best.verdict.comparisons] == [(10, 0)]
    dpo = final.cells[1]
    at_final, at_best = cell_result(dpo), cell_result(dpo, At.BEST)
    assert (at_final.diagnosis.review.heldout_accuracy, at_best.diagnosis.review.heldout_accuracy) == (0.6, 0.7)
    assert at_final.wins is not None and at_best.wins is not None
    assert (int(at_final.wins.sum()), int(at_best.wins.sum())) == (60, 70)
    assert bool(at_best.wins[69]) and not at_best.wins[70:].any()
    simpo = cell_result(final.cells[0], At.BEST)
    assert (simpo.id, simpo.objective, simpo.rank, simpo.seed, simpo.finished, simpo.max_steps) == (
        "simpo-r8",
        "simpo",
        8,
        3,
        True,
        100,
    )
    assert simpo.stopped_at is None and simpo.preference is True


def test_at_best_without_per_pair_results_there_are_no_wins(tmp_path: Path) -> None:
    run = crafted_grid(tmp_path)
    (run / "cells" / "dpo-r8" / "eval_pairs.jsonl").unlink()
    cell = analyse(opened(run), heldout_pairs=100).cells[1]
    assert cell.best is not None and (cell.best.step, cell.best.index) == (30, None)
    result = cell_result(cell, At.BEST)
    assert result.wins is None
    # The pair count given to analyse() is what the review's won pairs are counted against.
    assert result.diagnosis.review.heldout_pairs_won == 70
    review = cell.diagnosis.review
    assert (review.heldout_pairs, review.heldout_pairs_source, review.heldout_pairs_won) == (100, "given", 60)


def test_a_kept_adapter_from_a_step_without_per_pair_results_has_no_wins(tmp_path: Path) -> None:
    # best/best.json names step 35, between evaluations: its pairs cannot be told, not even as the last ones.
    run = crafted_grid(tmp_path)
    best = run / "cells" / "dpo-r8" / "best"
    best.mkdir()
    (best / "best.json").write_text(json.dumps({"step": 35, "heldout_accuracy": 0.71, "pairs_won": 71, "pairs": 100}))
    cell = analyse(opened(run)).cells[1]
    assert cell.best is not None and (cell.best.step, cell.best.index, cell.best.folder) == (35, None, best)
    result = cell_result(cell, At.BEST)
    assert result.wins is None and result.diagnosis.review.heldout_pairs_won == 71


def test_a_label_the_logs_contradict_is_an_error(tmp_path: Path) -> None:
    run = write_grid(tmp_path, "g", [Cell("dpo-r8", "dpo", 8, 60)])
    info_path = run / "cells" / "dpo-r8" / "cell.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "objective": "simpo"}))
    (cell,) = analyse(opened(run)).cells
    assert [(f.kind, f.severity) for f in cell.diagnosis.findings] == [("objective_mismatch", "error")]
    assert cell.to_json()["label"] == {"objective": "simpo", "source": "cell.json", "note": None}
    assert cell.to_json()["objective_source"] == "logs"


def plain_log(folder: Path, rows: int, last_time: float, chosen: float | None = 0.25) -> None:
    """A folder of logs prefwatch did not start: ``rows`` train rows a second apart, the last at
    ``last_time``; with preference metrics (rewards/chosen starting at ``chosen``) unless None."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, rows + 1):
        row: dict[str, float] = {"loss": 0.6, "learning_rate": 1e-4, "step": step, "time": last_time - rows + step}
        if chosen is not None:
            value = chosen + 0.001 * step
            row |= {"rewards/chosen": value, "rewards/rejected": value - 0.5, "rewards/margins": 0.5}
        lines.append(json.dumps(row) + "\n")
    (folder / "metrics.jsonl").write_text("".join(lines))


def test_a_silent_live_run_is_stalled_at_the_time_of_analysis(tmp_path: Path) -> None:
    # Written to 5 minutes ago (under the 10 minutes that still say "running"), a line a second before.
    last = time.time() - 300
    plain_log(tmp_path / "run1", 20, last)
    grid = opened(tmp_path)
    (now,) = analyse(grid).cells  # now: the clock
    assert now.state == "stalled" and [f.kind for f in now.diagnosis.findings] == ["stalled"]
    (then,) = analyse(grid, now=last + 2).cells  # two seconds after the last line: not yet
    assert then.state == "running" and then.diagnosis.findings == []
    patient = dataclasses.replace(DEFAULT, stall_min_seconds=3600.0)  # the thresholds given are the ones used
    (calm,) = analyse(grid, thresholds=patient).cells
    assert calm.state == "running" and calm.diagnosis.findings == []


def test_where_a_cells_objective_and_preference_come_from(tmp_path: Path) -> None:
    old = time.time() - 3600
    plain_log(tmp_path / "dpo-r8", 20, old, chosen=None)  # the name says DPO; the logs have no preference metrics
    plain_log(tmp_path / "ambiguous", 20, old, chosen=-0.3)  # preference metrics, but no objective they prove
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")  # nothing logged yet
    cells = {c.source.id: c for c in analyse(opened(tmp_path)).cells}
    named, ambiguous, empty = cells["dpo-r8"], cells["ambiguous"], cells["empty"]
    assert (named.source.inference.preference, named.source.objective) == (False, "dpo")
    assert (ambiguous.source.inference.preference, ambiguous.source.objective) == (True, None)
    assert (empty.source.inference.preference, empty.source.objective) == (None, None)
    assert [objective_source(c.source) for c in (named, ambiguous, empty)] == ["folder name", None, None]
    # A preference run unless the logs show none and nothing names a preference objective.
    assert [cell_result(c).preference for c in (named, ambiguous, empty)] == [True, True, True]
    # An unfinished run prefwatch did not start, silent for an hour: incomplete, stopped at its last step.
    assert (named.state, cell_result(named).stopped_at) == ("incomplete", 20)
    assert (empty.state, cell_result(empty).stopped_at) == ("queued", None)


def test_no_objective_source_without_an_objective(tmp_path: Path) -> None:
    # A cell built with no claim claims no source: "given" was printed for ranks read from a run name or a
    # logged config (issue 24); where a value came from is said by whoever read it, or not at all.
    source = CellSource("x", tmp_path, MetricsLog.open(tmp_path))
    assert source.claim is not None and (source.claim.objective_source, source.claim.rank_source) == (None, None)
    assert objective_source(source) is None
