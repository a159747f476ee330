"""``analyse()`` for a live grid, redone only for the cells whose logs or status changed.

Diagnosing a cell grows with its log (a million rows take a tenth of a second), and a live grid
usually changes a few cells at a time. A cell is analysed again when what it read, its pairs, its
data statistics or its status changed (its *version*), and every cell is when the last full pass
is older than ``heartbeat`` (findings that depend on the clock: stalled, idle). The verdict is
decided again over all cells' cached results (cheap: it reads diagnoses, not series).

The rules themselves are ``analysis.analyse`` and ``decide.decide``, called, never copied: the
result equals a full ``analyse()`` at the same clock (tests/test_incremental.py checks it).
No Textual here: the monitor builds its views from what this returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefwatch.analysis import CellAnalysis, GridAnalysis, analyse, cell_result
from prefwatch.decide import decide
from prefwatch.ingest.sources import CellSource, GridSource

HEARTBEAT_SECONDS = 5.0


class IncrementalAnalysis:
    """Keeps each cell's analysis with the version it was made from; ``update()`` redoes the stale ones."""

    def __init__(
        self, source: GridSource, heartbeat: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
        self.source = source
        self.clock = clock  # "now" for findings that depend on it (a replay passes its own clock)
        self.heartbeat = heartbeat
        self.analysed = 0  # cells analysed (tests and the benchmark read it)
        self.changed: set[str] = set()  # ids of the cells analysed again by the last update()
        self._cells: dict[str, tuple[tuple[object, ...], CellAnalysis]] = {}
        self._full_at = float("-inf")
        self.last: GridAnalysis | None = None

    def update(self) -> GridAnalysis | None:
        """Poll every cell; a new analysis of the grid, or None when nothing changed since the last one."""
        source = self.source
        for cell in source.cells:
            cell.poll()
        now = self.clock()
        full = time.monotonic() - self._full_at >= self.heartbeat
        if full:
            self._full_at = time.monotonic()
        supervised = source.supervisor_alive()
        stale = []
        for cell in source.cells:
            key = cell_version(cell, supervised)
            cached = self._cells.get(cell.id)
            if full or cached is None or cached[0] != key:
                stale.append((cell, key))
        self.changed = {cell.id for cell, _ in stale}
        if not stale and self.last is not None:
            return None
        if stale:
            part = analyse(GridSource(source.name, source.root, [c for c, _ in stale], source.managed), now=now)
            for (cell, key), result in zip(stale, part.cells):
                self._cells[cell.id] = (key, result)
                self.analysed += 1
        cells = [self._cells[c.id][1] for c in source.cells]
        self.last = GridAnalysis(source, cells, decide([cell_result(c) for c in cells]))
        return self.last


def cell_version(cell: CellSource, supervised: bool | None) -> tuple[object, ...]:
    """Everything a cell's analysis is made from, cheaply: equal versions give equal analyses (at one clock)."""
    status = cell.status(supervised)
    series = cell.series
    return (
        series.records,
        series.train.version,
        series.eval.version,
        sum(series.rejected.values()),
        len(cell.pairs.steps),
        cell.pairs.steps[-1] if cell.pairs.steps else None,
        cell.data_stats is not None,
        cell.read_error,
        cell.max_steps,
        status.state,
        status.describe(),
        id(series),
    )
