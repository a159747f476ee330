"""Cells and grids: what a user points prefwatch at, read as one cell per run.

A ``CellSource`` composes one reader of its run's log (``prefwatch.ingest.readers.protocol.Reader``:
prefwatch's metrics.jsonl, TRL's trainer_state.json, TensorBoard's event files, a run in a tracker's
store, or a replay of any of them) and knows no format. ``poll()`` brings its series up to date with
the reader, and reads the files a run directory holds beside the log (held-out pairs, system samples,
completions, data statistics). Which format a path holds is ``prefwatch.ingest.formats``'s table.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.factors import RANK, Factors, Origin, Value
from prefwatch.core.objectives import NOTHING_YET, Claim, Inference, infer, name_objective
from prefwatch.core.series import CellSeries
from prefwatch.files import rundir, system
from prefwatch.files.rundir import CellState, CellStatus
from prefwatch.ingest.completions import CompletionLog
from prefwatch.ingest.factors import folder_factors
from prefwatch.ingest.pairs import PairLog
from prefwatch.ingest.readers.protocol import Batch, Reader, SourceError
from prefwatch.ingest.tail import Batch as TailBatch
from prefwatch.ingest.tail import TailReader

__all__ = ["INCOMPLETE", "CellSource", "GridSource", "PairLog", "SourceError"]

# A grid that finds cells as they appear (a tracker's store) looks for new ones at most this often:
# a run starting is a rare event, and listing a store's runs is a query or a folder listing.
REFRESH_SECONDS = 1.0
# data.json (the data set's token lengths, written once at a job's start) is looked for at most this often.
DATA_SECONDS = 1.0
# Logs of a job prefwatch did not start, without an end-of-training record and unchanged for this
# long, are "incomplete": the run stopped (or was stopped) before its last step.
INCOMPLETE_AFTER_SECONDS = 600.0
INCOMPLETE = CellState.INCOMPLETE
# A row is stamped before it is written, so its time is at most its file's modification time. More than
# this past it (clock differences between a writer and a file server aside) is a clock set wrong: the row
# would read "running, 0 s ago" until the clock caught up. Such times are clamped to the file's.
FUTURE_SLACK_SECONDS = 120.0

T = TypeVar("T")
AddRecord = Callable[[object], bool]


@dataclass
class CellSource:
    """One cell: what is known of its run (names, claim, factors), its reader, and what was read."""

    id: str
    directory: Path
    reader: Reader
    objective: str | None = None
    rank: int | None = None
    seed: int | None = None
    planned_steps: int | None = None  # max_steps as the run's settings say (cell.json, trainer_state, tracker)
    series: CellSeries = field(default_factory=CellSeries)
    pairs: PairLog = field(default_factory=PairLog)
    completions: CompletionLog = field(default_factory=CompletionLog)  # completions.jsonl: what the model writes
    data_stats: dict[str, object] | None = None
    system: system.SystemLog = field(default_factory=system.SystemLog)  # system.jsonl: CPU, memory, GPUs
    claim: Claim | None = None  # what the name, label or cell.json says (objective, rank, by whom)
    inference: Inference = NOTHING_YET  # what the logs say trained the cell
    managed: bool = False  # started by prefwatch: has status.json and a supervisor
    handed_status: CellStatus | None = None  # a launched cell's state, handed in by the jobs layer
    record_error: str | None = None  # cell.json could not be read (one line naming the file and field)
    preview: bool = False  # the series holds only the tail of the log (peek_tail), not all of it
    # The settings that tell this run from the others of a sweep, each with where it was read
    # (prefwatch.core.factors); files beside the run that could not be read, one line each.
    factors: Factors = field(default_factory=Factors)
    factor_problems: list[str] = field(default_factory=list)
    clock: Clock = SYSTEM  # what "ten minutes without news" and "once a second" are measured by
    _last: Batch | None = None  # the reader's last batch: its error and its word on the run's state
    _files: RunFiles | None = None
    _inferred_at: int = -1

    def __post_init__(self) -> None:
        if self.claim is None:  # a caller that gave no source: none is claimed
            self.claim = Claim(self.objective, None, self.rank, None)
        self._files = RunFiles(self.directory, self.reader, self.clock)

    @property
    def metrics_path(self) -> Path:
        """The file (or folder) the cell's metrics are read from."""
        return self.reader.path

    @property
    def max_steps(self) -> int | None:
        value = self.planned_steps
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def read_error(self) -> str | None:
        return self.record_error or (self._last.error if self._last is not None else None)

    def watched_paths(self) -> list[Path]:
        return list(dict.fromkeys([self.directory, *self.reader.watched()]))

    def poll(self) -> bool:
        """Read what was appended since the last poll; True when anything changed."""
        batch = self._last = self.reader.poll()
        self.series, self.preview = batch.series, False
        if batch.max_steps is not None:
            self.planned_steps = batch.max_steps
        for name, value in (batch.factors.values if batch.factors is not None else {}).items():
            self.factors.add(name, value.value, value.origin, value.detail)
        changed = batch.changed
        if batch.beside is not None:  # given by the reader (a replay's cut), not read from the folder
            self.pairs, self.system, self.data_stats = batch.beside.pairs, batch.beside.system, batch.beside.data_stats
        elif self._files is not None:
            changed |= self._files.poll(self)
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

    @property
    def stopped_at(self) -> int | None:
        """The last step of a run without an end-of-training record (where it stopped, if it did)."""
        return None if self.series.finished or not self.series.records else self.series.last_step

    def peek_tail(self, max_bytes: int = 256 << 10) -> bool:
        """Before the first poll(), fill the series from the last ``max_bytes`` of the log only, so a
        monitor can draw a large log at once; the next poll() reads the whole log. True when a preview
        was made (a log not yet read, in a format that can, with complete lines in its tail)."""
        preview = self.reader.preview(max_bytes) if self._last is None else None
        if preview is None:
            return False
        self.series, self.preview = preview, True
        return True

    def status(self) -> CellStatus:
        """The state the jobs layer handed in (prefwatch.run.jobs.hand_statuses), else the reader's own
        word (a tracker's end mark), else what the logs say.

        Readers never ask the process table or Slurm: that is the jobs layer's, which hands it in."""
        if self.handed_status is not None:
            return self.handed_status
        if self._last is not None and self._last.state is not None:
            return self._last.state
        if self.series.finished:
            return CellStatus(CellState.FINISHED)
        if not self.series.records:
            return CellStatus(CellState.QUEUED)
        # No process is known for logs prefwatch did not start: recent writes are all that says "running".
        last = self.last_log_time()
        running = last is not None and self.clock.time() - last < INCOMPLETE_AFTER_SECONDS
        return CellStatus(CellState.RUNNING if running else INCOMPLETE, note=self.clock_note())

    def last_log_time(self) -> float | None:
        """When the last row was logged: its own time, else the log file's modification time; a time
        past the file's (rows stamped in the future, see FUTURE_SLACK_SECONDS) is clamped to the file's."""
        last = self.series.last_time
        written = self.reader.written_at()
        if last is None or not math.isfinite(last):
            return written
        return written if written is not None and last > written + FUTURE_SLACK_SECONDS else last

    def clock_note(self) -> str | None:
        """Names a clamp of last_log_time: "rows stamped 1 day past the log's time (a clock set wrong?)"."""
        last, written = self.series.last_time, self.reader.written_at()
        if last is None or written is None or not math.isfinite(last) or last <= written + FUTURE_SLACK_SECONDS:
            return None
        return f"rows stamped in the future, {_span(last - written)} past the log's time: read at the log's time"


