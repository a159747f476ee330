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
import sqlite3
from pathlib import Path
from typing import Any

from prefwatch.ingest.readers import sqlite
from prefwatch.ingest.readers.sqlite import SqliteFollower
from prefwatch.ingest.readers.store import Points, StoreBatch, StoreRun
from prefwatch.ingest.tail import decode_line

TABLES = frozenset({"metrics", "configs"})
# The columns this reader reads (trackio 0.45's schema; before 0.3 runs were keyed by run_name alone).
KNOWN = "trackio up to 0.45 (metrics: id, timestamp, step, metrics, run_name or run_id; configs: run_name, config)"
_COLUMNS = {"metrics": {"id", "timestamp", "step", "metrics", "run_name"}, "configs": {"run_name", "config"}}
_END_KEYS = frozenset({"train/epoch", "train/global_step"})


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

    @property
    def error(self) -> str | None:
        return self._follower.error

    def watched(self) -> list[Path]:
        return [self.path.parent]

    def poll(self) -> StoreBatch:
        rows, restarted = self._follower.rows("metrics", self._query, (self._run_key,))
        points, end = Points(), None
        for _, stamp, counter, text in rows:
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
