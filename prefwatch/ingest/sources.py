"""Turn whatever path a user gives into cells to read: a prefwatch run directory, one cell, a
metrics.jsonl, a TRL output_dir (trainer_state.json), or a folder holding several of those.

Each cell is a CellSource: it owns the readers of its files and the series built from them, and
``poll()`` brings them up to date with what is on disk now.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prefwatch import jobs, rundir
from prefwatch.ingest.columnar import ColumnarDecoder, add_blocks
from prefwatch.ingest.tail import TailReader, decode_line
from prefwatch.series import CellSeries

OBJECTIVE_TOKENS = {"dpo": "dpo", "simpo": "simpo", "cpo": "simpo", "orpo": "orpo"}
TRAINER_STATE = "trainer_state.json"
# Logs of a job prefwatch did not start, unfinished and unchanged for this long, are called idle.
IDLE_AFTER_SECONDS = 600.0
IDLE = "idle"


class SourceError(ValueError):
    """A path that holds no logs prefwatch can read."""


@dataclass
class PairLog:
    """Per-pair held-out rewards at each evaluation (eval_pairs.jsonl), as arrays."""

    pair_ids: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    chosen: list[np.ndarray] = field(default_factory=list)
    rejected: list[np.ndarray] = field(default_factory=list)

    def add(self, record: Any) -> bool:
        if not isinstance(record, dict):
            return False
        try:
            chosen = np.asarray(record["chosen"], dtype=float)
            rejected = np.asarray(record["rejected"], dtype=float)
            step = int(record["step"])
        except (KeyError, TypeError, ValueError):
            return False
        if chosen.shape != rejected.shape or chosen.ndim != 1:
            return False
        if not self.pair_ids:
            self.pair_ids = [str(p) for p in record.get("pair_ids") or range(len(chosen))]
        if len(chosen) != len(self.pair_ids):
            return False
        if self.steps and step < self.steps[-1]:
            keep = int(np.searchsorted(self.steps, step, side="left"))
            del self.steps[keep:], self.chosen[keep:], self.rejected[keep:]
        self.steps.append(step)
        self.chosen.append(chosen)
        self.rejected.append(rejected)
        return True

    def wins(self, index: int = -1) -> np.ndarray | None:
        """Which held-out pairs the cell ranked right at an evaluation (ties count as wrong, as TRL does)."""
        if not self.steps:
            return None
        return self.chosen[index] > self.rejected[index]


@dataclass
class CellSource:
    """One cell and the readers of its files."""

    id: str
    directory: Path
    objective: str | None = None
    rank: int | None = None
    seed: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    series: CellSeries = field(default_factory=CellSeries)
    pairs: PairLog = field(default_factory=PairLog)
    data_stats: dict[str, Any] | None = None
    metrics_path: Path | None = None
    trainer_state_dir: Path | None = None
    managed: bool = False  # started by prefwatch: has status.json and a supervisor
    _metrics_reader: TailReader | None = None
    _columnar: ColumnarDecoder = field(default_factory=ColumnarDecoder)
    _pairs_reader: TailReader | None = None
    _state_seen: tuple[Path, int, int] | None = None
    _history_used: int = 0

    def __post_init__(self) -> None:
        if self.metrics_path is not None:
            self._metrics_reader = TailReader(self.metrics_path)
        pairs_path = self.directory / rundir.EVAL_PAIRS_FILE
        self._pairs_reader = TailReader(pairs_path)

    @property
    def max_steps(self) -> int | None:
        value = self.info.get("train", {}).get("max_steps")
        return value if isinstance(value, int) else None

    @property
    def read_error(self) -> str | None:
        reader = self._metrics_reader
        if reader is not None and reader.error:
            return reader.error
        if reader is not None and reader.missing:
            return f"{reader.path}: deleted"
        return None

    def watched_paths(self) -> list[Path]:
        return [self.directory]

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when anything changed."""
        changed = self._poll_metrics() if self._metrics_reader else self._poll_trainer_state()
        changed |= self._poll_pairs()
        if self.data_stats is None:
            self.data_stats = rundir.read_json(self.directory / rundir.DATA_FILE)
            changed |= self.data_stats is not None
        return changed

    def _poll_metrics(self) -> bool:
        assert self._metrics_reader is not None
        blocks = 0

        def take(block: bytes) -> None:
            nonlocal blocks
            blocks += 1
            add_blocks(self.series, [block], self._columnar)

        batch = self._metrics_reader.poll(on_block=take, on_restart=self._reset_series)
        self.series.rejected.update(batch.rejected)
        return bool(blocks or batch.rejected or batch.restarted)

    def _reset_series(self) -> None:
        self.series = CellSeries()

    def _poll_pairs(self) -> bool:
        assert self._pairs_reader is not None
        batch = self._pairs_reader.poll()
        if batch.restarted:
            self.pairs = PairLog()
        for record in batch.records:
            if not self.pairs.add(record):
                self.series.rejected["bad eval_pairs line"] += 1
        return bool(batch.records)

    def _poll_trainer_state(self) -> bool:
        """Re-read the newest trainer_state.json when it changes; add only history not yet seen."""
        path = newest_trainer_state(self.trainer_state_dir or self.directory)
        if path is None:
            return False
        try:
            stat = path.stat()
            seen = (path, stat.st_mtime_ns, stat.st_size)
            if seen == self._state_seen:
                return False
            state = decode_line(path.read_bytes())
        except OSError:
            return False
        if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
            self.series.rejected["trainer_state without log_history"] += 1
            return False
        history = state["log_history"]
        self._state_seen = seen
        if len(history) < self._history_used:
            self.series, self._history_used = CellSeries(), 0
        self.series.add_all(history[self._history_used :])
        self._history_used = len(history)
        max_steps, step = state.get("max_steps"), state.get("global_step")
        if isinstance(max_steps, int) and "train" not in self.info:
            self.info["train"] = {"max_steps": max_steps}
        if isinstance(max_steps, int) and isinstance(step, int) and 0 < max_steps <= step:
            # Checkpoints are saved before the Trainer appends its end-of-training record.
            self.series.end_record = self.series.end_record or {"global_step": step}
        return True

    def status(self, supervisor_alive: bool | None = None) -> jobs.CellStatus:
        if self.managed:
            return jobs.read_status(self.directory, supervisor_alive)
        if self.series.finished:
            return jobs.CellStatus(jobs.FINISHED, {})
        if not self.series.records:
            return jobs.CellStatus(jobs.QUEUED, {})
        # No process is known for logs prefwatch did not start: recent writes are all that says "running".
        last = self.series.last_time
        recent = last is not None and time.time() - last < IDLE_AFTER_SECONDS
        return jobs.CellStatus(jobs.RUNNING if recent or last is None and self._recently_written() else IDLE, {})

    def _recently_written(self) -> bool:
        log = self.metrics_path or newest_trainer_state(self.trainer_state_dir or self.directory)
        try:
            return log is not None and time.time() - log.stat().st_mtime < IDLE_AFTER_SECONDS
        except OSError:
            return False


