"""Completions from real training: the embedded tiny model, DPO on tiny-sales-short (the chosen reply is
always the shorter), through the real trainer in a subprocess, as the launcher runs a cell.

What the model writes is read back from completions.jsonl: the reference's answers at step 0 (the
adapter off), then the same 8 held-out prompts at every evaluation; DPO learns "shorter wins" and its
answers shrink to well under half the reference's length while it wins held-out pairs, and the
length_drift finding says so with the numbers.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from test_train import finish, read_jsonl, start_cell

from prefwatch.analysis.analyse import analyse
from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path

pytestmark = pytest.mark.skipif(
    not all(find_spec(name) for name in ("torch", "transformers", "trl", "peft", "datasets")),
    reason="the training extras are not installed",
)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("short")
    cell_dir = root / "g" / "cells" / "dpo-r8"
    cell = {
        "id": "dpo-r8",
        "objective": "dpo",
        "rank": 8,
        "data": {"name": "tiny-sales-short"},
        "train": {"max_steps": 60, "eval_every": 10, "save_every": 60},
    }
    finish(start_cell(cell_dir, cell, root / "cache"))
    return cell_dir


def test_completions_are_written_at_every_evaluation_and_by_the_reference(short_run):
    lines = read_jsonl(short_run / rundir.COMPLETIONS_FILE)
    assert [(r["step"], r["reference"]) for r in lines] == [(0, True)] + [(s, False) for s in range(10, 61, 10)]
    ids = [c["id"] for c in lines[0]["completions"]]
    assert len(ids) == 8 and len(set(ids)) == 8
    pair_ids = json.loads((short_run / rundir.EVAL_PAIRS_FILE).read_text().splitlines()[0])["pair_ids"]
    assert set(ids) <= set(pair_ids)  # the sample is held-out pairs, named as eval_pairs.jsonl names them
    for record in lines:
        assert [c["id"] for c in record["completions"]] == ids  # the same prompts every time
        assert record["max_new_tokens"] == 64 and record["seconds"] > 0
        for answer in record["completions"]:
            assert 0 <= answer["tokens"] <= 64 and isinstance(answer["text"], str)
            assert answer["eos"] or answer["tokens"] == 64
            assert answer["prompt"].startswith("Customer:")


def test_dpo_on_shorter_chosen_answers_shrinks_its_completions_and_the_finding_says_so(short_run):
    lines = read_jsonl(short_run / rundir.COMPLETIONS_FILE)
    mean = [sum(c["tokens"] for c in r["completions"]) / 8 for r in lines]
    assert mean[0] > 20  # the pretrained tiny model writes replies, not one repeated byte
    assert max(mean[-3:]) < 0.5 * mean[0]  # DPO learned "shorter wins"
    grid = open_path(short_run.parent.parent)
    grid.poll()
    (cell,) = analyse(grid).cells
    (found,) = [f for f in cell.diagnosis.findings if f.kind == "length_drift"]
    late = sum(mean[-3:]) / 3
    assert f"completions shrank from {mean[0]:.1f} tokens (the reference's) to {late:.1f}" in found.message
    assert "the data's chosen answers average" in found.message
    assert cell.to_json()["completions"]["reference"]["mean_tokens"] == pytest.approx(mean[0])
