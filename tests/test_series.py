"""The columnar series at its edges: what each record adds or is rejected for (by reason, counted one by
one), the cap of metric names per split, blocks of columns taken whole or refused, rows growing past the
initial capacity, a split rebuilt from arrays, versions, and the min/max reduction the charts draw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prefwatch.core import metrics
from prefwatch.core.series import _INITIAL_CAPACITY, CellSeries, SplitSeries, minmax_buckets

CAP = metrics.MAX_NAMES


def names(count: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def test_each_unusable_record_is_counted_by_its_reason() -> None:
    series = CellSeries()
    series.add_all(
        [
            [1, 2],
            "text",
            {"loss": 0.5},  # no step
            {"step": "three", "loss": 0.5},  # a step that is no number: no step either
            {"step": None, "loss": 0.5},
            {"step": -1, "loss": 0.5},  # a number that is no step
            {"step": math.inf, "loss": 0.5},
            {"step": 1, "a": "x", "b": None, "loss": 0.5},  # two values of the wrong type, the loss kept
            {"step": 2, 'bad"name': 1.0, "bad\\name": 2.0, "loss": 0.4},  # two keys that are no metric names
        ]
    )
    assert series.rejected == {
        "not an object": 2,
        "no step": 3,
        "bad step": 2,
        "wrong type": 2,
        "bad metric name": 2,
    }
    assert series.records == 2  # only the two rows with a step
    assert list(series.train.steps) == [1, 2] and list(series.train.column("loss")) == [0.5, 0.4]
    assert series.train.names == ["loss"]


def test_the_end_record_counts_once_and_finishes_the_series() -> None:
    series = CellSeries()
    series.add({"step": 1, "loss": 0.5})
    assert not series.finished
    series.add({"train_runtime": 10.0, "step": 1})
    assert series.finished and series.records == 2 and len(series.train) == 1
    assert series.end_record == {"train_runtime": 10.0, "step": 1}


def test_a_time_that_is_not_finite_is_unknown() -> None:
    series = CellSeries()
    series.add({"step": 1, "time": math.inf, "loss": 0.5})
    series.add({"step": 2, "time": 7.0, "loss": 0.5})
    series.add({"step": 3, "loss": 0.5})
    times = series.train.times
    assert math.isnan(times[0]) and times[1] == 7.0 and math.isnan(times[2])


def test_the_cap_of_metric_names_per_split() -> None:
    series = CellSeries()
    first = dict.fromkeys(names(CAP - 2), 1.0)
    series.add({"step": 1, **first})
    assert series.train.width == CAP - 2 and not series.rejected
    # Two names still fit; the three after them do not (each counted); a known name after them is kept.
    late = {"step": 2, "n0": 1.0, "n1": 2.0, "n2": 3.0, "n3": 4.0, "n4": 5.0, "m000": 9.0}
    series.add(late)
    assert series.train.width == CAP
    assert series.rejected == {f"metric names past {CAP} per split": 3}
    assert series.train.column("n1")[-1] == 2.0 and not series.train.has("n2")
    assert series.train.column("m000")[-1] == 9.0
    # At the cap, a row of known names only is taken whole.
    series.add({"step": 3, **dict.fromkeys(names(CAP - 2), 2.0), "n0": 2.0, "n1": 2.0})
    assert series.rejected == {f"metric names past {CAP} per split": 3} and len(series.train) == 3
    # The eval split has a cap of its own.
    series.add({"step": 3, "eval_loss": 0.7})
    assert series.eval.names == ["loss"] and series.train.width == CAP


def test_rows_grow_past_the_initial_capacity_and_a_resume_drops_replayed_rows() -> None:
    split = SplitSeries()
    for step in range(1, 2 * _INITIAL_CAPACITY + 2):
        split.append(step, 1000.0 + step, {"loss": float(step)} if step % 2 else {"other": -1.0})
    n = 2 * _INITIAL_CAPACITY + 1
    assert len(split) == n and list(split.steps) == list(range(1, n + 1))
    loss, other = split.column("loss"), split.column("other")
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[-1] == float(n)
    assert math.isnan(other[0]) and other[1] == -1.0 and math.isnan(other[-1])
    assert np.isnan(split.column("never")).all() and len(split.column("never")) == n
    version = split.version
    split.append(10, 2.0, {"loss": 0.1})  # resumed from step 10: rows from 10 on are replaced
    assert split.segments == 2 and list(split.steps) == [*range(1, 10), 10]
    assert split.column("loss")[-1] == 0.1 and math.isnan(split.column("other")[-1])
    assert split.version == version + 1
    split.append(10, 3.0, {"loss": 0.2})  # the same step again is no resume
    assert split.segments == 2 and list(split.steps[-2:]) == [10, 10]
    split.append(30, 4.0, {"loss": 0.3})
    split.append(20, 5.0, {"loss": 0.4})  # lower than the last row only: a resume all the same
    assert split.segments == 3 and list(split.steps[-3:]) == [10, 10, 20]


def test_update_last_sets_values_of_the_last_row_only() -> None:
    split = SplitSeries()
    split.append(1, 1.0, {"loss": 0.5})
    split.append(2, 2.0, {"loss": 0.4})
    version = split.version
    split.update_last({"loss": 0.3, "grad_norm": 2.0})
    assert list(split.column("loss")) == [0.5, 0.3]
    assert math.isnan(split.column("grad_norm")[0]) and split.column("grad_norm")[1] == 2.0
    assert split.version == version + 1 and len(split) == 2


def test_extend_adds_blocks_and_fills_what_a_block_lacks() -> None:
    split = SplitSeries()
    split.append(1, 1.0, {"loss": 0.5})
    steps = np.arange(2, _INITIAL_CAPACITY + 2, dtype=float)  # fills the capacity exactly
    version = split.version
    split.extend(steps, steps + 100.0, {"margin": steps / 10})
    assert len(split) == _INITIAL_CAPACITY + 1 and split.version == version + 1
    assert math.isnan(split.column("loss")[-1]) and split.column("margin")[-1] == steps[-1] / 10
    assert math.isnan(split.column("margin")[0]) and split.times[-1] == steps[-1] + 100.0
    split.extend(np.array([100.0]), np.array([5.0]), {"loss": np.array([0.1])})
    assert split.column("loss")[-1] == 0.1 and math.isnan(split.column("margin")[-1])


@pytest.mark.parametrize("rows", [3, _INITIAL_CAPACITY, _INITIAL_CAPACITY + 5])
def test_a_split_from_arrays_holds_them_and_grows_from_there(rows: int) -> None:
    steps = np.arange(1, rows + 1, dtype=np.int64)
    times = np.arange(rows, dtype=np.float32)
    loss = np.linspace(1.0, 0.0, rows, dtype=np.float32)
    split = SplitSeries.from_arrays(steps, times, {"loss": loss}, segments=2)
    assert (len(split), split.segments, split.version, split.names) == (rows, 2, 1, ["loss"])
    assert split.steps.dtype == split.times.dtype == split.column("loss").dtype == np.float64
    assert list(split.steps) == list(range(1, rows + 1)) and list(split.times) == list(range(rows))
    assert np.array_equal(split.column("loss"), loss)
    split.append(rows + 1, 99.0, {"margin": 1.0})
    split.append(rows + 2, 100.0, {"loss": -1.0})
    assert len(split) == rows + 2 and list(split.steps[-2:]) == [rows + 1, rows + 2]
    assert math.isnan(split.column("loss")[-2]) and split.column("loss")[-1] == -1.0
    assert math.isnan(split.column("margin")[0]) and split.column("margin")[-2] == 1.0
    assert SplitSeries.from_arrays(steps, times, {}).segments == 1


def test_nbytes_counts_steps_times_and_every_column_and_capacity_doubles_when_full() -> None:
    split = SplitSeries()
    assert split.nbytes() == 2 * 8 * _INITIAL_CAPACITY
    split.append(1, 1.0, {"a": 1.0, "b": 2.0})
    assert split.nbytes() == 4 * 8 * _INITIAL_CAPACITY
    steps = np.arange(2, _INITIAL_CAPACITY + 1, dtype=float)  # exactly full: no room made yet
    split.extend(steps, steps, {"a": steps})
    assert len(split) == _INITIAL_CAPACITY and split.nbytes() == 4 * 8 * _INITIAL_CAPACITY
    split.append(_INITIAL_CAPACITY + 1, 0.0, {"b": 1.0})
    assert split.nbytes() == 4 * 8 * 2 * _INITIAL_CAPACITY


def block(steps: list[float], **columns: list[float]) -> dict[str, np.ndarray]:
    return {"step": np.array(steps, dtype=float), **{k: np.array(v, dtype=float) for k, v in columns.items()}}


def test_a_block_of_columns_is_taken_whole() -> None:
    series = CellSeries()
    nan = math.nan
    # Equal steps side by side, step 0, and two eval metrics on different rows: both rows are eval rows.
    taken = series.add_columns(
        block(
            [0, 1, 1, 2, 2],
            loss=[0.9, 0.8, 0.7, nan, nan],
            eval_loss=[nan, nan, nan, 0.6, nan],
            eval_accuracy=[nan, nan, nan, nan, 0.5],
            time=[1.0, math.inf, 3.0, 4.0, 5.0],
        )
    )
    assert taken and series.records == 5
    assert list(series.train.steps) == [0, 1, 1] and list(series.eval.steps) == [2, 2]
    assert math.isnan(series.train.times[1]) and series.train.times[2] == 3.0
    # The next block may start at the step the last ended on; without times they are unknown.
    assert series.add_columns(block([1, metrics.MAX_STEP], loss=[0.6, 0.5]))
    assert list(series.train.steps[-2:]) == [1, metrics.MAX_STEP] and np.isnan(series.train.times[-2:]).all()
    assert series.records == 7


@pytest.mark.parametrize(
    "columns",
    [
        {"loss": np.array([0.5])},  # no step column
        block([]),
        block([1, -1], loss=[0.5, 0.4]),
        block([1, math.nan], loss=[0.5, 0.4]),
        block([1, metrics.MAX_STEP * 2], loss=[0.5, 0.4]),
        block([3, 2], loss=[0.5, 0.4]),  # steps going back within the block
    ],
    ids=["no step", "empty", "negative step", "NaN step", "step too large", "steps going back"],
)
def test_a_block_that_cannot_be_taken_whole_changes_nothing(columns: dict[str, np.ndarray]) -> None:
    series = CellSeries()
    assert series.add_columns(columns) is False
    assert (series.records, len(series.train), len(series.eval)) == (0, 0, 0)


def test_a_block_before_the_last_row_or_past_the_name_cap_is_refused() -> None:
    series = CellSeries()
    assert series.add_columns(block([5], loss=[0.5]))
    assert series.add_columns(block([4], loss=[0.4])) is False  # before the last row
    known = {name: [1.0] for name in names(4)}
    assert series.add_columns(block([6], **known))  # width 5
    # Known names count nothing; new ones up to the cap are taken, one past it refuses the block.
    fits = {**known, "loss": [1.0], **{name: [1.0] for name in names(CAP - 5, "n")}}
    assert series.add_columns(block([7], **fits)) and series.train.width == CAP
    over = CellSeries()
    assert over.add_columns(block([1], **{name: [1.0] for name in names(CAP + 1)})) is False
    assert over.train.width == 0 and over.records == 0


def test_minmax_buckets_keep_each_columns_extremes() -> None:
    values = np.array([10.0, 0, 0, 0, 0, 0, 0, 0, -3.0, 0])
    lows, highs = minmax_buckets(values, 5)  # buckets of two values
    assert list(highs) == [10.0, 0, 0, 0, 0] and list(lows) == [0, 0, 0, 0, -3.0]
    lows, highs = minmax_buckets(values, 1)
    assert (list(lows), list(highs)) == ([-3.0], [10.0])
    with_nan = np.array([math.nan, math.nan, 1.0, math.inf])
    lows, highs = minmax_buckets(with_nan, 2)
    assert math.isnan(lows[0]) and math.isnan(highs[0]) and (lows[1], highs[1]) == (1.0, 1.0)
    for buckets in (0, -1):
        lows, highs = minmax_buckets(values, buckets)
        assert (len(lows), len(highs)) == (0, 0)
    short = np.array([1.0, 2.0, 3.0])
    lows, highs = minmax_buckets(short, 3)
    assert list(lows) == list(highs) == [1.0, 2.0, 3.0]
    lows[0] = 99.0
    assert short[0] == 1.0  # copies, never the caller's array
