"""One reader protocol: the format table picks a run's reader, a cell composes it and knows no format,
replay is a reader mode."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from prefwatch.core.clock import FakeClock
from prefwatch.ingest import formats, sources
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.readers.jsonl import MetricsLog
from prefwatch.ingest.readers.protocol import Batch
from prefwatch.ingest.readers.tensorboard import EVENT_FILE_PREFIX, TensorBoardRun
from prefwatch.ingest.readers.trainer_state import TRAINER_STATE, TrainerState
from prefwatch.ingest.replay import Replay, ReplayGrid
from prefwatch.ingest.sources import CellSource

HISTORY = [{"loss": 0.7 - 0.01 * s, "rewards/margins": 0.1 * s, "step": s} for s in range(1, 6)]


def trainer_state(folder: Path) -> Path:
    path = folder / TRAINER_STATE
    path.write_text(json.dumps({"log_history": HISTORY, "global_step": 5, "max_steps": 10}, indent=2))
    return path


def test_the_table_picks_the_richest_log_of_a_folder_and_a_file_by_its_name(tmp_path: Path) -> None:
    state = trainer_state(tmp_path)
    assert formats.format_of(tmp_path) is TrainerState
    events = tmp_path / "runs" / "x" / f"{EVENT_FILE_PREFIX}1700000000.host"
    events.parent.mkdir(parents=True)
    events.write_bytes(b"")
    assert formats.format_of(tmp_path) is TensorBoardRun
    (tmp_path / "metrics.jsonl").write_text("")
    assert formats.format_of(tmp_path) is MetricsLog
    assert formats.format_of(state) is TrainerState and formats.format_of(events) is TensorBoardRun
    assert formats.format_of(tmp_path / "metrics.jsonl") is None  # any other file: open_path reads JSON lines
    assert formats.format_of(tmp_path / "runs") is TensorBoardRun
    assert formats.format_of(tmp_path / "runs" / "x" / "nothing-here") is None


@pytest.mark.parametrize("kind", ["jsonl", "trainer_state"])
def test_a_cell_reads_through_its_reader_whatever_the_format(tmp_path: Path, kind: str) -> None:
    run = tmp_path / "dpo-r8"
    run.mkdir()
    if kind == "jsonl":
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    else:
        trainer_state(run)
    (cell,) = open_path(run).cells
    assert type(cell) is CellSource and isinstance(cell.reader, (MetricsLog, TrainerState))
    assert cell.poll() and list(cell.series.train.steps) == [1, 2, 3, 4, 5]
    batch = cell.reader.poll()  # nothing new on disk
    assert isinstance(batch, Batch) and batch.series is cell.series and not batch.changed


def test_the_cell_imports_no_format() -> None:
    tree = ast.parse(Path(sources.__file__).read_text())
    named = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    named |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    formats_ = {"jsonl", "tensorboard", "trainer_state", "trackio", "mlflow", "wandb", "store", "trackers", "replay"}
    assert not {m for m in named if m and m.rsplit(".", 1)[-1] in formats_}, named
    assert "tracker" not in {f.name for f in CellSource.__dataclass_fields__.values()}


def test_replay_is_a_reader_of_a_plain_cell(tmp_path: Path) -> None:
    run = tmp_path / "dpo-r8"
    run.mkdir()
    rows = [{**r, "time": 1_700_000_000.0 + r["step"]} for r in HISTORY]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clock = FakeClock()
    replay = ReplayGrid(open_path(run), 1.0, clock)
    (cell,) = replay.source.cells
    assert type(cell) is CellSource and isinstance(cell.reader, Replay)
    assert cell.series.last_step == 1 and cell.status().state == "running"
    clock.advance(2.5)
    assert replay.update() and cell.series.last_step == 3  # the same cell, its rows released up to the clock
    clock.advance(57.5)
    assert replay.update() and cell.series.last_step == 5 and cell.status().state == "incomplete"


def test_what_the_readers_wait_for_is_timed_by_the_clock_they_are_given(tmp_path: Path) -> None:
    clock = FakeClock()
    grid = open_path(tmp_path, wait=True, clock=clock)  # a folder with no logs yet: looked at again
    assert grid.cells == [] and not grid.poll()
    run = tmp_path / "dpo-r8"
    run.mkdir()
    rows = [{**r, "time": clock.time()} for r in HISTORY]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clock.advance(sources.REFRESH_SECONDS / 2)
    assert not grid.poll() and grid.cells == []  # not looked for again within REFRESH_SECONDS
    clock.advance(sources.REFRESH_SECONDS / 2)
    assert grid.poll() and [c.id for c in grid.cells] == ["dpo-r8"]
    (cell,) = grid.cells
    assert cell.clock is clock and cell.status().state == "running"
    (run / "data.json").write_text(json.dumps({"train": {"chosen_shorter_share": 0.5}}))
    assert not cell.poll() and cell.data_stats is None  # data.json is looked for once a second
    clock.advance(sources.DATA_SECONDS + 0.01)
    assert cell.poll() and cell.data_stats is not None
    clock.advance(sources.INCOMPLETE_AFTER_SECONDS)  # ten minutes without a line, by the clock
    assert cell.status().state == "incomplete"
