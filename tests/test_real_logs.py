"""Other people's logs, judged as their numbers justify (tests/real_logs/EXPECTED.md, written before
prefwatch was run on them; PROVENANCE.md says where each comes from).

Each log is copied to a temporary folder with its files dated in the past: a fresh checkout dates
them now, which would make every log look like a run still being written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import markdown_text
from rich.console import Console
from test_ingest_tensorboard import event, file_version_event, record, simple_value

from prefwatch.analysis.analyse import analyse
from prefwatch.cli import EXIT_NOT_DECISIVE, main
from prefwatch.ingest.discover import open_path
from prefwatch.report.text import render_terminal, review_row

CORPUS = Path(__file__).resolve().parent / "real_logs"
SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "tiny-demo" / "cells"
PAST = time.time() - 30 * 86400.0
# Preference findings that have nothing to say about a log without preference metrics.
PREFERENCE_KINDS = {"reference_equals_policy", "likelihood_displacement", "saturation", "margin_inconsistent"}


@dataclass(frozen=True)
class Cell:
    objective: str | None
    objective_source: str | None
    rank: int | None
    rank_source: str | None
    state: str
    step: str  # what the report's step column says
    must: frozenset[str] = frozenset()
    must_not: frozenset[str] = frozenset()
    says: str | None = None  # words of what the logs show


@dataclass(frozen=True)
class Case:
    folder: str
    cells: dict[str, Cell]
    reason: str  # a verdict reason (or need) must contain this
    decisive: bool = False


NOT_NAN = frozenset({"non_finite", "intermittent_non_finite"})
CASES = [
    Case(
        "soup-dpo-takehome",
        {
            "soup-dpo-takehome": Cell(
                "dpo",
                "logs",
                16,
                "adapter_config.json",
                "incomplete",
                "75/100",
                must=frozenset({"grad_scaler_skips"}),
                must_not=NOT_NAN | PREFERENCE_KINDS | {"objective_mismatch"},
                says="DPO",
            )
        },
        "stopped at step 75 of 100",
    ),
    Case(
        "rlhf-recsys-outputs",
        {
            "rlhf-recsys-outputs": Cell(
                "orpo",
                "logs",
                16,
                "adapter_config.json",
                "finished",
                "336/336",
                must_not=NOT_NAN | {"likelihood_displacement", "saturation", "objective_mismatch"},
                says="ORPO",
            )
        },
        "no held-out evaluation yet",
    ),
    Case(
        "qwen3-lora",
        {"qwen3-lora": Cell(None, None, None, None, "finished", "768/768", must_not=NOT_NAN | PREFERENCE_KINDS)},
        "no preference-tuned cell",
    ),
    Case(
        "llm-recovery-gemma",
        {
            "llm-recovery-gemma": Cell(
                "dpo", "logs", 8, "checkpoint-50/adapter_config.json", "incomplete", "50/667", says="DPO"
            )
        },
        "stopped at step 50 of 667",
    ),
    Case(
        "llm-recovery-long",
        {
            "llm-recovery-long": Cell(
                "dpo",
                "logs",
                None,
                None,
                "incomplete",
                "1000/1333",
                must_not=NOT_NAN | {"likelihood_displacement", "saturation", "objective_mismatch"},
            )
        },
        "stopped at step 1000 of 1333",
    ),
    Case(
        "chaos-economy",
        {
            "chaos-economy": Cell(
                "grpo", "logs", None, None, "finished", "200/200", must_not=NOT_NAN | PREFERENCE_KINDS, says="GRPO"
            )
        },
        "not compared (no preference metrics): chaos-economy (GRPO)",
    ),
    Case(
        "healthai-oppo-2026",
        {
            "healthai-oppo-2026": Cell(
                None, None, None, None, "finished", "9/9", must_not=NOT_NAN | PREFERENCE_KINDS, says="no preference"
            )
        },
        "no preference-tuned cell",
    ),
    Case(
        "distill-safety",
        {
            "outputs/baseline": Cell(
                None, None, None, None, "finished", "135/135", must_not=NOT_NAN | PREFERENCE_KINDS
            ),
            "outputs/dpo": Cell(
                "dpo",
                "logs",
                16,
                "checkpoint-30/adapter_config.json",
                "finished",
                "30/30",
                must=frozenset({"saturation"}),
                must_not=NOT_NAN | {"likelihood_displacement", "objective_mismatch"},
            ),
            "outputs/weighted": Cell(
                None, None, None, None, "finished", "177/177", must_not=NOT_NAN | PREFERENCE_KINDS
            ),
        },
        "no held-out evaluation yet",
    ),
    Case(
        "simpo-training",
        {
            "simpo-test": Cell(
                "simpo",
                "folder name",
                None,
                None,
                "incomplete",
                "100/1000000",
                must_not=NOT_NAN | {"objective_mismatch"},
                says="no preference metrics",
            )
        },
        "stopped at step 100 of 1000000",
    ),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus, copied, every file dated a month ago."""
    root = tmp_path_factory.mktemp("real") / "real_logs"
    shutil.copytree(CORPUS, root)
    for path in root.rglob("*"):
        os.utime(path, (PAST, PAST))
    return root


