"""trackio's metrics rows read a row at a time where every value is a number, value by value otherwise.

A project written by trackio's own ``SQLiteStorage`` holds rows of numbers, rows that carry text
(NaN spelled out, a label), booleans, nested values, index keys (``train/global_step``), private
(``_x``) and ``system/`` keys, and the Trainer's end row. The points read must be exactly those the
value-by-value way (``Points.add_row`` on every row) gives, in the same order.
"""

from __future__ import annotations

import datetime
import math
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not find_spec("trackio"), reason="trackio (dev extra) is not installed")


def logged_rows() -> list[dict]:
    rows: list[dict] = []
    for step in range(1, 61):
        row: dict = {"train/loss": 1 / step, "train/rewards/margins": step / 10, "train/global_step": step}
        if step % 7 == 0:
            row["train/grad_norm"] = "NaN"  # text: the row goes value by value
        if step % 11 == 0:
            row["_timestamp"] = 5.0  # private: not a point
            row["system/cpu"] = 12  # machine metrics: not a point
        if step % 13 == 0:
            row["train/flag"] = True  # a boolean: not a point
        if step % 17 == 0:
            row["train/nested"] = {"a": 1}
        rows.append(row)
        if step % 10 == 0:
            rows.append({"eval/loss": 0.5, "eval/rewards/accuracies": 0.6 + step / 1000, "train/global_step": step})
        if step == 30:
            rows.append({"train/learning_rate": 5, "train/global_step": step})  # an int: a number all the same
    rows.append({"train/epoch": 1.0, "train/global_step": 60})  # the Trainer's last row: the end
    return rows


def test_rows_of_numbers_give_the_points_the_value_by_value_way_gives(tmp_path: Path, monkeypatch) -> None:
    from trackio import sqlite_storage
    from trackio.sqlite_storage import SQLiteStorage

    # trackio reads TRACKIO_DIR once, when first imported: a test that imported it earlier in this process
    # would have this one write into the user's own store (and, run again, read its own rows twice).
    monkeypatch.setattr(sqlite_storage, "TRACKIO_DIR", tmp_path / "trackio")

    from prefwatch.ingest.readers import trackio
    from prefwatch.ingest.readers.store import Points

    rows = logged_rows()
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    stamps = [(start + datetime.timedelta(seconds=i)).isoformat() for i in range(len(rows))]
    SQLiteStorage.bulk_log("p", "dpo-r8", rows, list(range(len(rows))), stamps)
    db = SQLiteStorage.get_project_db_path("p")
    assert Path(db).is_relative_to(tmp_path)
    (run,) = trackio.store_runs(Path(db))

    fast = run.reader.poll()

    expected = Points()
    numbers = 0
    for row, stamp in zip(rows[:-1], stamps):
        numbers += all(type(v) in (int, float) for v in row.values())
        expected.add_row(row, int(row["train/global_step"]), datetime.datetime.fromisoformat(stamp).timestamp())
    want = expected.scalars()
    assert 0 < numbers < len(rows) - 1  # both ways were taken
    assert fast.scalars.tags == want.tags and "train/nested" not in want.tags
    for name in ("tag_ids", "steps", "walls", "values"):
        np.testing.assert_array_equal(getattr(fast.scalars, name), getattr(want, name))
    assert fast.end == {"global_step": 60.0}
    assert math.isnan(fast.scalars.values[want.tags.index("train/grad_norm") == fast.scalars.tag_ids][0])
