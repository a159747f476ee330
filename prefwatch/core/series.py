"""Columnar storage of a cell's metrics: numpy arrays per metric and split, not lists of dicts.

A log record holds a few of many possible metrics; each split keeps one float64 column per metric
name, aligned on the rows of that split, NaN where a record did not carry the metric. That costs
8 bytes a value (a dict costs about 56) and lets the diagnosis and the widgets work in numpy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from prefwatch.core import metrics
from prefwatch.core.metrics import Split

_INITIAL_CAPACITY = 64
# A fold keeps its state at every multiple of this many rows (see SplitSeries.fold): a refresh folds
# at most this many rows again (~0.2 ms), and a first analysis of a million rows takes 61 numpy
# calls a rule, not 245 (4096 rows: 50 ms of a cached report's analysis; 16384: 32 ms).
FOLD_MARK = 16384

State = TypeVar("State")
FoldStep = Callable[..., Any]  # (state, split, start, stop, *params) -> state over rows [start, stop) added


@dataclass
class _Marks:
    """A fold's states at rows 0, FOLD_MARK, 2 FOLD_MARK...: ``states[k]`` covers rows [0, k FOLD_MARK)."""

    states: list[Any]
    changed_from: float = math.inf  # rows from here on were rewritten since the states were taken


class SplitSeries:
    """The rows of one split (train or eval) of one cell, growing in place."""

    def __init__(self) -> None:
        self._capacity = _INITIAL_CAPACITY
        self._length = 0
        self._steps = np.empty(self._capacity)
        self._times = np.empty(self._capacity)
        self._columns: dict[str, np.ndarray] = {}
        self.segments = 1
        # Bumped by every change (rows added or dropped, the last row's values set): equal versions
        # hold equal data, so an analysis made from one version is valid until this moves.
        self.version = 0
        # Bumped whenever rows already held change (a resume drops rows, a row is completed in place):
        # what copied rows out (a cache entry being written) knows its copy is stale when this moves.
        self.rewrites = 0
        self._folds: dict[Hashable, _Marks] = {}

    @classmethod
    def from_arrays(
        cls, steps: np.ndarray, times: np.ndarray, columns: dict[str, np.ndarray], segments: int = 1
    ) -> SplitSeries:
        """A split holding these rows (a cache entry read back); it grows in place from there as usual."""
        split = cls()
        n = len(steps)
        if n >= _INITIAL_CAPACITY:  # the arrays as they are (no copy): the split grows by reallocating
            split._capacity = n
            split._steps = np.ascontiguousarray(steps, dtype=float)
            split._times = np.ascontiguousarray(times, dtype=float)
            split._columns = {k: np.ascontiguousarray(v, dtype=float) for k, v in columns.items()}
        else:
            split._steps = _resized(np.asarray(steps, dtype=float), split._capacity)
            split._times = _resized(np.asarray(times, dtype=float), split._capacity)
            split._columns = {
                k: _resized(np.asarray(v, dtype=float), split._capacity, fill=np.nan) for k, v in columns.items()
            }
        split._length = n
        split.segments = segments
        split.version = 1
        return split

    def __len__(self) -> int:
        return self._length

    @property
    def steps(self) -> np.ndarray:
        return self._steps[: self._length]

    @property
    def times(self) -> np.ndarray:
        return self._times[: self._length]

    @property
    def names(self) -> list[str]:
        return sorted(self._columns)

    @property
    def width(self) -> int:
        """How many distinct metric names the split holds."""
        return len(self._columns)

    def has(self, name: str) -> bool:
        return name in self._columns

    def column(self, name: str) -> np.ndarray:
        """The values of a metric, aligned with ``steps``; all NaN for a metric never logged."""
        column = self._columns.get(name)
        if column is None:
            return np.full(self._length, np.nan)
        return column[: self._length]

    def append(self, step: float, time: float, values: dict[str, float]) -> None:
        """Add one row. A step lower than the last starts a new segment (a job resumed from a checkpoint):
        the rows it replays are dropped, so curves show the resumed run rather than a zig-zag."""
        self.version += 1
        if self._length and step < self._steps[self._length - 1]:
            self._length = int(np.searchsorted(self.steps, step, side="left"))
            self.segments += 1
            self._rewritten(self._length)
        if self._length == self._capacity:
            self._grow()
        row = self._length
        self._steps[row] = step
        self._times[row] = time
        for name, value in values.items():
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = np.full(self._capacity, np.nan)
            column[row] = value
        for name, column in self._columns.items():
            if name not in values:
                column[row] = np.nan
        self._length += 1

    def update_last(self, values: dict[str, float]) -> None:
        """Set metrics of the last row (the rest of a row whose first values came earlier)."""
        self.version += 1
        row = self._length - 1
        self._rewritten(row)
        for name, value in values.items():
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = np.full(self._capacity, np.nan)
            column[row] = value

    def extend(self, steps: np.ndarray, times: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Add many rows at once; steps must not go below the last row's (the caller checks)."""
        n = len(steps)
        self.version += 1
        while self._length + n > self._capacity:
            self._grow()
        rows = slice(self._length, self._length + n)
        self._steps[rows] = steps
        self._times[rows] = times
        for name, column in self._columns.items():
            column[rows] = values.get(name, np.nan)
        for name, block in values.items():
            if name not in self._columns:
                column = self._columns[name] = np.full(self._capacity, np.nan)
                column[rows] = block
        self._length += n

    def fold(self, step: FoldStep, start: State, *params: Hashable) -> State:
        """``step`` folded over every row from the first, reading only what is new.

        A rule that summarises the whole history (a count, block medians) would cost O(rows) on every
        refresh; folded, a refresh after one appended line costs O(FOLD_MARK) at most. The split keeps
        the fold's state at every FOLD_MARK rows; rows rewritten in place (a row completed later, a
        resume that drops replayed rows) send it back to the last state before them. The result does
        not depend on when it was asked for: states are only ever extended by whole marks from the
        one before, and the rows past the last mark are folded afresh each time.

        ``step(state, split, start, stop, *params)`` returns the state after rows [start, stop); it
        must treat states as values (never change one in place). ``start`` is the state of no rows."""
        key = (step, params)
        marks = self._folds.get(key)
        if marks is None:
            marks = self._folds[key] = _Marks([start])
        if marks.changed_from < math.inf:
            del marks.states[int(marks.changed_from) // FOLD_MARK + 1 :]
            marks.changed_from = math.inf
        while len(marks.states) * FOLD_MARK <= self._length:
            first = (len(marks.states) - 1) * FOLD_MARK
            marks.states.append(step(marks.states[-1], self, first, first + FOLD_MARK, *params))
        first = (len(marks.states) - 1) * FOLD_MARK
        state: State = marks.states[-1]
        return step(state, self, first, self._length, *params) if first < self._length else state

    def _rewritten(self, row: int) -> None:
        """Rows from ``row`` on no longer hold what the folds saw."""
        self.rewrites += 1
        for marks in self._folds.values():
            marks.changed_from = min(marks.changed_from, row)

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows at once: a reader that knows how large a log is spares the
        copies (and the fresh memory) of doubling its way there."""
        if rows > self._capacity:
            self._resize(rows)

    def _grow(self) -> None:
        self._resize(self._capacity * 2)

    def _resize(self, capacity: int) -> None:
        self._capacity = capacity
        self._steps = _resized(self._steps, self._capacity)
        self._times = _resized(self._times, self._capacity)
        for name, column in self._columns.items():
            self._columns[name] = _resized(column, self._capacity, fill=np.nan)

    def nbytes(self) -> int:
        return self._steps.nbytes + self._times.nbytes + sum(c.nbytes for c in self._columns.values())


def _resized(array: np.ndarray, capacity: int, fill: float | None = None) -> np.ndarray:
    grown = np.empty(capacity) if fill is None else np.full(capacity, fill)
    grown[: len(array)] = array
    return grown


@dataclass
class CellSeries:
    """Everything read from one cell's metric log, by split, with what the reader had to reject."""

    train: SplitSeries = field(default_factory=SplitSeries)
    eval: SplitSeries = field(default_factory=SplitSeries)
    end_record: dict[str, Any] | None = None
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # First step at which each (split, metric) was logged NaN or infinite: columns cannot tell a
    # logged NaN from a metric a row did not carry, so the reader notes it as it goes.
    first_non_finite: dict[tuple[Split, str], float] = field(default_factory=dict)

    def split(self, split: Split) -> SplitSeries:
        return self.train if split == "train" else self.eval

    @property
    def finished(self) -> bool:
        return self.end_record is not None

    @property
    def last_step(self) -> int:
        last = [s.steps[-1] for s in (self.train, self.eval) if len(s)]
        return int(max(last)) if last else 0

    @property
    def last_time(self) -> float | None:
        last = [s.times[-1] for s in (self.train, self.eval) if len(s)]
        return float(max(last)) if last else None

    def add(self, record: Any) -> None:
        """Take one decoded log line. Anything unusable is counted by reason, never raised."""
        if not isinstance(record, dict):
            self.rejected["not an object"] += 1
            return
        if metrics.is_end_record(record):
            self.end_record = record
            self.records += 1
            return
        step = metrics.valid_step(record.get("step"))
        if step is None:
            self.rejected["no step" if _number(record.get("step")) is None else "bad step"] += 1
            return
        time = _number(record.get("time"))
        values: dict[str, float] = {}
        split = metrics.record_split(record)
        target = self.split(split)
        room = metrics.MAX_NAMES - target.width  # new names this split may still take (see metrics.MAX_NAMES)
        for key, raw in record.items():
            if key in metrics.INDEX_KEYS and key != "epoch":
                continue
            value = _number(raw)
            if value is None:
                self.rejected["wrong type"] += 1
                continue
            name = metrics.metric_name(key)
            if name is None:
                self.rejected["bad metric name"] += 1
                continue
            if name not in values and not target.has(name):
                if room <= 0:
                    self.rejected[f"metric names past {metrics.MAX_NAMES} per split"] += 1
                    continue
                room -= 1
            values[name] = value
            if not math.isfinite(value) and (split, name) not in self.first_non_finite:
                self.first_non_finite[split, name] = step
        target.append(step, math.nan if time is None or not math.isfinite(time) else time, values)
        self.records += 1

    def add_all(self, records: Iterable[Any]) -> None:
        for record in records:
            self.add(record)

    def add_columns(self, columns: dict[str, np.ndarray]) -> bool:
        """Take a block of lines decoded into columns by key (NaN where a line lacked the key).

        Returns False, changing nothing, when the block cannot be taken whole (a line without a
        step, or steps going back): the caller then adds its records one by one.
        """
        steps = columns.get("step")
        if steps is None or not len(steps) or not np.all((steps >= 0) & (steps <= metrics.MAX_STEP)):
            return False  # NaN fails both comparisons: a bad step goes the exact way, which counts it
        times = columns.get("time")
        times = np.full(len(steps), np.nan) if times is None else np.where(np.isfinite(times), times, np.nan)
        is_eval = np.zeros(len(steps), dtype=bool)
        for key, column in columns.items():
            if metrics.canonical(key)[0] == "eval":
                is_eval |= ~np.isnan(column)
        evals = int(np.count_nonzero(is_eval))
        # Most blocks are all train rows (an evaluation every few hundred lines): those take the
        # columns as they are, without a masked copy of each.
        parts = [(self.train, ~is_eval, len(steps) - evals), (self.eval, is_eval, evals)]
        blocks = []
        for target, rows, count in parts:
            if not count:
                continue
            whole = count == len(steps)
            chosen = steps if whole else steps[rows]
            if np.any(np.diff(chosen) < 0) or len(target) and chosen[0] < target.steps[-1]:
                return False
            values = {}
            for key, column in columns.items():
                if key in metrics.INDEX_KEYS and key != "epoch":
                    continue
                part = column if whole else column[rows]
                if not np.isnan(part).all():
                    values[metrics.canonical(key)[1]] = part
            if target.width + sum(not target.has(name) for name in values) > metrics.MAX_NAMES:
                return False  # past the cap of names: the exact way counts what it drops
            blocks.append((target, chosen, times if whole else times[rows], values))
        for target, chosen, chosen_times, values in blocks:
            target.extend(chosen, chosen_times, values)
        self.records += len(steps)
        return True


def _number(value: Any) -> float | None:
    """A logged value as a float: a number, or a string spelling NaN or ±Infinity (metrics.NON_FINITE_TEXT);
    None for anything else."""
    if isinstance(value, str):
        return metrics.non_finite_text(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def median(values: np.ndarray) -> float:
    """``np.median`` of finite values. numpy's median wrapper checks for masked arrays, which
    imports numpy.ma (12 ms of a cached report's 250) and costs more per call than the median."""
    return float(row_medians(np.asarray(values, dtype=float).reshape(1, -1))[0])


def row_medians(grouped: np.ndarray) -> np.ndarray:
    """``np.median(grouped, axis=1)`` for finite values, bit for bit (the middle value, or the mean of
    the two middle values), without its per-call overhead: the loss-spike rule takes two a block."""
    width = grouped.shape[1]
    half = width // 2
    if not width:
        return np.full(len(grouped), np.nan)
    if width % 2:
        return np.partition(grouped, half, axis=1)[:, half]
    part = np.partition(grouped, [half - 1, half], axis=1)
    return (part[:, half - 1] + part[:, half]) / 2


def minmax_buckets(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to ``buckets`` columns keeping each column's extremes (NaN where a column is empty).

    Downsampling by min/max keeps spikes visible, which averaging or striding would hide.
    """
    n = len(values)
    if buckets <= 0:
        return np.empty(0), np.empty(0)
    if n <= buckets:
        return values.copy(), values.copy()
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    finite = np.where(np.isfinite(values), values, np.nan)
    lows = np.full(buckets, np.nan)
    highs = np.full(buckets, np.nan)
    starts, ends = edges[:-1], edges[1:]
    nonempty = ends > starts
    with np.errstate(all="ignore"):
        if np.all(nonempty):
            lows = np.fmin.reduceat(finite, starts)
            highs = np.fmax.reduceat(finite, starts)
        else:
            idx = starts[nonempty]
            lows[nonempty] = np.fmin.reduceat(finite, idx)
            highs[nonempty] = np.fmax.reduceat(finite, idx)
    return lows, highs