class RunFiles:
    """The files a run directory holds beside its log: held-out pairs (eval_pairs.jsonl), system
    samples (system.jsonl), completions (completions.jsonl, or where the reader says: W&B's table)
    and the data statistics (data.json, written once at a job's start). A line that cannot be used
    is counted in the cell's series, never dropped silently."""

    def __init__(self, directory: Path, reader: Reader, clock: Clock) -> None:
        self.directory = directory
        self.clock = clock
        self._pairs = TailReader(directory / rundir.EVAL_PAIRS_FILE, clock)
        self._system = TailReader(directory / system.SYSTEM_FILE, clock)
        self._completions = reader.completions()
        self._completions_log = TailReader(directory / rundir.COMPLETIONS_FILE, clock)
        self._data_checked = -math.inf

    def poll(self, cell: CellSource) -> bool:
        rejected = cell.series.rejected
        batch = self._pairs.poll()
        if batch.restarted:
            cell.pairs = PairLog()
        changed = _add_all(batch, cell.pairs.add, rejected, "bad eval_pairs line")
        batch = self._system.poll()
        if batch.restarted:
            cell.system = system.SystemLog()
        for record in batch.records:
            if not cell.system.add(record):
                rejected["bad system.jsonl line"] += 1
        changed |= bool(batch.records)
        if self._completions is not None:
            changed |= self._completions.poll(cell.completions, rejected)
        else:
            batch = self._completions_log.poll()
            if batch.restarted:
                cell.completions.reset()
            changed |= _add_all(batch, cell.completions.add, rejected, "bad completions line")
        if cell.data_stats is None and self.clock.monotonic() - self._data_checked > DATA_SECONDS:
            self._data_checked = self.clock.monotonic()
            cell.data_stats = rundir.read_json(self.directory / rundir.DATA_FILE)
            changed |= cell.data_stats is not None
        return changed


def _add_all(batch: TailBatch, add: AddRecord, rejected: Counter[str], reason: str) -> bool:
    """Each record of ``batch`` added; a line the reader could not decode (not JSON, over 1 MiB) is as
    bad as one that is no record: counted with them under ``reason``."""
    bad = sum(batch.rejected.values())
    for record in batch.records:
        if not add(record):
            bad += 1
    if bad:
        rejected[reason] += bad
    return bool(batch.records or bad)


class Finder(Protocol):
    """What finds a grid's cells as they appear (a tracker's store, a folder that holds no logs yet)."""

    @property
    def waiting(self) -> str:  # what a grid of no cells yet waits for
        ...

    def refresh(self, grid: GridSource) -> bool: ...  # cells added or continued

    def watched(self) -> list[Path]: ...  # folders where new cells appear


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
    finder: Finder | None = None
    refreshed_at: float = -math.inf  # clock.monotonic() of the last look for new cells
    generation: int = 0  # counts the refreshes that added or continued cells (owners re-read watched_paths)
    clock: Clock = SYSTEM  # what REFRESH_SECONDS is measured by

    def poll(self) -> bool:
        changed = self.refresh()
        for cell in self.cells:
            changed |= cell.poll()
        return changed

    def refresh(self, every: float = REFRESH_SECONDS) -> bool:
        """Look for cells that appeared since the last look (at most once per ``every`` seconds); True
        when cells were added or continued."""
        if self.finder is None or self.clock.monotonic() - self.refreshed_at < every:
            return False
        self.refreshed_at = self.clock.monotonic()
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


def _ordered(values: Iterable[T]) -> list[T]:
    seen: list[T] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


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


def _span(seconds: float) -> str:
    """A length of time at a glance: "3 min", "5 h", "1 day"."""
    for size, unit in ((86400.0, "day"), (3600.0, "h"), (60.0, "min")):
        if seconds >= size:
            count = seconds // size
            return f"{count:.0f} {unit}" + ("s" if unit == "day" and count != 1 else "")
    return f"{seconds:.0f} s"
