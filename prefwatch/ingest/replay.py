"""Replay as a time-lapse: finished logs played back by their own timestamps.

The logs are read whole once (the grid's own ``GridSource``); a ``ReplayGrid`` then shows each cell as
it stood at a moment of the run: the rows logged up to that time, the evaluations up to there, and the
state "running" until the cell's last line. The clock runs at ``speed`` times real time and can be
paused, sped up, slowed down and moved. Rows without a time are shown from the start.

Replay is a reader mode: each replayed cell is a ``CellSource`` whose reader (``Replay``) releases the
full cell's rows up to the replay's time. No Textual here: the monitor ticks the clock and analyses
the cut grid like a live one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.series import CellSeries, SplitSeries
from prefwatch.files.rundir import CellState, CellStatus
from prefwatch.ingest.pairs import PairLog
from prefwatch.ingest.readers.protocol import Batch, Beside, CompletionsReader
from prefwatch.ingest.sources import CellSource, GridSource


class Replay:
    """A reader of a cell read whole already (``full``): at each poll, what it held at the time ``at()``
    says; "running" until its last row, then the state it ended in."""

    def __init__(self, full: CellSource, at: Callable[[], float]) -> None:
        self.full = full
        self.at = at
        self._last_time = _last_time(full)

    @property
    def path(self) -> Path:
        return self.full.metrics_path

    def watched(self) -> list[Path]:
        return []  # nothing on disk changes what a replay shows

    def written_at(self) -> float | None:
        return self.full.reader.written_at()

    def preview(self, max_bytes: int) -> CellSeries | None:
        return None

    def completions(self) -> CompletionsReader | None:
        return None

    def poll(self) -> Batch:
        full, until = self.full, self.at()
        series = CellSeries()
        series.train, series.eval = cut_split(full.series.train, until), cut_split(full.series.eval, until)
        series.records = len(series.train) + len(series.eval)
        series.rejected = full.series.rejected.copy()
        last_step = series.last_step
        series.first_non_finite = {k: v for k, v in full.series.first_non_finite.items() if v <= last_step}
        ended = self._last_time is None or until >= self._last_time
        if ended:
            series.end_record = full.series.end_record
        eval_steps = set(series.eval.steps.tolist())
        pairs = PairLog(pair_ids=list(full.pairs.pair_ids))
        for step, chosen, rejected in zip(full.pairs.steps, full.pairs.chosen, full.pairs.rejected):
            if step in eval_steps or (step <= last_step and not len(full.series.eval)):
                pairs.steps.append(step)
                pairs.chosen.append(chosen)
                pairs.rejected.append(rejected)
        state = full.status() if ended else CellStatus(CellState.RUNNING if series.records else CellState.QUEUED)
        beside = Beside(pairs, full.system.until(until), full.data_stats)
        return Batch(series, changed=True, state=state, beside=beside)


def time_span(grid: GridSource) -> tuple[float, float] | None:
    """First and last logged time over every cell (None when no row carries a time)."""
    lows, highs = [], []
    for cell in grid.cells:
        for split in (cell.series.train, cell.series.eval):
            times = split.times[np.isfinite(split.times)]
            if len(times):
                lows.append(float(times.min()))
                highs.append(float(times.max()))
    return (min(lows), max(highs)) if lows else None


def cut_split(split: SplitSeries, until: float) -> SplitSeries:
    """The rows of ``split`` logged at or before ``until`` (rows without a time are kept)."""
    times = split.times
    keep = ~(times > until)  # NaN compares False: kept
    rows = int(np.count_nonzero(keep))
    index: slice | np.ndarray
    if rows == len(split) and rows:
        index = slice(None)
    else:
        index = np.flatnonzero(keep)
    cut = SplitSeries()
    if rows:
        cut.extend(split.steps[index], times[index], {name: split.column(name)[index] for name in split.names})
    return cut


def replay_cell(full: CellSource, at: Callable[[], float]) -> CellSource:
    """A cell that shows ``full`` as it stood at the time ``at()`` says (after each poll)."""
    return CellSource(
        id=full.id,
        directory=full.directory,
        reader=Replay(full, at),
        objective=full.objective,
        rank=full.rank,
        seed=full.seed,
        planned_steps=full.planned_steps,
        claim=full.claim,
        factors=full.factors,
        clock=full.clock,
    )


class ReplayClock:
    """Virtual time over the run's span: play/pause, speed, jumps; ``now()`` is where the replay stands.

    A ``Clock`` itself: its ``time()`` is the replay's moment (what findings are judged at), its
    ``monotonic()`` the real clock's that drives it."""

    SPEEDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

    def __init__(self, start: float, end: float, speed: float, clock: Clock = SYSTEM) -> None:
        self.start, self.end = start, end
        self.speed = speed
        self.playing = True
        self._clock = clock
        self._at = start
        self._since = clock.monotonic()

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def time(self) -> float:
        return self.now()

    def now(self) -> float:
        if self.playing:
            self._at = min(self.end, self._at + (self._clock.monotonic() - self._since) * self.speed)
        self._since = self._clock.monotonic()
        if self._at >= self.end:
            self.playing = False
        return self._at

    @property
    def finished(self) -> bool:
        return self.now() >= self.end

    @property
    def fraction(self) -> float:
        span = self.end - self.start
        return 1.0 if span <= 0 else (self.now() - self.start) / span

    def toggle(self) -> None:
        self.now()
        if self._at >= self.end:
            self._at = self.start  # play again from the start
        self.playing = not self.playing

    def faster(self, factor: int) -> None:
        self.now()
        faster = [s for s in self.SPEEDS if s > self.speed]
        slower = [s for s in self.SPEEDS if s < self.speed]
        if factor > 0 and faster:
            self.speed = faster[0]
        elif factor < 0 and slower:
            self.speed = slower[-1]

    def jump(self, fraction: float) -> None:
        """Move by a share of the whole run (negative: back)."""
        self.now()
        self._at = min(self.end, max(self.start, self._at + fraction * (self.end - self.start)))

    def seek(self, fraction: float) -> None:
        self.now()
        self._at = self.start + min(1.0, max(0.0, fraction)) * (self.end - self.start)


class ReplayGrid:
    """The grid as it stood at the replay clock's time, cut again when the clock has moved."""

    def __init__(self, full: GridSource, speed: float, clock: Clock = SYSTEM) -> None:
        self.full = full
        full.poll()  # everything there is, once
        span = time_span(full) or (0.0, 0.0)
        self.clock = ReplayClock(span[0], span[1], speed, clock)
        self._cut_at = span[0]
        cells = [replay_cell(c, lambda: self._cut_at) for c in full.cells]
        self.source = GridSource(full.name, full.root, cells, full.managed)
        self._polled = False
        self.update()

    def update(self) -> bool:
        """Cut the cells at the clock's time; False when the clock has not moved since the last cut."""
        now = self.clock.now()
        if now == self._cut_at and self._polled:
            return False
        self._cut_at, self._polled = now, True
        self.source.poll()
        return True

    def label(self) -> str:
        state = "▶" if self.clock.playing else "⏸"
        speed = f"{self.clock.speed:g}×"
        elapsed = self.clock.now() - self.clock.start
        total = self.clock.end - self.clock.start
        return f"replay {state} {speed}  {_duration(elapsed)} / {_duration(total)}"


def _last_time(cell: CellSource) -> float | None:
    last = cell.series.last_time
    return None if last is None or math.isnan(last) else last


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
