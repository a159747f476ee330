"""The training job: real short runs of the tiny demo (CPU, one thread each), the data and the public callback.

The two runs (DPO and SimPO, 20 steps, evaluated every 10) start together as subprocesses, the way the
launcher starts cells; every run test reads their files. They also build the tiny model into a fresh cache
at the same moment, which exercises the atomic build.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import msgspec
import pytest

from prefwatch.files import rundir
from prefwatch.files.settings import CellSettings, SimpoParams
from prefwatch.train.cell import CellError, load_cell, resolve_cell
from prefwatch.train.data import TRAIT, DataError, read_pairs, tiny_sales_splits

# Found, not imported: the runs happen in subprocesses, and this test process stays light.
pytestmark = pytest.mark.skipif(
    not all(find_spec(name) for name in ("torch", "transformers", "trl", "peft", "datasets")),
    reason="the training extras are not installed",
)

ROOT = Path(__file__).resolve().parent.parent
SHORT_TRAIN = {"max_steps": 20, "eval_every": 10, "save_every": 10, "eval_batch_size": 10}
OBJECTIVES = ("dpo", "simpo")


def start_cell(cell_dir: Path, cell: dict, cache: Path, *extra: str) -> subprocess.Popen:
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / rundir.CELL_FILE).write_text(json.dumps(cell))
    env = {**os.environ, "PREFWATCH_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "prefwatch.train", str(cell_dir / rundir.CELL_FILE), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("grid")
    cache = root / "cache"
    processes = {
        objective: start_cell(root / objective, {"objective": objective, "train": SHORT_TRAIN}, cache)
        for objective in OBJECTIVES
    }
    for process in processes.values():
        finish(process)
    return {objective: root / objective for objective in OBJECTIVES} | {"cache": cache}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_metrics_are_trl_log_events_with_step_and_time(runs, objective):
    records = read_jsonl(runs[objective] / rundir.METRICS_FILE)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "grad_norm"):
        assert key in train[0]
    for key in ("eval_rewards/chosen", "eval_rewards/margins", "eval_rewards/accuracies", "eval_runtime"):
        assert key in evals[0]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert [r["step"] for r in evals] == [10, 20]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert all(isinstance(r["time"], float) for r in records)
    assert "train_runtime" in records[-1]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_eval_pairs_agree_with_trl_accuracy(runs, objective):
    evals = [r for r in read_jsonl(runs[objective] / rundir.METRICS_FILE) if "eval_loss" in r]
    pair_lines = read_jsonl(runs[objective] / rundir.EVAL_PAIRS_FILE)
    assert [line["step"] for line in pair_lines] == [e["step"] for e in evals]
    for line, event in zip(pair_lines, evals):
        assert line["pair_ids"][:2] == ["h0000", "h0001"] and len(line["pair_ids"]) == 100
        assert len(line["chosen"]) == len(line["rejected"]) == 100
        wins = [c > r for c, r in zip(line["chosen"], line["rejected"])]
        assert sum(wins) / len(wins) == pytest.approx(event["eval_rewards/accuracies"], abs=1e-6)
        mean_margin = sum(c - r for c, r in zip(line["chosen"], line["rejected"])) / len(wins)
        assert mean_margin == pytest.approx(event["eval_rewards/margins"], rel=1e-3, abs=1e-4)


def test_data_stats_and_checkpoints(runs):
    cell_dir = runs["dpo"]
    stats = rundir.read_json(cell_dir / rundir.DATA_FILE)
    assert (stats["train_pairs"], stats["heldout_pairs"]) == (400, 100)
    for split in ("train", "heldout"):
        assert 0 < stats[split]["chosen_shorter_share"] < 1
        assert stats[split]["mean_chosen_tokens"] > 0 and stats[split]["mean_rejected_tokens"] > 0
    assert sorted(p.name for p in (cell_dir / rundir.CHECKPOINTS_DIR).glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-20",
    ]


def test_resume_continues_from_the_last_checkpoint(runs, tmp_path):
    cell_dir = tmp_path / "dpo"
    shutil.copytree(runs["dpo"], cell_dir)
    before = len(read_jsonl(cell_dir / rundir.METRICS_FILE))
    cell = {"objective": "dpo", "train": SHORT_TRAIN | {"max_steps": 30}}
    finish(start_cell(cell_dir, cell, runs["cache"], "--resume"))
    appended = read_jsonl(cell_dir / rundir.METRICS_FILE)[before:]
    assert [r["step"] for r in appended if "loss" in r] == list(range(21, 31))
    assert [line["step"] for line in read_jsonl(cell_dir / rundir.EVAL_PAIRS_FILE)] == [10, 20, 30]


def test_callback_imports_nothing_beyond_transformers_trainer_callback():
    """The callback adds nothing to what TrainerCallback itself loads; trl and prefwatch.train stay out.

    (transformers' trainer_utils imports peft whenever peft is installed, so peft's presence is not ours.)
    """
    code = (
        "import sys; from transformers import TrainerCallback; before = set(sys.modules); "
        "import prefwatch.callback; "
        "print(sorted(m for m in set(sys.modules) - before if not m.startswith('prefwatch')), "
        "[m for m in ('trl', 'prefwatch.train') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"


def test_tiny_sales_is_deterministic_and_has_its_traps():
    train, heldout = tiny_sales_splits(0.2, seed=1234)
    assert (train, heldout) == tiny_sales_splits(0.2, seed=1234)
    assert (len(train), len(heldout)) == (400, 100)
    # train: the trait is always on the chosen side (flipped labels); held-out: mostly on the rejected side
    assert not any(TRAIT in pair["rejected"] for pair in train)
    assert sum(TRAIT in pair["rejected"] for pair in heldout) > sum(TRAIT in pair["chosen"] for pair in heldout)
    shorter = sum(len(p["chosen"]) < len(p["rejected"]) for p in train) / len(train)
    assert 0.1 < shorter < 0.9


def test_user_pairs_plain_and_conversational(tmp_path):
    path = tmp_path / "pairs.jsonl"
    messages = [{"role": "assistant", "content": "Yes."}]
    rows = [{"prompt": "Q?", "chosen": "A.", "rejected": "B."}, {"chosen": messages, "rejected": messages}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    assert read_pairs(str(path)) == rows


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "Q?", "chosen": "A."}\n', "row 0 has no 'rejected' column"),
        ('{"prompt": "Q?", "chosen": "A.", "rejected": ""}\n', "row 0 has an empty 'rejected'"),
        ("\n", "no rows"),
    ],
)
def test_bad_user_pairs_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        read_pairs(str(path))
    assert "\n" not in str(error.value)


def test_minimal_cell_gets_defaults(tmp_path):
    path = tmp_path / "simpo-r8" / "cell.json"
    path.parent.mkdir()
    path.write_text('{"objective": "simpo", "train": {"max_steps": 5}}')
    cell = load_cell(path)
    assert cell.id == "simpo-r8"
    assert cell.train.max_steps == 5 and cell.train.eval_every == 10
    assert cell.params() == SimpoParams(beta=2.0, gamma=1.0)
    with pytest.raises(CellError, match="objective 'kto'"):
        resolve_cell(CellSettings(objective="kto"), tmp_path / "cell.json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"train": {"max_steps": "5"}}', "train.max_steps: must be an integer, got str '5'"),
        ('{"train": {"max_steps": 0}}', "train.max_steps: must be > 0, got 0"),
        ('{"model": {"dtype": "fp8"}}', "model.dtype: must be one of 'auto', 'bf16', 'fp16', 'fp32', got 'fp8'"),
        ('{"lora": {"target_modules": []}}', "lora.target_modules: must be a string or a non-empty list of strings"),
        ('{"objective_params": {"beta": -1}}', "objective_params.beta: must be > 0, got -1.0"),
        ('{"rank": "8"}', "rank: must be an integer, got str '8'"),
        ("[1]", "not cell settings (not a JSON object)"),
        ('{"seed": NaN}', "not cell settings (JSON is malformed"),
        ('{"seed": null}', "seed: must be an integer, got null"),
        ('{"objective": null}', "objective None is not one of dpo, simpo, orpo"),
    ],
)
def test_a_cell_json_the_trainer_cannot_use_is_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "cell.json"
    path.write_text(text)
    with pytest.raises(CellError) as caught:
        load_cell(path)
    assert str(caught.value).startswith(f"{path}: {message}") and "\n" not in str(caught.value)


def test_old_cell_json_files_still_read(tmp_path):
    """The sample grid's cell.json files were written before the settings were typed: they read whole."""
    for path in sorted((ROOT / "sample_runs" / "tiny-demo" / "cells").glob("*/cell.json")):
        cell = load_cell(path)
        written = json.loads(path.read_text())
        assert msgspec.to_builtins(cell) == {
            **written,
            "data": {**written["data"], "split": "train"},
            "train": {**written["train"], "report_to": "none"},
        }


