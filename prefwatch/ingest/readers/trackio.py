"""trackio's project databases (what ``report_to="trackio"`` writes), read-only and live.

trackio keeps one SQLite file per project, ``<project>.db`` in ``$TRACKIO_DIR`` (by default
``~/.cache/huggingface/trackio``), in WAL mode. transformers' TrackioCallback writes:

  configs   one row per run: ``config`` is a JSON object of the TrainingArguments (TRL's config),
            the model's config and ``peft_config``
  metrics   one row per ``trackio.log``: ``metrics`` is a JSON object of TRL's log with ``train/`` and
            ``eval/`` prefixes, plus ``train/global_step`` (the ``step`` column is trackio's own counter)

The end-of-training values (``train_runtime``...) are not logged; the Trainer's last log leaves a
row of ``train/epoch`` and ``train/global_step`` only, which marks the run finished.
"""

from __future__ import annotations

import datetime
import math
import operator
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from prefwatch.ingest.readers import sqlite
from prefwatch.ingest.readers.sqlite import SqliteFollower
from prefwatch.ingest.readers.store import Points, StoreBatch, StoreRun
from prefwatch.ingest.tail import decode_line

TABLES = frozenset({"metrics", "configs"})
# The columns this reader reads (trackio 0.45's schema; before 0.3 runs were keyed by run_name alone).
KNOWN = "trackio up to 0.45 (metrics: id, timestamp, step, metrics, run_name or run_id; configs: run_name, config)"
_COLUMNS = {"metrics": {"id", "timestamp", "step", "metrics", "run_name"}, "configs": {"run_name", "config"}}
_END_KEYS = frozenset({"train/epoch", "train/global_step"})
TABLE_TYPE = "trackio.table"  # what a logged trackio.Table is marked with in its metrics row


def schema_drift(columns: dict[str, set[str]]) -> str | None:
    """What of the columns this reader needs a project database lacks (a newer or older trackio), or None."""
    missing = [f"{table}.{c}" for table, wanted in _COLUMNS.items() for c in sorted(wanted - columns.get(table, set()))]
    return f"no column {', '.join(missing)}" if missing else None


