"""What the model writes: completions.jsonl read back (bounded, hostile lines), its figures, the
length_drift finding, its weight in the verdict, the pane and the HTML report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from crafted import Cell, write_grid
from test_tui import run, screen_text, wait_for

from prefwatch.analysis.analyse import analyse
from prefwatch.core.clock import FakeClock
from prefwatch.core.completions import Completion, distinct_ngrams, length_stats, new_words
from prefwatch.core.decide import CellResult, decide
from prefwatch.core.diagnose import DEFAULT, ERROR, WARN, Diagnosis, Finding, Review
from prefwatch.ingest import completions as reader
from prefwatch.ingest.discover import open_path


def answer(text: str, eos: bool = True, pid: str = "h0000") -> Completion:
    return Completion(pid, "Customer: hi\nAgent:", text, len(text), eos)


def test_length_stats_and_distinct_bigrams():
    stats = length_stats([answer("a b c"), answer("a b"), answer("x" * 8, eos=False)], max_new_tokens=8)
    assert stats.mean == pytest.approx((5 + 3 + 8) / 3)
    assert stats.sd == pytest.approx(np.std([5, 3, 8], ddof=1))
    assert stats.at_max == pytest.approx(1 / 3)
    # bigrams: (a b) (b c) (a b): 2 distinct of 3
    assert distinct_ngrams(["a b c", "a b", "x"]) == pytest.approx(2 / 3)
    assert math.isnan(distinct_ngrams(["one", "two"]))
    assert length_stats([]).n == 0


def test_new_words_marks_what_the_reference_lacks():
    text = "Thanks! Teams get 23% off. P.S. Free gift!"
    spans = new_words(text, "Thanks! Teams get 23% off.")
    assert [text[a:b] for a, b in spans] == [" P.S. Free gift!"]
    assert new_words("same words", "same words") == []


def line(step: int, texts: list[str], reference: bool = False, limit: int = 64) -> str:
    completions = [
        {"id": f"h{i:04d}", "prompt": "p", "text": t, "tokens": len(t), "eos": len(t) < limit}
        for i, t in enumerate(texts)
    ]
    return json.dumps(
        {"step": step, "reference": reference, "max_new_tokens": limit, "seconds": 0.1, "completions": completions}
    )


def cell_with(tmp_path: Path, lines: list[bytes | str]) -> Path:
    grid = write_grid(tmp_path, "g", [Cell("dpo-r8", "dpo", 8, 80)])
    path = grid / "cells" / "dpo-r8" / "completions.jsonl"
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return grid


def test_hostile_lines_are_counted_literal_and_bounded(tmp_path):
    huge = "A" * 3_000_000  # a 3 MB line: over the reader's 1 MiB, rejected without being held
    big = "B" * 900_000  # under it: kept, cut to MAX_TEXT_CHARS
    grid = cell_with(
        tmp_path,
        [
            line(0, ["\x1b[31mred\x1b[0m [bold]markup[/bold]", "\ud800 lone"], reference=True),
            line(10, [huge]),
            line(20, [big]),
            b'{"step": 30, "completions": [{"text": "\xff\xfe bad utf-8", "tokens": 3}]}',
            '{"step": 40, "completions": "not a list"}',
            '{"step": 50, "completions": [{"text": 5, "tokens": 1}]}',
            "not json at all",
            line(60, ["fine answer"]),
        ],
    )
    source = open_path(grid)
    source.poll()
    cell = source.cells[0]
    log = cell.completions
    assert log.reference is not None and [e.step for e in log.evaluations] == [20, 60]
    assert cell.series.rejected["bad completions line"] == 5  # huge, bad UTF-8, two bad shapes, not JSON
    kept = log.evaluations[0].completions[0]
    assert len(kept.text) <= reader.MAX_TEXT_CHARS + len(reader.CUT_MARK) and kept.text.endswith(reader.CUT_MARK)
    assert kept.tokens == 900_000  # the figure stays what was written
    texts = [c.text for c in log.reference.completions]
    assert texts[0].startswith("\x1b[31m") and texts[1] == "\\ud800 lone"  # a lone surrogate shown as an escape


def test_only_recent_evaluations_keep_their_texts(tmp_path):
    lines = [line(0, ["ref answer"], reference=True)]
    lines += [line(step, [f"answer {step}"]) for step in range(10, 10 * (reader.KEEP_TEXTS + 20), 10)]
    grid = cell_with(tmp_path, lines)
    source = open_path(grid)
    source.poll()
    log = source.cells[0].completions
    with_text = [e for e in log.evaluations if e.completions]
    assert len(with_text) == reader.KEEP_TEXTS and with_text[-1] is log.evaluations[-1]
    assert all(e.stats.n == 1 for e in log.evaluations)  # every evaluation's figures stay
    assert log.reference is not None and log.reference.completions


def drift_grid(tmp_path: Path, ratio: float, won: int = 80, collapsed: bool = False) -> Path:
    grid = write_grid(tmp_path, "g", [Cell("dpo-r8", "dpo", 8, won, completions=ratio)])
    if collapsed:  # every late answer the same two words
        path = grid / "cells" / "dpo-r8" / "completions.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines()]
        for record in records[-3:]:
            for c in record["completions"]:
                c.update(text="1. 1. 1. 1.", tokens=11, eos=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return grid


def findings(grid: Path) -> list[Finding]:
    source = open_path(grid)
    source.poll()
    return [f for f in analyse(source).cells[0].diagnosis.findings if f.kind == "length_drift"]


def test_length_drift_fires_when_length_moved_and_pairs_are_won(tmp_path):
    (found,) = findings(drift_grid(tmp_path / "a", 0.3))
    assert found.severity == WARN
    # 46 bytes on average; the last three evaluations at 0.44, 0.37 and 0.30 of it; accuracy 0.64, 0.72, 0.80
    assert "shrank from 46.0 tokens (the reference's) to 17.0 (0.37x) while held-out accuracy is 0.72" in found.message
    assert found.step == 70  # the first evaluation below half the reference's length (0.51 at 60, 0.44 at 70)
    assert found.step is not None
    (grew,) = findings(drift_grid(tmp_path / "b", 2.6))
    assert "grew" in grew.message


def test_length_drift_stays_quiet_within_the_factor_or_when_pairs_are_lost(tmp_path):
    assert findings(drift_grid(tmp_path / "a", 0.7)) == []  # shrank, but less than 2x
    assert findings(drift_grid(tmp_path / "b", 0.3, won=40)) == []  # accuracy never reaches 0.6


def test_collapse_to_identical_short_answers_is_degeneration(tmp_path):
    (found,) = findings(drift_grid(tmp_path, 0.3, collapsed=True))
    assert found.severity == ERROR and found.message.startswith("degeneration:")
    assert "distinct-2" in found.message


def result(cell_id: str, objective: str, won: int, drift: bool, gap: tuple[float, float]) -> CellResult:
    review = Review(train_margin_late=gap[0], heldout_margin=gap[1], heldout_pairs_won=won, heldout_pairs=100)
    found = [Finding("length_drift", WARN, "length learned: completions shrank from 34 to 6 (0.17x)", 40)]
    return CellResult(cell_id, objective, 8, 0, True, Diagnosis(review, found if drift else []))


def test_a_simpo_cell_without_the_drift_is_cleaner_than_a_dpo_cell_with_it():
    # SimPO's margin gap is the larger (it would not be cleaner by margins alone), but DPO won its pairs
    # with a length drift: the verdict switches, and says why.
    verdict = decide(
        [result("dpo-r8", "dpo", 80, True, (1.0, 0.8)), result("simpo-r8", "simpo", 81, False, (1.0, 0.5))]
    )
    assert verdict.objective == "simpo"
    assert "no length drift, where dpo-r8's completions shrank from 34 to 6" in verdict.reasons[0]
    # Without the drift the same numbers stay with DPO (the gap decides).
    verdict = decide(
        [result("dpo-r8", "dpo", 80, False, (1.0, 0.8)), result("simpo-r8", "simpo", 81, False, (1.0, 0.5))]
    )
    assert verdict.objective == "dpo"
    # A chosen cell that drifted is named in the verdict's reasons.
    verdict = decide(
        [result("dpo-r8", "dpo", 90, True, (1.0, 0.8)), result("simpo-r8", "simpo", 70, False, (1.0, 0.5))]
    )
    assert verdict.objective == "dpo" and any(
        r.startswith("beware: dpo-r8's completions shrank") for r in verdict.reasons
    )


def test_thresholds_have_their_defaults():
    assert (DEFAULT.length_factor, DEFAULT.length_win_accuracy, DEFAULT.collapse_distinct) == (2.0, 0.6, 0.5)


def test_html_report_shows_the_answers_escaped(tmp_path):
    from prefwatch.report.html import render_html

    grid = cell_with(
        tmp_path,
        [line(0, ["<script>alert(1)</script> ok"], reference=True), line(10, ["<b>x</b> ok more"]), line(20, ["z"])],
    )
    source = open_path(grid)
    source.poll()
    page = render_html(analyse(source))
    section = page[page.index('<section id="completions">') :]
    assert "&lt;script&gt;" in section and "<script>" not in page
    assert "final (step 20)" in section and "<ins>" in section


@run
async def test_pane_renders_hostile_text_literally(tmp_path):
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.screens.completions import CompletionsScreen

    grid = cell_with(
        tmp_path,
        [line(0, ["[bold]ref[/bold]"], reference=True), line(10, ["\x1b[31mred\x1b[0m [link=x]y[/link]"])],
    )
    app = MonitorApp(open_path(grid), mode="replay")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.screen.focused is not None)
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionsScreen))
        await pilot.pause()
        shown = screen_text(app)
        assert "\\x1b[31mred\\x1b[0m [link=x]y[/link]" in shown and "[bold]ref[/bold]" in shown


WANDB_RUN = """
import sys, wandb, pandas as pd
run = wandb.init(project="p", dir=sys.argv[1], mode="offline", name="dpo-r8")
rows = []
for step in (10, 20):
    wandb.log({"train/loss": 0.5, "train/rewards/margins": 0.1 * step}, step=step)
    rows += [[str(step), f"Customer: question {i}?\\nAgent:", "word " * (step // 10 + i)] for i in range(3)]
    # What TRL's LogCompletionsCallback does with report_to="wandb" (trl/trainer/callbacks.py):
    wandb.log({"completions": pd.DataFrame(columns=["step", "prompt", "completion"], data=rows)})
run.finish()
"""


def test_trl_log_completions_table_in_a_wandb_run_is_read(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("pandas")
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-c", WANDB_RUN, str(tmp_path)], check=True, env=env, timeout=300)
    (table,) = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/table/completions_20_*.table.json"))
    written = json.loads(table.read_text())
    written["data"] += [["20", 5, None], ["x", "p", "t"]]  # rows no completion can be read from
    table.write_text(json.dumps(written))
    clock = FakeClock()
    source = open_path(tmp_path / "wandb", clock=clock)
    source.poll()
    (cell,) = source.cells
    log = cell.completions
    assert log.reference is None and [e.step for e in log.evaluations] == [10, 20]
    last = log.evaluations[-1]
    assert [c.id for c in last.completions] == ["p00", "p01", "p02"]
    assert [c.tokens for c in last.completions] == [2, 3, 4]  # words: W&B tables carry no token counts
    assert last.completions[1].prompt == "Customer: question 1?\nAgent:"
    assert cell.series.rejected["bad completions row"] == 2  # the two bad rows of the last table, once
    table.write_text(json.dumps(written))  # written again, the same rows, a second later
    later = table.stat().st_mtime + 1
    os.utime(table, (later, later))
    assert not cell.poll() and cell.series.rejected["bad completions row"] == 2  # not looked for within 2 s
    clock.advance(reader.TABLE_SECONDS)
    assert cell.poll()  # looked for again: read again, nothing new, nothing counted twice
    assert cell.series.rejected["bad completions row"] == 2 and [e.step for e in log.evaluations] == [10, 20]


# What TRL's LogCompletionsCallback logs, with trackio in W&B's place (``import trackio as wandb``, the
# swap trackio's README offers): at each evaluation the growing table of every row so far, its steps as
# text. Among the rows, text that is data: an escape sequence, Rich markup, a conversation (a list of
# messages, as TRL logs chat prompts), and two rows no completion can be read from.
TRACKIO_RUN = r"""
import sys, trackio, pandas as pd
trackio.init(project="p", name="dpo-r8", config={"loss_type": "sigmoid", "max_steps": 20})
rows = []
for step in range(1, 21):
    trackio.log({"train/loss": 0.69 - 0.01 * step, "train/rewards/margins": 0.1 * step,
                 "train/rewards/accuracies": 0.6, "train/global_step": step})
    if step % 10 == 0:
        trackio.log({"eval/loss": 0.6, "eval/rewards/accuracies": 0.7, "train/global_step": step})
        rows += [[str(step), f"Customer: question {i}?\nAgent:", "word " * (step // 10 + i)] for i in range(3)]
        if step == 10:
            rows += [["10", [{"role": "user", "content": "hi [bold]x[/bold]"}], "\x1b[31mred\x1b[0m [link=y]z[/link]"],
                     ["10", "p", 5], ["ten", "p", "t"]]
        trackio.log({"completions": trackio.Table(dataframe=pd.DataFrame(columns=["step", "prompt", "completion"], data=rows))})
trackio.log({"train/epoch": 1.0, "train/global_step": 20})
trackio.finish()
"""


@pytest.fixture(scope="module")
def trackio_store(tmp_path_factory) -> Path:
    pytest.importorskip("trackio")
    pytest.importorskip("pandas")
    import os
    import subprocess
    import sys

    store = tmp_path_factory.mktemp("tables") / "trackio"
    env = {**os.environ, "TRACKIO_DIR": str(store)}
    subprocess.run([sys.executable, "-c", TRACKIO_RUN], check=True, env=env, timeout=300, capture_output=True)
    return store


def test_trl_log_completions_table_in_a_trackio_run_is_read(trackio_store):
    clock = FakeClock()
    source = open_path(trackio_store, clock=clock)
    source.poll()
    (cell,) = source.cells
    log = cell.completions
    assert log.reference is None and [e.step for e in log.evaluations] == [10, 20]
    first, last = log.evaluations
    assert [c.id for c in last.completions] == ["p00", "p01", "p02"]  # the same ids in every table
    assert [c.tokens for c in last.completions] == [2, 3, 4]  # words: a table carries no token counts
    assert [c.text for c in first.completions][-1] == "\x1b[31mred\x1b[0m [link=y]z[/link]"  # kept as written
    assert first.completions[-1].prompt == "hi [bold]x[/bold]"  # a conversation: its messages' text
    assert cell.series.rejected["bad completions row"] == 2  # in both tables, counted once
    clock.advance(reader.TABLE_SECONDS)  # the tables are looked for again
    cell.poll()  # nothing new in the store: nothing added, nothing counted again
    assert [e.step for e in cell.completions.evaluations] == [10, 20]
    assert cell.series.rejected["bad completions row"] == 2


def test_a_trackio_database_replaced_by_a_shorter_one_is_read_again(trackio_store, tmp_path):
    """A store rewritten from its start (fewer rows than were read): its tables are read again, and
    what the old rows said is not kept."""
    import contextlib
    import shutil
    import sqlite3

    store = tmp_path / "trackio"
    shutil.copytree(trackio_store, store)
    clock = FakeClock()
    source = open_path(store, clock=clock)
    source.poll()
    (cell,) = source.cells
    assert [e.step for e in cell.completions.evaluations] == [10, 20]
    (db,) = store.glob("*.db")
    # The run as it stood after its first table, written as trackio writes: one connection, closed
    # after the write (its close moves the log into the file; a log left open is read once settled).
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        (first_table,) = connection.execute(
            "SELECT min(id) FROM metrics WHERE instr(metrics, 'trackio.table')"
        ).fetchone()
        connection.execute("DELETE FROM metrics WHERE id > ?", (first_table,))
    for _ in range(2):  # the first look finds the rows gone, the next reads the tables again
        clock.advance(reader.TABLE_SECONDS)
        cell.poll()
    assert [e.step for e in cell.completions.evaluations] == [10]


@run
async def test_the_pane_shows_a_trackio_runs_completions_literally(trackio_store):
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.screens.completions import CompletionsScreen

    app = MonitorApp(open_path(trackio_store), mode="replay")
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.view is not None and app.screen.focused is not None)
        await wait_for(pilot, lambda: app.view.cells[0].completions is not None)
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, CompletionsScreen))
        await pilot.pause()
        shown = screen_text(app)
        assert "mean length 3.0 tokens at step 20" in shown
        assert "\\x1b[31mred\\x1b[0m [link=y]z[/link]" in shown and "hi [bold]x[/bold]" in shown


GRPO_RUN = r"""
import sys, torch, datasets
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from prefwatch.train.tiny import tiny_model_path

torch.set_num_threads(1)
path = tiny_model_path()
prompts = [{"prompt": f"Customer: Hi, about the desk: question {i}?\nAgent:"} for i in range(8)]
args = GRPOConfig(
    output_dir=sys.argv[1], max_steps=3, per_device_train_batch_size=4, num_generations=2,
    max_completion_length=24, logging_steps=1, log_completions=True, report_to="trackio",
    run_name="grpo-r8", learning_rate=1e-4, disable_tqdm=True, save_strategy="no", bf16=False, use_cpu=True,
)
trainer = GRPOTrainer(
    model=AutoModelForCausalLM.from_pretrained(path),
    reward_funcs=lambda completions, **kw: [-float(len(c)) for c in completions],
    args=args,
    train_dataset=datasets.Dataset.from_list(prompts),
    processing_class=AutoTokenizer.from_pretrained(path),
    peft_config=LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
)
trainer.train()
"""


def test_completions_trl_grpo_logs_to_trackio_are_read_as_it_wrote_them(tmp_path):
    """TRL's own table writer: GRPOTrainer with log_completions and report_to="trackio", trained for
    real on the tiny model. The expected rows are read straight from trackio's database."""
    for name in ("trackio", "pandas", "torch", "trl", "peft", "datasets"):
        pytest.importorskip(name)
    import os
    import sqlite3
    import subprocess
    import sys

    store = tmp_path / "trackio"
    env = {**os.environ, "TRACKIO_DIR": str(store), "PREFWATCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", GRPO_RUN, str(tmp_path / "out")], env=env, timeout=600, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (db,) = store.glob("*.db")
    with sqlite3.connect(db) as connection:
        logged = [json.loads(text) for (text,) in connection.execute("SELECT metrics FROM metrics ORDER BY id")]
    tables = [row["completions"]["_value"] for row in logged if "completions" in row]
    expected: dict[int, list[str]] = {}
    for table in tables:  # one table per logged step; TRL logs the last one once more at the end
        for row in table:
            expected.setdefault(row["step"], [])
        if len(expected[table[0]["step"]]) == 0:
            expected[table[0]["step"]] = [row["completion"] for row in table]
    assert sorted(expected) == [1, 2, 3] and len(tables) == 4

    source = open_path(store)
    source.poll()
    (cell,) = source.cells
    log = cell.completions
    assert [e.step for e in log.evaluations] == [1, 2, 3]
    for evaluation in log.evaluations:
        assert [c.text for c in evaluation.completions] == expected[evaluation.step]
        assert [c.tokens for c in evaluation.completions] == [len(t.split()) for t in expected[evaluation.step]]
    assert not cell.series.rejected
    result = subprocess.run(
        [sys.executable, "-m", "prefwatch", "report", str(store), "--format", "json"], capture_output=True, text=True
    )
    (reported,) = json.loads(result.stdout)["cells"]
    assert reported["completions"]["evaluations"] == 3
