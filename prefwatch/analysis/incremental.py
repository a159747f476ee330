"""``analyse()`` for a live grid, redone only for the cells whose logs or status changed.

Diagnosing a cell grows with its log (a million rows take a tenth of a second), and a live grid
usually changes a few cells at a time. A cell is analysed again when what it read, its pairs, its
data statistics or its status changed (its *version*), and a running cell also when its analysis
is older than ``heartbeat`` (its findings read the clock: stalled, an idle GPU; an ended cell's
never do, so a finished grid on screen costs no analysis at all). The verdict is
decided again over all cells' cached results (cheap: it reads diagnoses, not series).

The rules themselves are ``analysis.analyse`` and ``decide.decide``, called, never copied: the
result equals a full ``analyse()`` at the same clock (tests/test_incremental.py checks it).
No Textual here: the monitor builds its views from what this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefwatch.analysis.analyse import (
    CellAnalysis,
    GridAnalysis,
    analyse,
    cell_result,
    collector_paused,
    values_only,
)
from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.decide import decide
from prefwatch.files.rundir import CellState
from prefwatch.ingest.sources import CellSource, GridSource

HEARTBEAT_SECONDS = 5.0


class IncrementalAnalysis:
    """Keeps each cell's analysis with the version it was made from; ``update()`` redoes the stale ones.

    ``findings_age`` trades exactness for work on busy grids: a cell whose only change is more
    train rows keeps its analysis while it is younger than three quarters of this many seconds (its values and
    curves are new at once: they are read from the live series; its findings follow within
    ``findings_age``: ``due_in`` says when the caller must update again if nothing else comes). Anything else (an evaluation, per-pair results, a NaN, a resumed run, the
    end, a status change, a read error) is analysed at once. With 0 (the default) the result
    equals ``analyse()`` after every update.
    """

    def __init__(
        self,
        source: GridSource,
        heartbeat: float = HEARTBEAT_SECONDS,
        clock: Clock = SYSTEM,
        findings_age: float = 0.0,
        statuses: Callable[[GridSource], object] | None = None,
    ) -> None:
        self.source = source
        # Its time() is "now" for findings that depend on it (a replay passes its own clock); its
        # monotonic() the age of an analysis (tests advance a fake clock instead of sleeping).
        self.clock = clock
        # Hands each launched cell its status before an analysis (the jobs layer's ``hand_statuses``,
        # given by the caller: the analysis never looks at processes or Slurm itself). None: the
        # statuses the readers recorded.
        self.statuses = statuses
        self.heartbeat = heartbeat
        self.findings_age = findings_age
        self.analysed = 0  # cells analysed (tests and the benchmark read it)
        self.changed: set[str] = set()  # ids of the cells whose data or analysis changed in the last update()
        self._cells: dict[str, _Cached] = {}
        self._owed: set[str] = set()  # ids of the cells whose findings wait
        self.owed = False  # some cell's findings wait for findings_age: call update() again by then
        self.due_in = float("inf")  # seconds until the first owed findings are due (inf: none owed)
        self.last: GridAnalysis | None = None
        self._just_read = False  # values() read every cell: the next update analyses what it read

    def update(self, only: set[str] | None = None) -> GridAnalysis | None:
        """Poll every cell (or the cells named in ``only``: those whose files changed); a new analysis
        of the grid, or None when nothing changed since the last one.

        With ``only``, a cell not named is looked at only if its analysis may be out of date without
        a file changing: a running cell's clock-bound findings at the heartbeat, findings owed, a
        status handed in anew. A tick of a clock over a thousand finished cells then costs nothing."""
        with collector_paused():
            return self._update(only)

    def values(self) -> GridAnalysis:
        """Every cell read, and only its figures worked out (``analyse.values_only``): a first frame
        of a large grid before its first ``update()``. Nothing is kept: that update analyses every
        cell, from what this read (the files are not looked at again: their fingerprints cost a
        fifth of this read; what came meanwhile is read by the next update)."""
        with collector_paused():
            self._poll(None)
            self._just_read = True
            if self.statuses is not None:
                self.statuses(self.source)
            return values_only(self.source)

    def _poll(self, only: set[str] | None) -> set[str] | None:
        """Read what is new in the cells named in ``only`` (None: every cell); the cells to look at
        (None: all, also when cells appeared)."""
        source = self.source
        just_read, self._just_read = self._just_read, False
        if source.refresh():  # cells appeared or were continued (runs started in a tracker's store): read all
            only = None
        elif just_read and only is None:
            return None  # values() read every cell a moment ago
        polled = source.cells if only is None else [c for c in source.cells if c.id in only]
        for cell in polled:
            cell.poll()
        return only

    def _update(self, only: set[str] | None) -> GridAnalysis | None:
        source = self.source
        only = self._poll(only)
        now = self.clock.time()
        if self.statuses is not None:
            self.statuses(source)
        stale, touched = [], set()
        due_in = float("inf")
        for cell in source.cells:
            cached = self._cells.get(cell.id)
            if (
                only is not None
                and cached is not None
                and cell.id not in only
                and cell.id not in self._owed
                and cached.handed is cell.handed_status
                and not self._clock_bound(cached)
            ):
                continue  # nothing it is made from can have changed
            urgent, rows = urgent_version(cell), train_version(cell)
            if cached is None or cached.urgent != urgent or self._clock_bound(cached):
                stale.append((cell, urgent, rows))
            elif cached.rows != rows:
                age = self.clock.monotonic() - cached.at
                # Redone by any read past three quarters of the age, so that lines that come every
                # second or so bring the findings along before the follow-up read at findings_age.
                if age >= self.findings_age * 0.75:
                    stale.append((cell, urgent, rows))
                else:
                    touched.add(cell.id)  # new train rows only: the view is new, the findings follow
                    due_in = min(due_in, self.findings_age - age)
        self.changed = touched | {cell.id for cell, _, _ in stale}
        self._owed = touched
        self.owed = bool(touched)
        self.due_in = due_in
        if not self.changed and self.last is not None:
            return None
        if stale:
            part = analyse(GridSource(source.name, source.root, [c for c, _, _ in stale], source.managed), now=now)
            for (cell, urgent, rows), result in zip(stale, part.cells):
                self._cells[cell.id] = _Cached(urgent, rows, result, self.clock.monotonic(), cell.handed_status)
                self.analysed += 1
        cells = [self._cells[c.id].analysis for c in source.cells]
        if stale or self.last is None:
            verdict = decide([cell_result(c) for c in cells])
        else:
            verdict = self.last.verdict  # no analysis changed: neither did the verdict
        self.last = GridAnalysis(source, cells, verdict)
        return self.last

    def _clock_bound(self, cached: _Cached) -> bool:
        """A running cell's analysis older than the heartbeat: its clock-bound findings may have changed."""
        running = cached.analysis.status.state == CellState.RUNNING
        return running and self.clock.monotonic() - cached.at >= self.heartbeat


@dataclass
class _Cached:
    urgent: tuple[object, ...]
    rows: tuple[object, ...]
    analysis: CellAnalysis
    at: float  # clock.monotonic() of the analysis
    handed: object = None  # the status the jobs layer had handed in (compared by identity)


def train_version(cell: CellSource) -> tuple[object, ...]:
    """What grows with every train line: changes here alone may wait for ``findings_age``."""
    return (cell.series.records, cell.series.train.version)


def urgent_version(cell: CellSource) -> tuple[object, ...]:
    """Everything else a cell's analysis is made from, cheaply: a change here is analysed at once."""
    status = cell.status()
    series = cell.series
    return (
        series.eval.version,
        series.train.segments,
        series.finished,
        len(series.first_non_finite),
        sum(series.rejected.values()),
        len(cell.pairs.steps),
        cell.pairs.steps[-1] if cell.pairs.steps else None,
        len(cell.completions.evaluations),
        cell.completions.steps[-1:],
        cell.completions.reference is not None,
        cell.data_stats is not None,
        cell.read_error,
        cell.max_steps,
        status.state,
        status.describe(),
        id(series),
    )