@dataclass
class GridSource:
    """A set of cells read together: a launched grid, or logs collected from a folder."""

    name: str
    root: Path
    cells: list[CellSource]
    managed: bool = False

    def poll(self) -> bool:
        changed = False
        for cell in self.cells:
            changed |= cell.poll()
        return changed

    def supervisor_alive(self) -> bool | None:
        return jobs.supervisor_alive(self.root) if self.managed else None

    @property
    def objectives(self) -> list[str]:
        return _ordered(c.objective or "?" for c in self.cells)

    @property
    def ranks(self) -> list[int | None]:
        return _ordered(c.rank for c in self.cells)


def _ordered(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def open_path(path: Path | str, labels: dict[str, tuple[str | None, int | None]] | None = None) -> GridSource:
    """Recognise what a path holds and build its cells (nothing is read yet: call poll())."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name == TRAINER_STATE:
            return GridSource(path.parent.name, path.parent, [_trl_cell(path.parent)])
        return GridSource(path.stem, path.parent, [_jsonl_cell(path.parent, path)])
    if rundir.is_grid_dir(path):
        cells = [_prefwatch_cell(d) for d in rundir.cell_dirs(path)]
        return GridSource(path.name, path, cells, managed=True)
    single = _cell_at(path)
    if single is not None:
        return GridSource(path.name, path.parent, [single])
    cells = [c for c in (_cell_at(d) for d in sorted(path.iterdir()) if d.is_dir()) if c is not None]
    if not cells:
        raise SourceError(f"{path}: no logs found (looked for a run directory, metrics.jsonl and trainer_state.json)")
    for cell in cells:
        if labels and cell.id in labels:
            cell.objective, cell.rank = labels[cell.id]
    return GridSource(path.name, path, cells)


def _cell_at(path: Path) -> CellSource | None:
    if (path / rundir.CELL_FILE).is_file():
        return _prefwatch_cell(path)
    if (path / rundir.METRICS_FILE).is_file():
        return _jsonl_cell(path, path / rundir.METRICS_FILE)
    if newest_trainer_state(path) is not None:
        return _trl_cell(path)
    return None


def _prefwatch_cell(path: Path) -> CellSource:
    info = rundir.read_json(path / rundir.CELL_FILE) or {}
    guess_objective, guess_rank = guess_labels(path)
    return CellSource(
        id=path.name,
        directory=path,
        objective=info.get("objective", guess_objective),
        rank=info.get("rank", guess_rank),
        seed=info.get("seed"),
        info=info,
        metrics_path=path / rundir.METRICS_FILE,
        managed=(path / rundir.STATUS_FILE).is_file(),
    )


def _jsonl_cell(directory: Path, metrics_path: Path) -> CellSource:
    objective, rank = guess_labels(directory)
    return CellSource(directory.name, directory, objective, rank, metrics_path=metrics_path)


def _trl_cell(path: Path) -> CellSource:
    objective, rank = guess_labels(path)
    return CellSource(path.name, path, objective, rank, trainer_state_dir=path)


def newest_trainer_state(path: Path) -> Path | None:
    """The root trainer_state.json, else the one in the highest-numbered checkpoint-N folder."""
    root = path / TRAINER_STATE
    if root.is_file():
        return root
    best, best_step = None, -1
    for candidate in path.glob(f"checkpoint-*/{TRAINER_STATE}"):
        match = re.fullmatch(r"checkpoint-(\d+)", candidate.parent.name)
        if match and int(match.group(1)) > best_step:
            best, best_step = candidate, int(match.group(1))
    return best


def guess_labels(path: Path) -> tuple[str | None, int | None]:
    """Objective and LoRA rank from a folder: name tokens like dpo / simpo and r16, or adapter_config.json."""
    tokens = [t.lower() for t in re.split(r"[^A-Za-z0-9]+", path.name) if t]
    objective = next((OBJECTIVE_TOKENS[t] for t in tokens if t in OBJECTIVE_TOKENS), None)
    rank = None
    for adapter in [path / "adapter_config.json", *sorted(path.glob("checkpoint-*/adapter_config.json"))]:
        config = rundir.read_json(adapter)
        if config and isinstance(config.get("r"), int):
            rank = config["r"]
            break
    if rank is None:
        rank = next((int(t[1:]) for t in tokens if re.fullmatch(r"r\d+", t)), None)
    return objective, rank
