"""Completions from real training: a launched grid on the embedded tiny model, DPO against SimPO with a
behaviour-cloning term, on tiny-sales-short (the chosen reply is always the shorter).

What the model writes is read back from completions.jsonl: the reference's answers at step 0 (the
adapter off), then the same 8 held-out prompts at every evaluation.

- DPO's reward is a sum over tokens: lowering every token's log-prob by d raises its margin by
  d x (rejected length - chosen length), a content-free move that the length bias pays for. Its answers
  shrink to well under half the reference's while it wins held-out pairs, and length_drift says so.
- SimPO's reward is a mean per token (lowering every token moves both sides alike); with
  ``sft_weight`` (TRL's cpo_alpha) it also keeps the chosen answers likely, so it goes on writing replies
  like the chosen ones (40 tokens on average, the reference's 32): no drift.
- The verdict switches to SimPO and gives the drift, with DPO's numbers, as its reason.

Plain SimPO (sft_weight 0) is not the cell without the drift on this model: it shrinks its answers too
(0.27x at lr 5e-4, beta 10; 0.6x at lr 1e-4), as it lowers the chosen answers' probability as well.

Expected figures are computed here from the cells' own files (completions.jsonl, eval_pairs.jsonl),
independently of prefwatch's rules. Seeded, one torch thread: the runs repeat exactly on one torch
build; the assertions keep wide margins all the same (DPO measured 0.25x, SimPO 0.89x, 90 vs 94 pairs).
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from helpers import prefwatch, status, wait_for
from test_train import read_jsonl

from prefwatch.files import rundir

pytestmark = pytest.mark.skipif(
    not all(find_spec(name) for name in ("torch", "transformers", "trl", "peft", "datasets")),
    reason="the training extras are not installed",
)

GRID = """
name = "short"
[data]
name = "tiny-sales-short"
[train]
max_steps = 60
eval_every = 10
save_every = 60
[grid]
objectives = ["dpo", "simpo"]
ranks = [8]
[objectives.simpo]
sft_weight = 1.0
[resources]
devices = "cpu"
"""
CELLS = ("dpo-r8", "simpo-r8")
SAMPLE = 8  # [train] completions: held-out prompts answered at each evaluation


@pytest.fixture(scope="module")
def short_grid(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("short")
    (root / "short.toml").write_text(GRID)
    result = prefwatch("launch", str(root / "short.toml"), "--detach", "--out", str(root))
    assert result.returncode == 0, result.stderr
    run = root / "short"
    ended = ("finished", "failed", "stopped", "lost")
    wait_for(lambda: all(status(run, c).state in ended for c in CELLS), 1200, "the two cells to end")
    for cell in CELLS:
        log = run / "cells" / cell / "stdout.log"
        assert status(run, cell).state == "finished", log.read_text()[-3000:] if log.exists() else "no stdout.log"
    return run


def lengths(run: Path, cell: str) -> list[float]:
    """Mean answer length in tokens per line of completions.jsonl (the reference's first)."""
    return [np.mean([c["tokens"] for c in r["completions"]]) for r in read_jsonl(completions_file(run, cell))]


def completions_file(run: Path, cell: str) -> Path:
    return run / "cells" / cell / rundir.COMPLETIONS_FILE


def pairs_won(run: Path, cell: str) -> int:
    """Held-out pairs ranked right at the cell's last evaluation, from its per-pair results."""
    last = read_jsonl(run / "cells" / cell / rundir.EVAL_PAIRS_FILE)[-1]
    return int(np.sum(np.asarray(last["chosen"]) > np.asarray(last["rejected"])))


@pytest.fixture(scope="module")
def report(short_grid) -> dict:
    result = prefwatch("report", str(short_grid), "--format", "json")
    assert result.returncode in (0, 3), result.stderr
    return json.loads(result.stdout)


def findings(report: dict, cell: str, kind: str) -> list[dict]:
    (found,) = [c for c in report["cells"] if c["id"] == cell]
    return [f for f in found["findings"] if f["kind"] == kind]


@pytest.mark.parametrize("cell", CELLS)
def test_completions_are_written_at_every_evaluation_and_by_the_reference(short_grid, cell):
    lines = read_jsonl(completions_file(short_grid, cell))
    assert [(r["step"], r["reference"]) for r in lines] == [(0, True)] + [(s, False) for s in range(10, 61, 10)]
    ids = [c["id"] for c in lines[0]["completions"]]
    assert len(ids) == SAMPLE and len(set(ids)) == SAMPLE
    pair_ids = read_jsonl(short_grid / "cells" / cell / rundir.EVAL_PAIRS_FILE)[0]["pair_ids"]
    assert set(ids) <= set(pair_ids)  # the sample is held-out pairs, named as eval_pairs.jsonl names them
    for record in lines:
        assert [c["id"] for c in record["completions"]] == ids  # the same prompts every time
        assert record["max_new_tokens"] == 64 and record["seconds"] > 0
        for answer in record["completions"]:
            assert 0 <= answer["tokens"] <= 64 and isinstance(answer["text"], str)
            assert answer["eos"] or answer["tokens"] == 64
            assert answer["prompt"].startswith("Customer:")


def test_both_cells_start_from_the_same_reference(short_grid):
    dpo, simpo = (read_jsonl(completions_file(short_grid, c))[0] for c in CELLS)
    assert dpo["completions"] == simpo["completions"]  # the adapter off: the same model, the same prompts
    assert lengths(short_grid, "dpo-r8")[0] > 20  # the pretrained tiny model writes replies, not one byte


def test_dpo_on_shorter_chosen_answers_shrinks_its_completions_and_the_finding_says_so(short_grid, report):
    mean = lengths(short_grid, "dpo-r8")
    late = float(np.mean(mean[-3:]))
    assert late < 0.5 * mean[0]  # DPO learned "shorter wins" (measured: 0.25x)
    (found,) = findings(report, "dpo-r8", "length_drift")
    assert found["severity"] == "warn"
    assert f"completions shrank from {mean[0]:.1f} tokens (the reference's) to {late:.1f}" in found["message"]
    assert f"({late / mean[0]:.2f}x)" in found["message"]
    assert "the data's chosen answers average" in found["message"]
    (cell,) = [c for c in report["cells"] if c["id"] == "dpo-r8"]
    assert cell["completions"]["reference"]["mean_tokens"] == pytest.approx(mean[0])


def test_simpo_with_the_chosen_answers_kept_likely_keeps_its_length(short_grid, report):
    mean = lengths(short_grid, "simpo-r8")
    assert 0.6 * mean[0] < np.mean(mean[-3:]) < 1.6 * mean[0]  # measured: 0.89x
    assert min(mean[1:]) > 0.5 * mean[0]  # at no evaluation past the finding's factor
    assert findings(report, "simpo-r8", "length_drift") == []


def test_the_verdict_prefers_the_cell_without_the_drift_and_says_why(short_grid, report):
    dpo, simpo = pairs_won(short_grid, "dpo-r8"), pairs_won(short_grid, "simpo-r8")
    assert simpo > dpo  # measured: 94 against 90
    verdict = report["verdict"]
    assert verdict["objective"] == "simpo"
    (drift,) = findings(report, "dpo-r8", "length_drift")
    numbers = drift["message"].split(": ", 1)[1]  # "completions shrank from 32.0 tokens ... to 8.0 (0.25x) ..."
    assert verdict["reasons"][0] == (
        f"switch to SimPO: simpo-r8 wins {simpo - dpo} more held-out pair(s) than dpo-r8 "
        f"with no length drift, where dpo-r8's {numbers}"
    )
    assert not any(r.startswith("beware:") for r in verdict["reasons"])  # the chosen cell did not drift
