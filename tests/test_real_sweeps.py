"""Sweeps other people ran, judged as their numbers justify (tests/real_logs/EXPECTED.md, the sections
"orpo-isaerft-sweep" and "Unrelated runs on held-out sets of different sizes", written before prefwatch
read these logs; PROVENANCE.md says where each comes from).

A learning-rate × β sweep of TRL ORPO runs and a run of another base model: the factors each cell
carries and where each was read, runs of two base models never compared as one grid, held-out sets of
two sizes compared by accuracy only, and no run ever called a seed of another.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import markdown_text
from rich.console import Console
from test_real_logs import CONSOLE_RUN, console_history

from prefwatch.analysis.analyse import analyse
from prefwatch.cli import EXIT_NOT_DECISIVE, main
from prefwatch.ingest.discover import open_path
from prefwatch.report.text import render_markdown, render_terminal

SWEEP = Path(__file__).resolve().parent / "real_logs" / "orpo-isaerft-sweep"
PAST = time.time() - 30 * 86400.0
SEEDS = re.compile(r"\(\d+ seeds\)|seed \w+:")  # "dpo r=16 (3 seeds)", "seed 0: 0.80"
GEMMA_62 = [
    "gemma-2-2b-lr1.1e-05-beta0.2-20250301-0424",
    "gemma-2-2b-lr1.1e-06-beta0.2-20250301-0308",
    "gemma-2-2b-lr1.9e-05-beta0.15-20250301-0449",
    "gemma-2-2b-lr2.2e-06-beta0.1-20250301-0629",
]
GEMMA_124 = "run-gemma-2-2b-lr9.7e-06-beta0.1-20250228-2313"
PYTHIA = "run-pythia-70m-deduped-20250228-0442"
# (learning rate, β) from each folder name, as EXPECTED.md lists them.
NAMED = {
    GEMMA_62[0]: (1.1e-05, 0.2),
    GEMMA_62[1]: (1.1e-06, 0.2),
    GEMMA_62[2]: (1.9e-05, 0.15),
    GEMMA_62[3]: (2.2e-06, 0.1),
    GEMMA_124: (9.7e-06, 0.1),
}


def dated(folder: Path) -> Path:
    """Files dated in the past: a fresh checkout dates them now, which would look like runs being written."""
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (PAST, PAST))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return dated(Path(shutil.copytree(SWEEP, tmp_path / SWEEP.name)))


def report_json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    status = main(["report", str(path), "--format", "json"])
    return status, json.loads(capsys.readouterr().out)


def test_each_factor_of_the_sweep_says_where_it_was_read(sweep: Path, capsys) -> None:
    status, report = report_json(sweep, capsys)
    cells = {c["id"]: c for c in report["cells"]}
    assert sorted(cells) == sorted([*GEMMA_62, GEMMA_124, PYTHIA])
    for cell_id, (lr, beta) in NAMED.items():
        factors = cells[cell_id]["factors"]
        assert (factors["lr"]["value"], factors["lr"]["from"]) == (lr, "folder name")
        assert (factors["beta"]["value"], factors["beta"]["from"]) == (beta, "folder name")
        assert (factors["model"]["value"], factors["model"]["from"]) == ("google/gemma-2-2b", "model card")
        assert (factors["batch_size"]["value"], factors["batch_size"]["from"]) == (2, "trainer_state.json")
    pythia = cells[PYTHIA]["factors"]
    assert (pythia["model"]["value"], pythia["batch_size"]["value"]) == ("EleutherAI/pythia-70m-deduped", 8)
    assert "lr" not in pythia and "beta" not in pythia  # its name has neither; nothing is guessed
    steps = {c: cells[c]["factors"]["max_steps"]["value"] for c in cells}
    assert steps == {**dict.fromkeys(GEMMA_62, 62), GEMMA_124: 124, PYTHIA: 936}
    for cell in cells.values():
        # ORPO from the logs; no LoRA rank (the adapter is ISAERFT, lora_r null); no seed anywhere.
        assert (cell["objective"], cell["objective_source"], cell["rank"], cell["rank_source"]) == (
            "orpo",
            "logs",
            None,
            None,
        )
        assert cell["seed"] is None and "seed" not in cell["factors"]
        assert cell["state"] == "finished"
        assert "given" not in json.dumps(cell["factors"])
    assert status == EXIT_NOT_DECISIVE


def test_two_base_models_are_two_groups_and_no_setting_of_the_sweep_wins(sweep: Path, capsys) -> None:
    status, report = report_json(sweep, capsys)
    verdict = report["verdict"]
    assert not verdict["decisive"] and status == EXIT_NOT_DECISIVE
    assert verdict["reasons"][0].startswith(
        "not one grid (different base models: google/gemma-2-2b (5 cells), EleutherAI/pythia-70m-deduped (1 cell))"
    )
    gemma, pythia = verdict["groups"]
    assert gemma["cells"] == [*GEMMA_62, GEMMA_124] and pythia["cells"] == [PYTHIA]
    # Every gemma run wins 60 of 100 pairs: no best setting; learning rate and β change nothing.
    assert (
        "no setting of β, learning rate, max steps, epochs wins more held-out pairs than another (60 of 100 in each of 5)"
        in gemma["reasons"]
    )
    assert gemma["setting"] == {} and not gemma["decisive"]
    effects = {e["factor"]: e for e in gemma["factor_effects"]}
    assert {"beta", "lr"} <= effects.keys()
    assert all(e["size"] == 0.0 and e["pairs"] == 0.0 for e in effects.values())
    assert effects["beta"]["within"] == "orpo"
    assert gemma["decides"].startswith("no factor changes held-out accuracy")
    assert pythia["reasons"] == ["one objective (orpo) and no known rank: nothing was compared"]
    # Nothing subtracts pair counts across the two models, and no run is anyone's seed.
    text = json.dumps(verdict)
    assert "pairs on average" not in text and not SEEDS.search(text) and "spread across seeds" not in text


def test_the_printed_report_never_says_seed_none(sweep: Path) -> None:
    grid = open_path(sweep)
    grid.poll()
    analysis = analyse(grid)
    console = Console(width=400, record=True, color_system=None)
    render_terminal(analysis, console)
    printed = console.export_text()
    for text in (printed, markdown_text(render_markdown(analysis))):
        assert "seed None" not in text and "Seeds" not in text
        assert "β=0.2, lr=1.1e-05 from folder name; model=google/gemma-2-2b from model card" in text
        assert "batch_size=2, max_steps=62, epochs=1 from trainer_state.json" in text


def test_runs_on_held_out_sets_of_different_sizes_compare_accuracies_only(tmp_path: Path, capsys) -> None:
    """The four 62-step gemma runs (100 held-out pairs) and the mabelgao SimPO run (750 pairs), one folder."""
    folder = tmp_path / "unrelated"
    for name in GEMMA_62:
        shutil.copytree(SWEEP / name, folder / name)
    history = console_history(
        CONSOLE_RUN / "simpo_train_local.log", logging_steps=5, eval_steps=100, max_steps=421, steps_per_epoch=6750 / 16
    )
    (folder / CONSOLE_RUN.name).mkdir()
    (folder / CONSOLE_RUN.name / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    status, report = report_json(dated(folder), capsys)
    verdict = report["verdict"]
    assert not verdict["decisive"] and status == EXIT_NOT_DECISIVE
    assert verdict["reasons"][0].startswith(
        "not one grid (different held-out sets: 750 pairs (1 cell), 100 pairs (4 cells))"
    )
    assert verdict["reasons"][1] == (
        "across different held-out sets only held-out accuracies are compared (pair counts are not): best "
        f"{CONSOLE_RUN.name} 0.83 on 750 pairs, {GEMMA_62[0]} 0.60 on 100 pairs"
    )
    simpo, gemma = verdict["groups"]
    assert simpo["cells"] == [CONSOLE_RUN.name] and gemma["cells"] == GEMMA_62
    assert (
        "no setting of β, learning rate wins more held-out pairs than another (60 of 100 in each of 4)"
        in gemma["reasons"]
    )
    text = json.dumps(verdict)
    # Never a difference of pair counts between 619 and 60, nor the two runs as seeds of one setting.
    assert "pairs on average" not in text and not SEEDS.search(text) and "619" not in text
