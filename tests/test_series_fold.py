"""SplitSeries.fold: a whole-history summary kept up to date from what is new must equal the same
summary computed from scratch on the rows as they are now, whatever happened to them in between:
rows appended one by one or in blocks, the last row completed later, a resume that drops rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefwatch.core import diagnose, series
from prefwatch.core import metrics as m
from prefwatch.core.diagnose import Thresholds
from prefwatch.core.series import CellSeries, SplitSeries

T = Thresholds(spike_window=3)
VALUES = st.one_of(
    st.sampled_from([0.0, math.log(2), math.nan, 100.0]), st.floats(-5, 5, allow_nan=False, allow_infinity=False)
)
ROW = st.fixed_dictionaries({m.LOSS: VALUES, m.CHOSEN: VALUES, m.REJECTED: VALUES, m.MARGINS: VALUES})
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(-6, 3), ROW),
        st.tuples(st.just("update_last"), st.just(0), ROW),
        st.tuples(st.just("extend"), st.integers(1, 9), ROW),
        st.tuples(st.just("look"), st.just(0), ROW),
    ),
    max_size=60,
)


def spikes_from_scratch(loss: np.ndarray, t: Thresholds) -> int:
    """The rule as first written, on the whole column: block k > median + deviations x MAD of block k-1."""
    finite = loss[np.isfinite(loss)]
    window = t.spike_window
    blocks = len(finite) // window
    if blocks < 2:
        return 0
    grouped = finite[: blocks * window].reshape(blocks, window)
    median = np.median(grouped, axis=1)
    mad = np.median(np.abs(grouped - median[:, None]), axis=1)
    scale = np.maximum(mad * 1.4826, 1e-3 * np.maximum(np.abs(median), 1e-6))
    limit = np.repeat(median[:-1] + t.spike_deviations * scale[:-1], window)
    return int(np.sum(finite[window : blocks * window] > limit))


def margins_from_scratch(split: SplitSeries, tolerance: float) -> tuple[int, int, int | None]:
    chosen, rejected, margins = (split.column(n) for n in (m.CHOSEN, m.REJECTED, m.MARGINS))
    both = np.isfinite(chosen) & np.isfinite(rejected) & np.isfinite(margins)
    gap = np.abs(margins - (chosen - rejected)) / np.maximum(np.abs(chosen) + np.abs(rejected), 1e-6)
    off = np.flatnonzero(both & (gap > tolerance))
    return int(both.sum()), len(off), int(off[0]) if len(off) else None


def stuck_from_scratch(split: SplitSeries) -> tuple[int, int | None]:
    chosen, rejected, loss = (split.column(n) for n in (m.CHOSEN, m.REJECTED, m.LOSS))
    stuck = np.flatnonzero((chosen == 0) & (rejected == 0) & (np.abs(loss - math.log(2)) < 1e-3))
    return len(stuck), int(stuck[0]) if len(stuck) else None


def check(split: SplitSeries) -> None:
    assert split.fold(diagnose._spike_rows, diagnose.NO_SPIKES, T).found == spikes_from_scratch(split.column(m.LOSS), T)
    assert split.fold(diagnose._margin_rows, (0, 0, None), 0.02) == margins_from_scratch(split, 0.02)
    assert split.fold(diagnose._stuck_rows, (0, None)) == stuck_from_scratch(split)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_a_fold_kept_up_to_date_equals_the_fold_from_scratch(ops: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(series, "FOLD_MARK", 4)  # marks every 4 rows: rewrites cross them often (same for every input)
    split = SplitSeries()
    step = 0
    for op, number, row in ops:
        if op == "append":
            step = max(0, step + number)
            split.append(step, 0.0, row)
        elif op == "update_last" and len(split):
            split.update_last(row)
        elif op == "extend":
            steps = np.arange(step + 1, step + 1 + number, dtype=float)
            split.extend(steps, np.zeros(number), {k: np.full(number, v) for k, v in row.items()})
            step += number
        else:
            check(split)
    check(split)


def test_a_rewrite_behind_a_mark_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark before a rewritten row is where the fold starts again: a resume that drops rows
    behind two marks, then different rows in their place, must count the new rows, not the old."""
    monkeypatch.setattr(series, "FOLD_MARK", 4)
    cell = CellSeries()
    for step in range(1, 13):
        cell.add({"step": step, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "loss": math.log(2)})
    assert cell.train.fold(diagnose._stuck_rows, (0, None)) == (12, 0)
    for step in range(3, 13):  # resumed from step 2's checkpoint: rows 3.. are replaced
        cell.add({"step": step, "rewards/chosen": 0.5, "rewards/rejected": -0.5, "loss": 0.3})
    assert cell.train.fold(diagnose._stuck_rows, (0, None)) == (2, 0)
    cell.train.update_last({"rewards/chosen": 0.0, "rewards/rejected": 0.0, "loss": math.log(2)})
    assert cell.train.fold(diagnose._stuck_rows, (0, None)) == (3, 0)
