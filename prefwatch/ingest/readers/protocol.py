"""What every reader of a run's log is to the cell that holds it.

A cell (``prefwatch.ingest.sources.CellSource``) composes one reader and knows no format. Each
format is a class with ``detect(path)`` (whether this path is a run in its format) and
``open(path, clock)`` (its reader, timing what it waits for by ``clock``), registered in one table (``prefwatch.ingest.formats.FORMATS``). A
reader's ``poll()`` reads what was written since the last poll and says what changed in a
``Batch``. As in TensorBoard's split between a directory loader and an event-file loader, a
reader of a folder (TensorBoard's event files, a tracker run resumed under a new run) holds the
readers of its files and hands the cell one series.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.factors import Factors
from prefwatch.core.series import CellSeries
from prefwatch.files.rundir import CellStatus
from prefwatch.files.system import SystemLog

if TYPE_CHECKING:
    from collections import Counter

    from prefwatch.ingest.completions import CompletionLog
    from prefwatch.ingest.pairs import PairLog


class SourceError(ValueError):
    """A path that holds no logs prefwatch can read."""


@dataclass
class Beside:
    """What a reader hands the cell in place of the files beside its log (a replay's cut: the
    evaluations, system samples and data statistics as they stood at the replay's time)."""

    pairs: PairLog
    system: SystemLog
    data_stats: dict[str, object] | None


@dataclass
class Batch:
    """What one poll produced.

    ``series`` is the cell's series after the poll (a new object when the log was read again from
    its start, a preview was made whole, a cache entry loaded, a replay cut); ``changed`` whether
    anything in it is new (rows, rejected lines, an end mark); ``restarted`` whether the log was
    replaced first; ``error`` one line when the log cannot be read now (None: readable, or not
    there yet); ``state`` the reader's own word on the run's state (a tracker's end mark, a store
    that cannot be read, a replay's), None when the cell judges from its rows. ``max_steps`` and
    ``factors``: what the log records of the run's plan and settings (trainer_state.json), when it
    was read anew. ``beside``: see ``Beside`` (None: the cell reads its run directory's files)."""

    series: CellSeries
    changed: bool = False
    restarted: bool = False
    error: str | None = None
    state: CellStatus | None = None
    max_steps: int | None = None
    factors: Factors | None = None
    beside: Beside | None = None


class CompletionsReader(Protocol):
    """A source of the completions a run sampled, other than its completions.jsonl (W&B's table)."""

    def poll(self, log: CompletionLog, rejected: Counter[str]) -> bool: ...


class Reader(Protocol):
    """One run's log, followed by polling."""

    @property
    def path(self) -> Path:  # the file (or folder) the metrics are read from, named in messages
        ...

    def poll(self) -> Batch: ...

    def watched(self) -> list[Path]:
        """Folders whose changes may mean new data, besides the cell's own folder."""
        ...

    def written_at(self) -> float | None:
        """When the log was last written (its modification time), for rows that carry no time."""
        ...

    def preview(self, max_bytes: int) -> CellSeries | None:
        """Before the first poll: a series of the log's last ``max_bytes`` only (a large log drawn at
        once), or None where the format cannot (the next poll reads the whole log)."""
        ...

    def completions(self) -> CompletionsReader | None:
        """Where the run's completions are, when not in the cell's completions.jsonl."""
        ...


class Format(Protocol):
    """A format: which paths are its runs, and a reader of one."""

    @staticmethod
    def detect(path: Path) -> bool: ...

    @classmethod
    def open(cls, path: Path, clock: Clock = SYSTEM) -> Reader: ...