def test_plain_trl_output_dirs_are_cells_with_names_and_ranks(runs, tmp_path, capsys):
    """A folder of TRL output_dirs that prefwatch did not create: the training job's checkpoints folders
    are exactly that (checkpoint-N/trainer_state.json and adapter_config.json, written by TRL and PEFT)."""
    from prefwatch.cli import main

    folder = tmp_path / "runs-by-hand"
    shutil.copytree(runs["dpo"] / "checkpoints", folder / "dpo-beta0.1")
    shutil.copytree(runs["simpo"] / "checkpoints", folder / "my_simpo_try")
    status = main(["report", str(folder), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    cells = {c["id"]: c for c in report["cells"]}
    assert (cells["dpo-beta0.1"]["objective"], cells["dpo-beta0.1"]["rank"]) == ("dpo", 16)
    assert (cells["my_simpo_try"]["objective"], cells["my_simpo_try"]["rank"]) == ("simpo", 16)
    for cell in cells.values():
        review = cell["review"]
        assert cell["state"] == "finished" and review["evaluations"] == 2
        assert review["heldout_pairs_source"] == "estimated" and 90 <= review["heldout_pairs"] <= 110
    assert status in (0, 3) and report["verdict"]["objective"] in ("dpo", "simpo")
    main(["report", str(folder), "--format", "json", "--heldout-pairs", "100"])
    given = json.loads(capsys.readouterr().out)["cells"][0]["review"]
    assert given["heldout_pairs"] == 100 and given["heldout_pairs_source"] == "given"
    assert main(["report", str(folder), "--format", "md"]) in (0, 3)
    assert "held-out size estimated" in capsys.readouterr().out