def report_json(path: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    status = main(["report", str(path), "--format", "json", *extra])
    return status, json.loads(capsys.readouterr().out)


def check(case: Case, status: int, report: dict) -> None:
    assert status == (0 if case.decisive else EXIT_NOT_DECISIVE)
    cells = {c["id"]: c for c in report["cells"]}
    assert set(cells) == set(case.cells)
    for cell_id, want in case.cells.items():
        got = cells[cell_id]
        kinds = {f["kind"] for f in got["findings"]}
        assert (got["objective"], got["objective_source"]) == (want.objective, want.objective_source), cell_id
        assert (got["rank"], got["rank_source"]) == (want.rank, want.rank_source), cell_id
        assert got["state"] == want.state, cell_id
        assert want.must <= kinds and not (want.must_not & kinds), (cell_id, kinds)
        assert "frozen" not in kinds, cell_id  # EXPECTED.md: no committed log is frozen
        if want.says:
            assert want.says in got["logs"]["says"], got["logs"]
        assert "None" not in " ".join(f["message"] for f in got["findings"])
        assert '"?"' not in json.dumps(got)
    verdict = report["verdict"]
    assert verdict["decisive"] is case.decisive
    assert any(case.reason in line for line in verdict["reasons"] + verdict["needs"]), verdict


@pytest.mark.parametrize("case", CASES, ids=[c.folder for c in CASES])
def test_each_log_is_judged_as_its_numbers_say(case: Case, corpus: Path, capsys) -> None:
    status, report = report_json(corpus / case.folder, capsys=capsys)
    check(case, status, report)
    analysis = analyse(_opened(corpus / case.folder))
    steps = {c.source.id: review_row(c)[2] for c in analysis.cells}
    assert steps == {cell_id: want.step for cell_id, want in case.cells.items()}


def _opened(path: Path):
    grid = open_path(path)
    grid.poll()
    return grid


# Who wrote each log (PROVENANCE.md), against the catalogue's reading of its keys (core/signatures.py):
# the catalogued trainer must be the writer, and logs without preference metrics name none.
WRITERS = {
    "soup-dpo-takehome": "TRL DPOTrainer 0.29.0-1.9.0",  # TRL 1.x keys: entropy, num_tokens, mean_token_accuracy
    "rlhf-recsys-outputs": "LLaMA-Factory CustomDPOTrainer",  # stage dpo, pref_loss orpo
    "llm-recovery-gemma": "TRL DPOTrainer 0.7.0-0.10.1, 0.11.0-0.28.0",
    "llm-recovery-long": "TRL DPOTrainer 0.7.0-0.10.1, 0.11.0-0.28.0",
    "chaos-economy": "TRL GRPOTrainer / RLOOTrainer 0.17.0-1.9.0",
    "outputs/dpo": "TRL DPOTrainer 0.7.0-0.10.1, 0.11.0-0.28.0",
}


@pytest.mark.parametrize("case", CASES, ids=[c.folder for c in CASES])
def test_the_catalogue_names_each_logs_writer(case: Case, corpus: Path, capsys) -> None:
    _, report = report_json(corpus / case.folder, capsys=capsys)
    for cell in report["cells"]:
        writer, trainer = WRITERS.get(cell["id"]), cell["logs"]["trainer"]
        assert (writer is None and trainer is None) or (writer is not None and writer in (trainer or "")), (
            cell["id"],
            trainer,
        )


@pytest.mark.parametrize("folder", ["soup-dpo-takehome", "distill-safety", "chaos-economy"])
def test_the_command_line_says_the_same(folder: str, corpus: Path) -> None:
    """The installed command, as a user runs it: exit 3 (not decisive) and the same JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "prefwatch", "report", str(corpus / folder), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    case = next(c for c in CASES if c.folder == folder)
    check(case, done.returncode, json.loads(done.stdout))


def test_the_nan_grad_norms_of_a_fp16_run_are_the_grad_scaler(corpus: Path, capsys) -> None:
    _, report = report_json(corpus / "soup-dpo-takehome", capsys=capsys)
    (finding,) = report["cells"][0]["findings"]
    assert finding["severity"] == "info" and finding["step"] == 1
    assert "steps 1, 2, 18, 74" in finding["message"] and "grad scaler" in finding["message"]


def test_a_log_prefwatch_does_not_read_is_named_with_the_reason(corpus: Path, capsys) -> None:
    assert main(["report", str(corpus / "hykun-360-llama-factory")]) == 2
    error = capsys.readouterr().err.strip()
    assert "trainer_log.jsonl" in error and "LLaMA-Factory" in error and "trainer_state.json" in error
    assert len(error.splitlines()) == 1


def test_the_whole_corpus_opens_with_every_run_found_or_named(corpus: Path, capsys) -> None:
    """The corpus folder itself: runs one, two and three levels down are cells; the progress log and
    the console log (a run logged only to the screen) are named, not dropped."""
    status, report = report_json(corpus, capsys=capsys)
    ids = {c["id"] for c in report["cells"]}
    assert {"soup-dpo-takehome", "distill-safety/outputs/dpo", "simpo-training/simpo-test"} <= ids
    sweep = [f"orpo-isaerft-sweep/{run.name}" for run in (corpus / "orpo-isaerft-sweep").iterdir()]
    assert len(ids) == sum(len(c.cells) for c in CASES) + len(sweep) and set(sweep) <= ids
    assert status == EXIT_NOT_DECISIVE
    # Runs of seven repositories: none is a seed of another, no pair counts subtracted between them.
    verdict = json.dumps(report["verdict"])
    assert not re.search(r"\(\d+ seeds\)|seed \w+:|pairs on average|spread across seeds", verdict)
    grid = open_path(corpus)
    assert [(str(where), why.split(" is ")[0]) for where, why in grid.skipped] == [
        ("halos-issue-24-kto", "console.log"),
        ("hykun-360-llama-factory", "trainer_log.jsonl"),
        ("trl-issue-1447-kto", "console.log"),
        ("mabelgao/2026-04-11-llama3_8b_instruct_dpo_qlora", "simpo_train_local.log"),
    ]
    main(["report", str(corpus), "--format", "md"])
    assert "not read: mabelgao/2026-04-11-llama3_8b_instruct_dpo_qlora: simpo_train_local.log is a console log" in (
        markdown_text(capsys.readouterr().out)
    )


# ---- labels against the logs -------------------------------------------------------------


@pytest.mark.parametrize(
    "folder, label, logs_say",
    [
        ("soup-dpo-takehome", "simpo", "DPO"),
        ("rlhf-recsys-outputs", "dpo", "ORPO"),
        ("chaos-economy", "dpo", "GRPO"),
    ],
)
def test_a_label_the_logs_contradict_is_an_error(folder: str, label: str, logs_say: str, corpus: Path, capsys) -> None:
    status, report = report_json(corpus / folder, "--label", f"{folder}={label}", capsys=capsys)
    cell = report["cells"][0]
    (mismatch,) = [f for f in cell["findings"] if f["kind"] == "objective_mismatch"]
    assert mismatch["severity"] == "error"
    assert f"--label says {label}" in mismatch["message"] and logs_say in mismatch["message"]
    assert cell["objective_source"] == "logs" and cell["label"]["objective"] == label
    assert status == EXIT_NOT_DECISIVE and not report["verdict"]["decisive"]


def test_logs_that_cannot_tell_leave_the_label_standing(corpus: Path, capsys) -> None:
    _, report = report_json(corpus / "simpo-training", "--label", "simpo-test=dpo:8", capsys=capsys)
    (cell,) = report["cells"]
    assert (cell["objective"], cell["objective_source"], cell["rank"], cell["rank_source"]) == (
        "dpo",
        "--label",
        8,
        "--label",
    )
    assert not any(f["kind"] == "objective_mismatch" for f in cell["findings"])


def test_a_folder_named_simpo_holding_a_dpo_run_is_caught(corpus: Path, tmp_path: Path, capsys) -> None:
    """The founding write-up's story: the code ran DPOTrainer while the write-up argued for SimPO."""
    run = tmp_path / "simpo-r16"
    run.mkdir()
    shutil.copy(corpus / "soup-dpo-takehome" / "trainer_state.json", run)
    _, report = report_json(run, capsys=capsys)
    (cell,) = report["cells"]
    (mismatch,) = [f for f in cell["findings"] if f["kind"] == "objective_mismatch"]
    assert "folder name says simpo" in mismatch["message"] and "0 at step 1" in mismatch["message"]
    assert cell["objective"] == "dpo"


def test_a_name_with_two_objectives_is_ambiguous(corpus: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "argilla_dpo_mix_simpo_kl"
    run.mkdir()
    shutil.copy(corpus / "soup-dpo-takehome" / "trainer_state.json", run)
    _, report = report_json(run, capsys=capsys)
    (cell,) = report["cells"]
    assert cell["label"]["objective"] is None and "dpo and simpo" in cell["label"]["note"]
    assert cell["objective"] == "dpo" and cell["objective_source"] == "logs"
    assert not any(f["kind"] == "objective_mismatch" for f in cell["findings"])


# ---- readable at 80 columns ----------------------------------------------------------------


def test_long_names_never_cut_the_decision_columns(tmp_path: Path, capsys) -> None:
    """Real run names are 40+ characters: the name wraps, held-out accuracy and pairs stay whole."""
    for source in ("dpo-r16", "simpo-r16"):
        run = tmp_path / f"2026-04-11-llama3_8b_instruct_qlora_ultrafeedback_{source}"
        run.mkdir()
        shutil.copy(SAMPLE / source / "metrics.jsonl", run)
    analysis = analyse(_opened(tmp_path), heldout_pairs=100)
    console = Console(width=80, record=True, color_system=None)
    render_terminal(analysis, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    table = text.split("Cells")[0]
    for cell in analysis.cells:
        review = cell.diagnosis.review
        assert f"{review.heldout_accuracy:.2f}" in table
        assert f"{review.heldout_pairs_won}/100" in table
    assert "…" not in table


def test_accuracies_are_compared_with_their_uncertainty_when_only_the_size_is_known(tmp_path: Path) -> None:
    for source in ("dpo-r16", "simpo-r16"):
        (tmp_path / source).mkdir()
        shutil.copy(SAMPLE / source / "metrics.jsonl", tmp_path / source)
    verdict = analyse(_opened(tmp_path), heldout_pairs=100).verdict
    (line,) = [r for r in verdict.reasons if "95 % intervals" in r]
    assert "±" in line and "100 pairs" in line and not verdict.comparisons


# ---- status and replay ---------------------------------------------------------------------


def test_status_says_how_long_ago_in_words(corpus: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "soup"
    shutil.copytree(corpus / "soup-dpo-takehome", run)
    three_minutes = time.time() - 185
    os.utime(run / "trainer_state.json", (three_minutes, three_minutes))
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "3 min ago" in out and "nan" not in out and " s ago" not in out
    assert "running" in out  # written 3 minutes ago: it may well still be training


def test_replay_speed_on_logs_without_timestamps_says_so(corpus: Path, monkeypatch, capsys) -> None:
    import prefwatch.cli as cli

    seen: dict = {}
    monkeypatch.setattr(cli, "_monitor", lambda path, mode, poll, **options: seen.update(options) or 0)
    assert main(["replay", str(corpus / "soup-dpo-takehome"), "--speed", "10"]) == 0
    assert "no timestamps" in capsys.readouterr().err and seen["speed"] is None
    assert main(["replay", str(SAMPLE.parent), "--speed", "10"]) == 0
    assert capsys.readouterr().err == "" and seen["speed"] == 10


# ---- TensorBoard's end-of-training summary ----------------------------------------------------


def test_tensorboard_summary_scalars_are_not_a_train_row(tmp_path: Path) -> None:
    """TRL's Trainer writes train_runtime, total_flos, train_loss and the *_per_second rates with the
    epoch at the last step: the latest train values stay the last real ones, never NaN."""
    logs = tmp_path / "run" / "runs" / "Apr11_10-00-00_host"
    logs.mkdir(parents=True)
    records = [file_version_event()]
    for step in (5, 10):
        records += [
            event(step, [simple_value("train/loss", 1.0 / step)]),
            event(step, [simple_value("train/epoch", step / 11)]),
        ]
    summary = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
    records += [event(11, [simple_value(f"train/{name}", 3.0)]) for name in summary]
    records.append(event(11, [simple_value("train/epoch", 1.0)]))
    (logs / "events.out.tfevents.1775840538.host.1.0").write_bytes(b"".join(record(r) for r in records))
    grid = _opened(tmp_path / "run")
    series = grid.cells[0].series
    assert series.train.steps.tolist() == [5.0, 10.0]
    assert series.train.column("loss").tolist() == pytest.approx([0.2, 0.1])
    assert series.finished and series.end_record["train/epoch"] == 1.0


# ---- the same real logs, written by TRL's TensorBoard writer ------------------------------------


def write_tensorboard(history: list[dict], out: Path) -> Path:
    """Replay a real log_history through transformers' TensorBoardCallback (what report_to="tensorboard"
    runs in TRL), as the Trainer calls it: ``on_log`` once per record, without the ``step`` that
    Trainer.log adds to the history only, at ``state.global_step`` = that step, ``epoch`` last (Trainer.log
    appends it; the saved state sorts keys), the end-of-training summary last."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    args = TrainingArguments(output_dir=str(out), report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback = TensorBoardCallback()
    callback.on_train_begin(args, state, control)
    for entry in history:
        state.global_step = entry["step"]
        logs = {k: v for k, v in entry.items() if k not in ("step", "epoch")} | {"epoch": entry["epoch"]}
        callback.on_log(args, state, control, logs=logs)
    callback.on_train_end(args, state, control)
    (events,) = out.glob("runs/*/events.out.tfevents.*")
    return events


@pytest.mark.parametrize(
    "folder, summary_apart",
    [("rlhf-recsys-outputs", True), ("distill-safety/outputs/dpo", False)],
    ids=["summary-after-last-row", "summary-at-last-row"],
)
def test_tensorboard_summary_of_a_real_run_is_not_a_train_row(
    folder: str, summary_apart: bool, corpus: Path, tmp_path: Path, capsys
) -> None:
    """Point 3 on real numbers with the real writer: the trainer_state.json's history (its last record is
    the Trainer's summary: train_runtime, train_loss, total_flos, *_per_second) replayed through
    TensorBoardCallback. The latest values in the report, the monitor and status are the last real train
    row's, never nan; and both readers classify the summary alike (metrics.END_KEYS), so the event file
    and the trainer_state.json it came from are judged the same."""
    from prefwatch.core.metrics import END_KEYS, canonical
    from prefwatch.view.model import cell_view

    history = json.loads((corpus / folder / "trainer_state.json").read_text())["log_history"]
    *rows, summary = history
    assert END_KEYS <= summary.keys() and not any(END_KEYS & r.keys() for r in rows)
    last = rows[-1]
    assert (summary["step"] > last["step"]) is summary_apart  # 336 after 330; 30 at 30 (one step, two logs)
    run = tmp_path / Path(folder).name
    write_tensorboard(history, run)
    assert not list(run.glob("**/trainer_state.json"))

    tensorboard, state = _opened(run).cells[0], _opened(corpus / folder).cells[0]
    assert tensorboard.series.train.steps.tolist() == state.series.train.steps.tolist() == [r["step"] for r in rows]
    assert sorted(tensorboard.series.train.names) == sorted(state.series.train.names)
    assert not END_KEYS & set(tensorboard.series.train.names)
    assert {canonical(k)[1] for k in tensorboard.series.end_record or {}} - {"step", "epoch"} == END_KEYS

    # The monitor: every metric's latest value is the last real row's.
    analysis = analyse(_opened(run))
    view = cell_view(analysis.cells[0])
    for key, value in last.items():
        if key != "step":
            assert view.metrics[key]["train"].latest == pytest.approx(value, rel=1e-6), key
    assert view.curves["chosen"].latest == pytest.approx(last["rewards/chosen"], rel=1e-6)

    # report: the same cell as from trainer_state.json, its last step the summary's.
    _, from_tensorboard = report_json(run, capsys=capsys)
    _, from_state = report_json(corpus / folder, capsys=capsys)
    (cell,), (same,) = from_tensorboard["cells"], from_state["cells"]
    assert cell["state"] == "finished" and cell["step"] == last["step"]
    assert (cell["objective"], cell["objective_source"]) == (same["objective"], same["objective_source"])
    assert [f["kind"] for f in cell["findings"]] == [f["kind"] for f in same["findings"]]
    for key in ("late_chosen", "late_rejected", "train_margin_late"):
        assert cell["review"][key] == pytest.approx(same["review"][key], rel=1e-6) and cell["review"][key] is not None
    assert review_row(analysis.cells[0])[2] == str(summary["step"])
    assert "nan" not in json.dumps(cell).lower()

    # status: the last real step, and how long ago in words.
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert f" {last['step']} " in out and "ago" in out and "nan" not in out.lower()


# ---- a console log: degeneration, and a DPOTrainer running SimPO under a DPO name ----------------

CONSOLE_RUN = CORPUS / "mabelgao" / "2026-04-11-llama3_8b_instruct_dpo_qlora"


def console_history(
    log: Path, logging_steps: int, eval_steps: int, max_steps: int, steps_per_epoch: float
) -> list[dict]:
    """The Trainer's log_history from its console log: each printed dict is one record, in order; the
    Trainer prints them without their step, so each gets the one the Trainer gave it (train records
    every ``logging_steps``, evaluations every ``eval_steps``, the summary at the last step). The epoch
    each record printed (rounded to 2 decimals) must agree with that step to the rounding: the steps
    are checked, not assumed (one record off is 5 steps, 0.012 epochs here)."""
    import ast

    history, trained, evaluated = [], 0, 0
    for line in log.read_text().splitlines():
        record = ast.literal_eval(line)
        if "train_runtime" in record:
            step = max_steps
        elif "eval_loss" in record:
            evaluated += 1
            step = evaluated * eval_steps
        else:
            trained += 1
            step = trained * logging_steps
        assert abs(record["epoch"] - step / steps_per_epoch) <= 0.005, (step, record["epoch"])
        history.append({**record, "step": step})
    return history


def test_a_simpo_run_under_a_dpo_name_whose_chosen_logps_collapse(tmp_path: Path, capsys) -> None:
    """Points 1 and 4 on a committed real log (tests/real_logs/EXPECTED.md): rewards = 0.1 × avg_logps
    on every row is SimPO whatever the folder says (objective_mismatch), and chosen log-probabilities
    falling from about −385 to about −13,000 is degeneration: an error, not a warning."""
    # 6750 training pairs (the log's train split), batch 1 × gradient accumulation 16 (the run's config).
    log = CONSOLE_RUN / "simpo_train_local.log"
    history = console_history(log, logging_steps=5, eval_steps=100, max_steps=421, steps_per_epoch=6750 / 16)
    assert [len([r for r in history if key in r]) for key in ("loss", "eval_loss", "train_runtime")] == [84, 4, 1]
    run = tmp_path / CONSOLE_RUN.name
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    os.utime(run / "trainer_state.json", (PAST, PAST))

    status, report = report_json(run, capsys=capsys)
    (cell,) = report["cells"]
    kinds = {f["kind"]: f for f in cell["findings"]}
    assert (cell["objective"], cell["objective_source"], cell["rank"]) == ("simpo", "logs", None)
    assert cell["state"] == "finished"
    mismatch = kinds["objective_mismatch"]
    assert mismatch["severity"] == "error" and "folder name says dpo" in mismatch["message"]
    degeneration = kinds["likelihood_displacement"]
    assert degeneration["severity"] == "error" and "degeneration" in degeneration["message"]
    assert not {"non_finite", "intermittent_non_finite", "margin_inconsistent", "saturation"} & kinds.keys()
    assert "None" not in " ".join(f["message"] for f in cell["findings"])
    assert status == EXIT_NOT_DECISIVE and not report["verdict"]["decisive"]


# ---- KTO runs printed in public issue threads (EXPECTED.md: trl-issue-1447-kto, halos-issue-24-kto) ----


def printed_records(log: Path) -> list[dict]:
    """A console log's printed dicts (Python's repr: single quotes, bare ``nan``), one per line, in order."""
    records = []
    for line in log.read_text().splitlines():
        text = re.sub(r"'([^']*)'", r'"\1"', line)
        records.append(json.loads(re.sub(r"\bnan\b", "NaN", text)))
    return records


def history_run(tmp_path: Path, folder: str, name: str) -> Path:
    """The printed records as a trainer_state.json's log_history, steps 1, 2, ... (EXPECTED.md says why)."""
    history = [{**r, "step": i} for i, r in enumerate(printed_records(CORPUS / folder / "console.log"), start=1)]
    run = tmp_path / name
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    os.utime(run / "trainer_state.json", (PAST, PAST))
    return run


def test_an_early_2024_kto_run_is_kto_and_its_label_stands(tmp_path: Path, capsys) -> None:
    """Issue 23's first case: TRL 0.8.1's KTO keys (kl, rewards, margins, logps; no sums or counts) were
    read as DPO (its rewards are 0 at step 1), and the folder name kto became an objective_mismatch error."""
    history = printed_records(CORPUS / "trl-issue-1447-kto" / "console.log")
    assert [r["learning_rate"] for r in history] == pytest.approx([1e-6 * n for n in range(1, 6)])  # one a step
    run = history_run(tmp_path, "trl-issue-1447-kto", "kto-r16")
    _, report = report_json(run, capsys=capsys)
    (cell,) = report["cells"]
    kinds = {f["kind"]: f for f in cell["findings"]}
    assert (cell["objective"], cell["objective_source"]) == ("kto", "logs")
    assert "kl" in cell["logs"]["evidence"] and "TRL KTOTrainer 0.8.0-0.8.1" in cell["logs"]["trainer"]
    assert "objective_mismatch" not in kinds
    diverged = kinds["non_finite"]
    assert diverged["severity"] == "error" and diverged["step"] == 2
    assert "loss is NaN or infinite from step 2 to the end (last finite step 1)" in diverged["message"]
    assert not {"frozen", "likelihood_displacement", "saturation"} & kinds.keys()
    _, labelled = report_json(run, "--label", "kto-r16=dpo", capsys=capsys)
    (mismatch,) = [f for f in labelled["cells"][0]["findings"] if f["kind"] == "objective_mismatch"]
    assert mismatch["severity"] == "error" and "KTO" in mismatch["message"] and "kl" in mismatch["message"]


def test_a_kto_run_with_positive_rewards_and_logits_is_kto(tmp_path: Path, capsys) -> None:
    run = history_run(tmp_path, "halos-issue-24-kto", "halos-issue-24-kto")
    _, report = report_json(run, capsys=capsys)
    (cell,) = report["cells"]
    assert (cell["objective"], cell["objective_source"]) == ("kto", "logs")
    assert "TRL KTOTrainer 0.12.0-1.4.0" in cell["logs"]["trainer"]
    assert cell["findings"] == []


@pytest.mark.parametrize("case", CASES, ids=[c.folder for c in CASES])
def test_a_right_label_never_becomes_an_error(case: Case, corpus: Path, capsys) -> None:
    """Every committed cell whose logs show a preference objective, labelled with that objective or
    another of its family (dpo on IPO, Online DPO; kto on DPOTrainer's kto_pair), reads no mismatch."""
    from prefwatch.core.objectives import FAMILY, PREFERENCE, TOKENS

    for cell_id, want in case.cells.items():
        if want.objective not in PREFERENCE or want.objective_source != "logs":
            continue
        labels = {o for o in TOKENS.values() if o in PREFERENCE}  # what --label accepts
        family = sorted(o for o in labels if FAMILY.get(o, o) == FAMILY.get(want.objective, want.objective))
        for label in family:
            _, report = report_json(corpus / case.folder, "--label", f"{cell_id}={label}", capsys=capsys)
            (cell,) = [c for c in report["cells"] if c["id"] == cell_id]
            assert not [f for f in cell["findings"] if f["kind"] == "objective_mismatch"], (cell_id, label)
