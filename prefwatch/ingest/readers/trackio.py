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
from pathlib import Path
from typing import Any

from prefwatch.ingest.readers.store import Points, SqliteFollower, StoreBatch, StoreRun, connect_ro
from prefwatch.ingest.tail import decode_line

TABLES = frozenset({"metrics", "configs"})
_END_KEYS = frozenset({"train/epoch", "train/global_step"})


def store_runs(db: Path) -> list[StoreRun]:
    """Every run of a project database, in the order they started."""
    connection = connect_ro(db)
    try:
        columns = {row[1] for row in connection.execute("PRAGMA table_info(metrics)")}
        key = "run_id" if "run_id" in columns else "run_name"
        configs = {
            row[0]: (row[1], row[2])
            for row in connection.execute(f"SELECT {key}, run_name, config FROM configs ORDER BY id")
        }
        logged = connection.execute(f"SELECT {key}, run_name FROM metrics GROUP BY {key} ORDER BY min(id)").fetchall()
    finally:
        connection.close()
    runs = []
    for run_key, name in [*((k, v[0]) for k, v in configs.items()), *((k, n) for k, n in logged if k not in configs)]:
        config = _json(configs[run_key][1]) if run_key in configs else None
        reader = TrackioReader(db, key, run_key)
        runs.append(StoreRun(name, reader, config if isinstance(config, dict) else {}))
    return runs


class TrackioReader:
    """The metrics rows of one run, in the order logged, followed by id."""

    def __init__(self, db: Path, key: str, run_key: str) -> None:
        self.path = db
        self._follower = SqliteFollower(db)
        self._query = f"SELECT id, timestamp, step, metrics FROM metrics WHERE id > ? AND {key} = ? ORDER BY id LIMIT ?"
        self._run_key = run_key
        self._stamp: tuple[str, float] = ("", 0.0)

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
            try:
                seconds = datetime.datetime.fromisoformat(str(stamp)).timestamp()
            except ValueError:
                seconds = float("nan")
            self._stamp = (stamp, seconds)
        return self._stamp[1]


def _json(text: Any) -> Any:
    """A JSON column: trackio stores it as text or as bytes (orjson), NaN spelled as Python writes it."""
    if isinstance(text, str):
        text = text.encode()
    return decode_line(text) if isinstance(text, bytes) else None