class Lister:
    """The runs of one project database, found again at every ``runs()``: configs are few, and the
    metrics rows are scanned only above the last id already scanned (a run logged without a config)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._scanned = 0
        self._logged: dict[str, tuple[str, str]] = {}  # run key -> (name, first timestamp)
        self._column = "run_id"

    def runs(self) -> list[StoreRun]:
        """Every run, in the order they started. Raises SourceError-worthy sqlite3.Error and OSError."""
        columns = sqlite.tables(self.db)
        drift = schema_drift(columns)
        if drift is not None:
            raise sqlite.SchemaDrift(f"{drift}; this reader knows {KNOWN}")
        key = self._column = "run_id" if {"run_id"} <= columns["metrics"] & columns["configs"] else "run_name"

        def query(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
            configs = connection.execute(f"SELECT {key}, run_name, config FROM configs ORDER BY id").fetchall()
            logged = connection.execute(
                f"SELECT id, {key}, run_name, timestamp FROM metrics WHERE id > ? ORDER BY id", (self._scanned,)
            )
            for row_id, run_key, name, stamp in logged:
                self._logged.setdefault(run_key, (name, stamp))
                self._scanned = row_id
            return configs

        configs = sqlite.read(self.db, query)
        runs, seen = [], set()
        for run_key, name, text in configs:
            config = _json(text)
            config = config if isinstance(config, dict) else {}
            stamp = self._logged.get(run_key, (name, config.get("_Created")))[1]
            runs.append(self._run(run_key, name, config, stamp))
            seen.add(run_key)
        runs += [self._run(k, n, {}, stamp) for k, (n, stamp) in self._logged.items() if k not in seen]
        return sorted(runs, key=lambda r: r.start)

    def _run(self, run_key: str, name: str, config: dict[str, Any], stamp: Any) -> StoreRun:
        reader = TrackioReader(self.db, self._column, run_key)
        start = _seconds(stamp)
        return StoreRun(
            str(name),
            reader,
            config,
            key=f"{self.db}::{run_key}",
            group=self.db.stem,
            start=start if math.isfinite(start) else 0.0,
            run_id=str(run_key),
        )


def store_runs(db: Path) -> list[StoreRun]:
    """Every run of a project database, in the order they started."""
    return Lister(db).runs()


class TrackioReader:
    """The metrics rows of one run, in the order logged, followed by id."""

    def __init__(self, db: Path, key: str, run_key: str) -> None:
        self.path = db
        self._key = key
        self._follower = SqliteFollower(db, KNOWN)
        self._query = f"SELECT id, timestamp, step, metrics FROM metrics WHERE id > ? AND {key} = ? ORDER BY id LIMIT ?"
        self._run_key = run_key
        self._stamp: tuple[str, float] = ("", 0.0)

    def fresh(self) -> TrackioReader:
        return TrackioReader(self.path, self._key, self._run_key)

    def logged_tables(self, after: int, max_bytes: int) -> tuple[list[tuple[int, Any]], int] | None:
        """The run's metrics rows after row id ``after`` that hold a logged table (trackio keeps a
        ``trackio.Table`` inside the row that logged it: ``{"_type": "trackio.table", "_value": [rows]}``),
        as (trackio's step, the decoded row; None for a row over ``max_bytes`` or not JSON), and the
        last row id now (-1: there are fewer rows than before, the database was replaced). Only rows
        after ``after`` are scanned. None when the store cannot be read now (``error`` says why)."""

        def query(connection: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], int]:
            (last,) = connection.execute("SELECT max(id) FROM metrics").fetchone()
            if last is None or last <= after:
                return [], after if last is None or last == after else -1
            rows = connection.execute(
                f"SELECT step, CASE WHEN length(metrics) <= ? THEN metrics END FROM metrics "
                f"WHERE id > ? AND id <= ? AND {self._key} = ? AND instr(metrics, ?) > 0 ORDER BY id",
                (max_bytes, after, last, self._run_key, TABLE_TYPE),
            ).fetchall()
            return rows, last

        try:
            rows, last = sqlite.read(self.path, query)
        except (sqlite3.Error, OSError, sqlite.Busy):
            return None
        return [(step, _json(text)) for step, text in rows], last

    @property
    def error(self) -> str | None:
        return self._follower.error

    def watched(self) -> list[Path]:
        return [self.path.parent]

    def poll(self) -> StoreBatch:
        rows, restarted = self._follower.rows("metrics", self._query, (self._run_key,))
        points, end = Points(), None
        numbers = _NumberRows(points)
        for _, stamp, counter, text in rows:
            floats = _floats(text)
            if floats is not None:  # every value a number (the usual row): its points in one go
                step = floats.get("train/global_step", counter)
                if numbers.add(floats, int(step), self._time(stamp)):
                    end = {"global_step": float(step)}
                continue
            row = _json(text)
            if not isinstance(row, dict):
                points.rejected["bad trackio metrics row"] += 1
                continue
            step = row.get("train/global_step", counter)
            if not isinstance(step, (int, float)):
                points.rejected["bad trackio step"] += 1
                continue
            if row.keys() <= _END_KEYS:
                end = {"global_step": float(step)}
                continue
            points.add_row(row, int(step), self._time(stamp))
        return StoreBatch(points.scalars(), restarted, end)

    def _time(self, stamp: Any) -> float:
        """Seconds since the epoch of trackio's ISO timestamps (one parse per distinct stamp)."""
        if stamp != self._stamp[0]:
            self._stamp = (stamp, _seconds(stamp))
        return self._stamp[1]


_NUMBERS = msgspec.json.Decoder(dict[str, float])


def _floats(text: Any) -> dict[str, float] | None:
    """A metrics row whose every value is a JSON number, as floats; None for any other row (text,
    booleans, NaN spelled out, not an object, not JSON): that row goes the exact way."""
    try:
        return _NUMBERS.decode(text)
    except (msgspec.DecodeError, TypeError):  # ValidationError is a DecodeError
        return None


class _NumberRows:
    """Rows of numbers added to ``points`` a row at a time, not a value at a time: what each distinct
    set of keys holds (which values are points, their tags, whether it is the end row) is worked out
    once. The points and their order are those ``Points.add_row`` gives (a fifth of the CPU for 50
    runs of 1,000 rows and 20 metrics)."""

    def __init__(self, points: Points) -> None:
        self.points = points
        self._plans: dict[tuple[str, ...], tuple[bool, list[int], Callable[[list[float]], Any] | None]] = {}

    def add(self, row: dict[str, float], step: int, wall: float) -> bool:
        """Add the row's points; True for the end row (``train/epoch`` and ``train/global_step`` only), which adds none."""
        keys = tuple(row)
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plans[keys] = self._plan(keys)
        is_end, tags, pick = plan
        if is_end:
            return True
        if tags:
            points = self.points
            points.tag_ids.extend(tags)
            points.values.extend(row.values() if pick is None else pick(list(row.values())))
            points.steps.extend([step] * len(tags))
            points.walls.extend([wall] * len(tags))
        return False

    def _plan(self, keys: tuple[str, ...]) -> tuple[bool, list[int], Callable[[list[float]], Any] | None]:
        if set(keys) <= _END_KEYS:
            return True, [], None
        tag_of = self.points._tag_of  # the same tag for a key as add_row gives (index keys: none)
        tags = [tag_of(key) for key in keys]
        kept = [i for i, tag in enumerate(tags) if tag is not None]
        if len(kept) == len(keys):
            return False, [t for t in tags if t is not None], None
        pick = operator.itemgetter(*kept) if len(kept) > 1 else (lambda values: [values[kept[0]]] if kept else [])
        return False, [t for t in tags if t is not None], pick


def _seconds(stamp: Any) -> float:
    try:
        return datetime.datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return float("nan")


def _json(text: Any) -> Any:
    """A JSON column: trackio stores it as text or as bytes (orjson), NaN spelled as Python writes it."""
    if isinstance(text, str):
        text = text.encode()
    return decode_line(text) if isinstance(text, bytes) else None
