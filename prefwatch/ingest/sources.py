"""Turn whatever path a user gives into cells to read: a prefwatch run directory, one cell, a
metrics.jsonl, a TRL output_dir (trainer_state.json, or TensorBoard event files under runs/), or a
folder holding several of those.

Each cell is a CellSource: it owns the readers of its files and the series built from them, and
``poll()`` brings them up to date with what is on disk now.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from prefwatch.core import metrics
from prefwatch.core.factors import RANK, SEED, Factors, Origin, Value, config_factors
from prefwatch.core.objectives import NOTHING_YET, Claim, Inference, infer, name_objective
from prefwatch.core.series import CellSeries
from prefwatch.files import rundir, safe, system
from prefwatch.files.rundir import CellState, CellStatus, StatusRecord
from prefwatch.ingest import allocator, cache
from prefwatch.ingest.columnar import ColumnarDecoder, add_blocks
from prefwatch.ingest.completions import CompletionLog, wandb_records, wandb_table
from prefwatch.ingest.factors import folder_factors, tracker_factors, trainer_state_factors
from prefwatch.ingest.readers.tensorboard import EventFileReader, add_scalars, event_files
from prefwatch.ingest.tail import TailReader, decode_line

TRAINER_STATE = "trainer_state.json"
# A grid that finds cells as they appear (a tracker's store) looks for new ones at most this often:
# a run starting is a rare event, and listing a store's runs is a query or a folder listing.
REFRESH_SECONDS = 1.0
# Logs of a job prefwatch did not start, without an end-of-training record and unchanged for this
# long, are "incomplete": the run stopped (or was stopped) before its last step.
INCOMPLETE_AFTER_SECONDS = 600.0
INCOMPLETE = CellState.INCOMPLETE
# A row is stamped before it is written, so its time is at most its file's modification time. More than
# this past it (clock differences between a writer and a file server aside) is a clock set wrong: the row
# would read "running, 0 s ago" until the clock caught up. Such times are clamped to the file's.
FUTURE_SLACK_SECONDS = 120.0


# Where each tracker keeps a run's settings (by the module of the run's reader).
_TRACKER_ORIGINS = {"mlflow": Origin.MLFLOW_PARAMS, "trackio": Origin.TRACKIO_CONFIG, "wandb": Origin.WANDB_CONFIG}


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
        step = metrics.valid_step(record.get("step"))
        if step is None:
            return False
        try:
            chosen = np.asarray(record["chosen"], dtype=float)
            rejected = np.asarray(record["rejected"], dtype=float)
        except (KeyError, TypeError, ValueError, RecursionError):
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
        self.steps.append(int(step))
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
    completions: CompletionLog = field(default_factory=CompletionLog)  # completions.jsonl: what the model writes
    data_stats: dict[str, Any] | None = None
    system: system.SystemLog = field(default_factory=system.SystemLog)  # system.jsonl: CPU, memory, GPUs
    claim: Claim | None = None  # what the name, label or cell.json says (objective, rank, by whom)
    inference: Inference = NOTHING_YET  # what the logs say trained the cell
    metrics_path: Path | None = None
    trainer_state_dir: Path | None = None
    event_dir: Path | None = None  # TensorBoard event files in it or in its runs/*
    tracker: Any = None  # a run in trackio's, MLflow's or W&B's store (ingest/trackers.py StoreReader)
    tracker_end: Any = None  # the tracker's own word that the run ended (readers/store.py RunEnd)
    managed: bool = False  # started by prefwatch: has status.json and a supervisor
    handed_status: CellStatus | None = None  # a launched cell's state, handed in by the jobs layer
    record_error: str | None = None  # cell.json could not be read (one line naming the file and field)
    preview: bool = False  # the series holds only the tail of the log (peek_tail), not all of it
    # The settings that tell this run from the others of a sweep, each with where it was read
    # (prefwatch.core.factors); files beside the run that could not be read, one line each.
    factors: Factors = field(default_factory=Factors)
    factor_problems: list[str] = field(default_factory=list)
    _metrics_reader: TailReader | None = None
    _columnar: ColumnarDecoder = field(default_factory=ColumnarDecoder)
    _pairs_reader: TailReader | None = None
    _state_seen: tuple[Path, int, int] | None = None
    _history_used: int = 0
    _event_readers: dict[Path, EventFileReader] = field(default_factory=dict)
    _data_checked: float = -math.inf
    _table_checked: float = -math.inf  # when a W&B run's completions table was last looked for
    _table_seen: tuple[Path, int, int] | None = None
    _inferred_at: int = -1
    _cached: bool = False  # the series came from, or went to, the columnar cache

    def __post_init__(self) -> None:
        if self.claim is None:  # a caller that gave no source: none is claimed
            self.claim = Claim(self.objective, None, self.rank, None)
        if self.metrics_path is not None:
            self._metrics_reader = TailReader(self.metrics_path)
        pairs_path = self.directory / rundir.EVAL_PAIRS_FILE
        self._pairs_reader = TailReader(pairs_path)
        self._system_reader = TailReader(self.directory / system.SYSTEM_FILE)
        self._completions_reader = TailReader(self.directory / rundir.COMPLETIONS_FILE)

    @property
    def max_steps(self) -> int | None:
        train = self.info.get("train")
        value = train.get("max_steps") if isinstance(train, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def read_error(self) -> str | None:
        if self.record_error:
            return self.record_error
        readers: list[Any] = [*self._event_readers.values(), *([self.tracker] if self.tracker else [])]
        if self._metrics_reader is not None:
            readers.insert(0, self._metrics_reader)
        for reader in readers:
            if reader.error:
                return reader.error
            if getattr(reader, "missing", False):
                return f"{reader.path}: deleted"
        return None

    def watched_paths(self) -> list[Path]:
        if self.tracker is not None:
            return list(dict.fromkeys([self.directory, *self.tracker.watched()]))
        if self.event_dir is None:
            return [self.directory]
        runs = self.event_dir / "runs"
        folders = [self.directory, *([runs] if runs.is_dir() else []), *(f.parent for f in event_files(self.event_dir))]
        return list(dict.fromkeys(folders))

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when anything changed."""
        if self.tracker is not None:
            changed = self._poll_tracker()
        elif self._metrics_reader:
            changed = self._poll_metrics()
        elif self.event_dir is not None:
            changed = self._poll_events()
            self._poll_trainer_state(history=False)
        else:
            changed = self._poll_trainer_state()
        changed |= self._poll_pairs()
        changed |= self._poll_system()
        changed |= self._poll_completions()
        if self.data_stats is None and time.monotonic() - self._data_checked > 1.0:
            self._data_checked = time.monotonic()
            self.data_stats = rundir.read_json(self.directory / rundir.DATA_FILE)
            changed |= self.data_stats is not None
        self._infer()
        return changed

    def _infer(self) -> None:
        """Read the objective from the logs again when rows were added; the logs' objective, when
        they show one, is the cell's objective (the claim stays, for the mismatch check)."""
        if self.series.records == self._inferred_at:
            return
        self._inferred_at = self.series.records
        self.inference = infer(self.series)
        claimed = self.claim.objective if self.claim else None
        self.objective = self.inference.objective or claimed

    def relabel(self, objective: str | None, rank: int | None, source: str) -> None:
        """A label given by the user: it replaces what the name said (a None part keeps it)."""
        claim = self.claim or Claim()
        if objective is not None:
            claim = replace(claim, objective=objective, objective_source=source, note=None)
        if rank is not None:
            claim = replace(claim, rank=rank, rank_source=source)
            self.factors.put(RANK, rank, Origin.LABEL)
        self.claim, self.rank = claim, claim.rank
        self._inferred_at = -1
        self.objective = claim.objective
        self._infer()

    def describe_run(
        self, config: Mapping[str, Any], tags: Mapping[str, Any], run_name: str, objective_logged: bool
    ) -> None:
        """A tracker's run: its factors from its logged config (MLflow params, trackio's or W&B's
        config), MLflow's tags, then its name; its objective and rank say where each was read."""
        module = type(self.tracker).__module__.rsplit(".", 1)[-1]
        origin = _TRACKER_ORIGINS.get(module, Origin.RUN_NAME)
        self.factors = tracker_factors(config, run_name, origin)
        config_factors(tags, Origin.MLFLOW_TAGS, self.factors)
        rank = self.factors.values.get(RANK)
        seed = self.factors.get(SEED)
        self.rank = int(rank.value) if rank is not None else self.rank
        self.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else self.seed
        said = str(origin) if objective_logged else "run name"
        self.claim = Claim(
            self.objective, said if self.objective else None, self.rank, factor_source(rank) if rank else None
        )
        self.objective = self.claim.objective

    @property
    def stopped_at(self) -> int | None:
        """The last step of a run without an end-of-training record (where it stopped, if it did)."""
        return None if self.series.finished or not self.series.records else self.series.last_step

    def _poll_metrics(self) -> bool:
        reader = self._metrics_reader
        assert reader is not None and self.metrics_path is not None
        # Read from its start, the log's size tells how many rows to make room for (see _reserve).
        size = 0 if reader.started else (cache.identity(self.metrics_path) or (0, 0, 0, 0))[2]
        if size >= cache.MIN_BYTES:
            allocator.prepare_large_read()
        if not reader.started and self._from_cache():
            return True
        blocks = 0
        # After peek_tail() the series holds only the end of the log: the whole log is read into a
        # new series, which replaces the preview when it is complete (the monitor never sees a gap).
        series = CellSeries() if self.preview else self.series
        # A large finished log read from its start has its cache entry written while it is read.
        stream = None if reader.started or self._cached else cache.Stream.begin(self.metrics_path, size)

        def take(block: bytes) -> None:
            nonlocal blocks
            blocks += 1
            add_blocks(series, [block], self._columnar)
            if blocks == 1 and size > 2 * len(block):
                _reserve(series, size / len(block), size // _MIN_LINE_BYTES)
            if stream is not None:
                stream.add(series)

        def restart() -> None:
            nonlocal series
            series = CellSeries()
            if stream is not None:
                stream.abandon()

        try:
            batch = reader.poll(on_block=take, on_restart=restart)
        except BaseException:
            if stream is not None:
                stream.abandon()
            raise
        series.rejected.update(batch.rejected)
        self.series, self.preview = series, False
        if stream is not None and stream.finish(series, reader.identity):
            self._cached = True
        elif blocks and series.finished and not self._cached:
            self._to_cache()
        return bool(blocks or batch.rejected or batch.restarted)

    def _from_cache(self) -> bool:
        """Take a finished log's series from the columnar cache when the file is exactly as cached."""
        assert self._metrics_reader is not None and self.metrics_path is not None
        hit = cache.load(self.metrics_path)
        if hit is None:
            return False
        self.series, self.preview, self._cached = hit[0], False, True
        self._metrics_reader.resume_at(hit[1])
        return True

    def _to_cache(self) -> None:
        """Save a finished log's series once it is read whole (a large log's second opening is a load)."""
        assert self._metrics_reader is not None and self.metrics_path is not None
        seen = self._metrics_reader.identity
        if seen is not None:
            self._cached = cache.save(self.metrics_path, seen, self.series)

    def peek_tail(self, max_bytes: int = 256 << 10) -> bool:
        """Before the first poll(), fill the series from the last ``max_bytes`` of the metrics log
        only, so a monitor can draw a large log at once; the next poll() reads the whole log.
        True when a preview was made (a metrics log not yet read, with complete lines in its tail)."""
        reader = self._metrics_reader
        if reader is None or reader.started or self.metrics_path is None:
            return False
        try:
            with safe.open_read(self.metrics_path) as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                tail = f.read(max_bytes)
        except OSError:
            return False
        if size > max_bytes:
            tail = tail[tail.find(b"\n") + 1 :]  # the first line is cut
        tail = tail[: tail.rfind(b"\n") + 1]
        if not tail:
            return False
        preview = CellSeries()
        add_blocks(preview, [tail], ColumnarDecoder())
        self.series, self.preview = preview, True
        return True

    def _reset_series(self) -> None:
        self.series = CellSeries()

    def _poll_events(self) -> bool:
        """Read the scalars appended to the run's event files, oldest file first."""
        assert self.event_dir is not None
        for path in event_files(self.event_dir):
            self._event_readers.setdefault(path, EventFileReader(path))
        changed = False
        polled = [(reader, *reader.poll()) for reader in self._event_readers.values()]
        if any(restarted for _, _, restarted in polled):
            # A file was truncated or replaced: what was built from it is void; read everything again.
            self._reset_series()
            self._event_readers = {path: EventFileReader(path) for path in self._event_readers}
            polled = [(reader, *reader.poll()) for reader in self._event_readers.values()]
            changed = True
        for _, scalars, _ in polled:
            add_scalars(self.series, scalars)
            changed |= bool(len(scalars) or scalars.rejected)
        return changed

    def _poll_tracker(self) -> bool:
        changed, more = False, True
        while more:
            batch = self.tracker.poll()
            if batch.restarted:
                self._reset_series()
            # A run resumed under a new tracker run comes as later segments: where one begins, the end
            # of what came before is void (a finished run that was trained further).
            for part, begun in [(batch, False), *batch.after]:
                if begun:
                    self.series.end_record = None
                add_scalars(self.series, part.scalars)
                if part.end:
                    self.series.end_record = {**(self.series.end_record or {}), **part.end}
                changed |= bool(begun or len(part.scalars) or part.scalars.rejected or part.end)
            changed |= batch.restarted or batch.ended != self.tracker_end
            self.tracker_end = batch.ended
            more = batch.more
        return changed

    def _poll_pairs(self) -> bool:
        assert self._pairs_reader is not None
        batch = self._pairs_reader.poll()
        if batch.restarted:
            self.pairs = PairLog()
        # A line the reader could not decode (not JSON, over 1 MiB) is as bad as one that is no result:
        # counted with them, never dropped silently.
        bad = sum(batch.rejected.values())
        for record in batch.records:
            if not self.pairs.add(record):
                bad += 1
        if bad:
            self.series.rejected["bad eval_pairs line"] += bad
        return bool(batch.records or bad)

    def _poll_completions(self) -> bool:
        if self.tracker is not None and getattr(self.tracker, "path", Path()).suffix == ".wandb":
            return self._poll_wandb_completions()
        batch = self._completions_reader.poll()
        if batch.restarted:
            self.completions.reset()
        bad = sum(batch.rejected.values())
        for record in batch.records:
            if not self.completions.add(record):
                bad += 1
        if bad:  # counted with the cell's other bad lines, never dropped silently
            self.series.rejected["bad completions line"] += bad
        return bool(batch.records or bad)

    def _poll_wandb_completions(self) -> bool:
        """TRL's completions table in a W&B run folder, read again when a newer one appears (every 2 s at most)."""
        if time.monotonic() - self._table_checked < 2.0:
            return False
        self._table_checked = time.monotonic()
        table = wandb_table(self.tracker.path.parent)
        try:
            seen = (table, table.stat().st_size, table.stat().st_mtime_ns) if table is not None else None
        except OSError:
            seen = None
        if seen is None or seen == self._table_seen:
            return False
        self._table_seen = seen
        records, bad = wandb_records(seen[0])
        self.completions.reset()
        for record in records:
            bad += not self.completions.add(record)
        if bad:  # the table is read whole each time: its bad rows are counted once, not once per reading
            self.series.rejected["bad completions row"] = bad
        return True

    def _poll_system(self) -> bool:
        batch = self._system_reader.poll()
        if batch.restarted:
            self.system = system.SystemLog()
        for record in batch.records:
            if not self.system.add(record):
                self.series.rejected["bad system.jsonl line"] += 1
        return bool(batch.records)

    def _poll_trainer_state(self, history: bool = True) -> bool:
        """Re-read the newest trainer_state.json when it changes; add only history not yet seen.
        With ``history=False`` (the metrics come from elsewhere) only max_steps is taken."""
        path = newest_trainer_state(self.trainer_state_dir or self.directory)
        if path is None:
            return False
        try:
            stat = path.stat()
            seen = (path, stat.st_mtime_ns, stat.st_size)
            if seen == self._state_seen:
                return False
            state = decode_line(safe.read_bytes(path))
        except OSError:
            return False
        if isinstance(state, dict):
            trainer_state_factors(state, self.factors)
        if not history:
            self._state_seen = seen
            if isinstance(state, dict) and isinstance(state.get("max_steps"), int):
                self.info["train"] = {"max_steps": state["max_steps"]}
            return False
        if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
            self.series.rejected["trainer_state without log_history"] += 1
            return False
        log_history = state["log_history"]
        self._state_seen = seen
        if len(log_history) < self._history_used:
            self.series, self._history_used = CellSeries(), 0
        self.series.add_all(log_history[self._history_used :])
        self._history_used = len(log_history)
        max_steps, step = state.get("max_steps"), state.get("global_step")
        if isinstance(max_steps, int) and "train" not in self.info:
            self.info["train"] = {"max_steps": max_steps}
        if isinstance(step, int) and (isinstance(max_steps, int) and 0 < max_steps <= step or _stopped(state)):
            # Checkpoints are saved before the Trainer appends its end-of-training record; a run
            # that stopped early on purpose (early stopping) says so in should_training_stop.
            self.series.end_record = self.series.end_record or {"global_step": step}
        return True

    def status(self) -> CellStatus:
        """The state the jobs layer handed in (prefwatch.run.jobs.hand_statuses), else what the logs say.

        Readers never ask the process table or Slurm: that is the jobs layer's, which hands it in."""
        if self.handed_status is not None:
            return self.handed_status
        if self.tracker is not None:
            error = self.read_error
            if error is not None:
                return CellStatus(CellState.UNREADABLE, error=error)
            end = self.tracker_end
            if end is not None:  # the tracker's own mark: MLflow's status, W&B's exit record
                return CellStatus(end.state, StatusRecord(state=end.state, exit_code=end.exit_code or None))
        if self.series.finished:
            return CellStatus(CellState.FINISHED)
        if not self.series.records:
            return CellStatus(CellState.QUEUED)
        # No process is known for logs prefwatch did not start: recent writes are all that says "running".
        last = self.last_log_time()
        running = last is not None and time.time() - last < INCOMPLETE_AFTER_SECONDS
        return CellStatus(CellState.RUNNING if running else INCOMPLETE, note=self.clock_note())

    def _written_at(self) -> float | None:
        """When the cell's log file was last written (its mtime), for logs whose rows carry no time."""
        log = self.metrics_path or newest_trainer_state(self.trainer_state_dir or self.directory)
        if self.event_dir is not None:
            log = next(iter(reversed(event_files(self.event_dir))), log)
        if self.tracker is not None:
            log = self.tracker.path
        try:
            return log.stat().st_mtime if log is not None else None
        except OSError:
            return None

    def last_log_time(self) -> float | None:
        """When the last row was logged: its own time, else the log file's modification time; a time
        past the file's (rows stamped in the future, see FUTURE_SLACK_SECONDS) is clamped to the file's."""
        last = self.series.last_time
        written = self._written_at()
        if last is None or not math.isfinite(last):
            return written
        return written if written is not None and last > written + FUTURE_SLACK_SECONDS else last

    def clock_note(self) -> str | None:
        """Names a clamp of last_log_time: "rows stamped 1 day past the log's time (a clock set wrong?)"."""
        last, written = self.series.last_time, self._written_at()
        if last is None or written is None or not math.isfinite(last) or last <= written + FUTURE_SLACK_SECONDS:
            return None
        return f"rows stamped in the future, {_span(last - written)} past the log's time: read at the log's time"


@dataclass
class GridSource:
    """A set of cells read together: a launched grid, or logs collected from a folder."""

    name: str
    root: Path
    cells: list[CellSource]
    managed: bool = False
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # folders not read, and why
    # Finds cells that appear later (a tracker's store: runs that start after it was opened): its
    # refresh(grid) adds them, watched() names the folders where they appear, waiting what an empty grid waits for.
    finder: Any = None
    refreshed_at: float = -math.inf  # time.monotonic() of the last look for new cells
    generation: int = 0  # counts the refreshes that added or continued cells (owners re-read watched_paths)

    def poll(self) -> bool:
        changed = self.refresh()
        for cell in self.cells:
            changed |= cell.poll()
        return changed

    def refresh(self, every: float = REFRESH_SECONDS) -> bool:
        """Look for cells that appeared since the last look (at most once per ``every`` seconds); True
        when cells were added or continued."""
        if self.finder is None or time.monotonic() - self.refreshed_at < every:
            return False
        self.refreshed_at = time.monotonic()
        grew = bool(self.finder.refresh(self))
        self.generation += grew
        return grew

    def watched_paths(self) -> list[Path]:
        """Every folder whose change may mean new data: the cells' and where new cells appear."""
        cells = [p for cell in self.cells for p in cell.watched_paths()]
        return list(dict.fromkeys([*(self.finder.watched() if self.finder is not None else []), *cells]))

    @property
    def waiting(self) -> str | None:
        """What a grid of no cells yet waits for (a store with no run), or None."""
        return None if self.cells or self.finder is None else str(self.finder.waiting)

    supervised: bool | None = None  # whether the grid's supervisor runs, handed in with the statuses

    @property
    def objectives(self) -> list[str]:
        return _ordered(c.objective or "none" for c in self.cells)

    @property
    def timed(self) -> bool:
        """Whether any row carries a time (TRL's trainer_state.json records none)."""
        return any(np.isfinite(s.times).any() for c in self.cells for s in (c.series.train, c.series.eval))

    @property
    def ranks(self) -> list[int | None]:
        """A launched grid's ranks in its grid.toml's order; a folder's as numbers (r4, r8, r16, r32,
        not the names' r16, r32, r4, r8), unknown last."""
        ranks = _ordered(c.rank for c in self.cells)
        return ranks if self.managed else sorted(ranks, key=lambda r: (r is None, r or 0))


def _ordered(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


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


def _stopped(state: dict[str, Any]) -> bool:
    """The Trainer's own word that training ended (TrainerControl.should_training_stop, 4.39+)."""
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl") or {}
    return bool(isinstance(control, dict) and (control.get("args") or {}).get("should_training_stop") is True)


def guess_labels(path: Path, factors: Factors | None = None) -> Claim:
    """Objective and LoRA rank from a folder: name tokens like dpo / simpo, and the rank among its
    factors (adapter_config.json in the folder or its newest checkpoint, else an r16 token of the name);
    each with where it was read. ``factors`` passes the folder's factors when read already."""
    objective, note = name_objective(path.name)
    rank = (factors if factors is not None else folder_factors(path)).values.get(RANK)
    return Claim(
        objective,
        "folder name" if objective else None,
        int(rank.value) if rank is not None else None,
        factor_source(rank),
        note,
    )


def factor_source(value: Value | None) -> str | None:
    """Where a factor was read, as a claim names it: the adapter config's path, else the place."""
    if value is None:
        return None
    return value.detail if value.origin == Origin.ADAPTER_CONFIG and value.detail else str(value.origin)


def natural_key(path: Path) -> list[tuple[int, int | str]]:
    """Order names with their numbers as numbers: r4, r8, r16, r32; seed2 before seed10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", path.name) if part]


_MIN_LINE_BYTES = 48  # a metrics line with a step, a time and one value is longer than this


def _reserve(series: CellSeries, scale: float, most: int) -> None:
    """Room for a whole log in each split, judged from its first block (``scale`` = file size / block
    size) with a little to spare: a million-line log is then read without doubling its arrays. Never
    more than ``most`` rows: a first block of unusually short lines must not reserve memory that the
    rest of the file could not fill."""
    for split in (series.train, series.eval):
        if len(split):
            split.reserve(min(int(len(split) * scale * 1.05) + 64, most))


def _span(seconds: float) -> str:
    """A length of time at a glance: "3 min", "5 h", "1 day"."""
    for size, unit in ((86400.0, "day"), (3600.0, "h"), (60.0, "min")):
        if seconds >= size:
            count = seconds // size
            return f"{count:.0f} {unit}" + ("s" if unit == "day" and count != 1 else "")
    return f"{seconds:.0f} s"
