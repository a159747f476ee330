"""The stop policy's rules on the sample grid's real logs (the real stops are in test_act.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from prefwatch.act.policy import StopPolicy, evaluations_past_best, grid_settings
from prefwatch.analysis.analyse import CellAnalysis, analyse
from prefwatch.core.diagnose import Finding
from prefwatch.files.rundir import CellState, CellStatus
from prefwatch.ingest.discover import open_path

SAMPLE = Path(__file__).resolve().parents[1] / "sample_runs" / "tiny-demo"


def sample_cells() -> dict[str, CellAnalysis]:
    grid = open_path(SAMPLE)
    grid.poll()
    return {c.source.id: c for c in analyse(grid).cells}


def running(cell: CellAnalysis) -> CellAnalysis:
    return dataclasses.replace(cell, status=CellStatus(CellState.RUNNING))


def test_evaluations_past_the_best_count_from_the_first_time_it_was_reached():
    for cell_id, cell in sample_cells().items():
        lines = (SAMPLE / "cells" / cell_id / "eval_pairs.jsonl").read_text().splitlines()
        accuracy = [np.mean(np.array(r["chosen"]) > np.array(r["rejected"])) for r in map(json.loads, lines)]
        first_best = accuracy.index(max(accuracy))
        assert evaluations_past_best(cell) == len(accuracy) - 1 - first_best


def test_overoptimization_stops_only_when_asked_and_past_patience():
    cell = running(sample_cells()["simpo-r8"])
    past = evaluations_past_best(cell)
    assert past is not None and past >= 3
    assert StopPolicy().reason(cell) is None  # the default stops diverged runs only
    assert StopPolicy(frozenset({"overoptimization"}), patience=past).reason(cell) == "overoptimization"
    assert StopPolicy(frozenset({"overoptimization"}), patience=past + 1).reason(cell) is None


def test_non_finite_stops_a_running_cell_and_nothing_stops_an_ended_one():
    cell = running(sample_cells()["dpo-r8"])
    diverged = dataclasses.replace(
        cell,
        diagnosis=dataclasses.replace(
            cell.diagnosis, findings=[Finding("non_finite", "error", "loss is NaN from step 7", 7)]
        ),
    )
    assert StopPolicy().reason(cell) is None
    assert StopPolicy().reason(diverged) == "non_finite"
    assert StopPolicy(frozenset()).reason(diverged) is None
    ended = dataclasses.replace(diverged, status=CellStatus(CellState.FINISHED))
    assert StopPolicy().reason(ended) is None


def test_a_grid_file_that_no_longer_validates_falls_back_to_the_defaults(tmp_path):
    (tmp_path / "grid.toml").write_text('[policy]\nstop_on = ["everything"]\n')
    logged: list[str] = []
    settings = grid_settings(tmp_path, logged.append)
    assert settings.policy.stop_on == ["non_finite"] and settings.alerts.webhook is None
    assert logged and "grid.toml:2: [policy] stop_on" in logged[0]


def test_frozen_stops_a_running_cell_only_when_asked():
    cell = running(sample_cells()["dpo-r8"])
    message = "grad_norm is exactly 0 on 6 consecutive rows (steps 3-8): no update reaches the weights"
    stuck = dataclasses.replace(
        cell, diagnosis=dataclasses.replace(cell.diagnosis, findings=[Finding("frozen", "error", message, 3)])
    )
    assert StopPolicy().reason(stuck) is None  # the default stops diverged runs only
    assert StopPolicy(frozenset({"non_finite", "frozen"})).reason(stuck) == "frozen"
    assert (
        StopPolicy(frozenset({"frozen"})).reason(dataclasses.replace(stuck, status=CellStatus(CellState.FINISHED)))
        is None
    )


def test_frozen_is_a_stop_reason_the_grid_file_accepts(tmp_path):
    (tmp_path / "grid.toml").write_text('[policy]\nstop_on = ["non_finite", "frozen"]\n')
    logged: list[str] = []
    assert grid_settings(tmp_path, logged.append).policy.stop_on == ["non_finite", "frozen"] and not logged
