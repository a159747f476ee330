"""MLflow's tracking stores (what ``report_to="mlflow"`` writes), read without MLflow, live.

Two layouts, chosen by ``MLFLOW_TRACKING_URI``:

  SQLite  ``sqlite:///mlflow.db`` (MLflow 3's default): tables ``runs`` (run_uuid, name, status),
          ``metrics`` (key, value, timestamp in ms, run_uuid, step, is_nan), ``params`` (key, value)
  files   ``file:./mlruns`` (MLflow 3 asks for ``MLFLOW_ALLOW_FILE_STORE=true``):
          ``mlruns/<experiment id>/<run id>/meta.yaml``, ``metrics/<key>`` with one
          ``<timestamp ms> <value> <step>`` line per point (a key's ``/`` makes sub-folders),
          ``params/<key>`` holding the value

transformers' MLflowCallback logs TRL's keys as they are (``rewards/margins``, ``eval_rewards/margins``,
``train_runtime`` at the end) at ``step = global_step``, and the TrainingArguments as params
(TRL's config class shows in them; the LoRA rank does not: it comes from the run name, ``dpo-r16``).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from prefwatch.files import safe
from prefwatch.files.rundir import CellState
from prefwatch.ingest.readers import sqlite
from prefwatch.ingest.readers.sqlite import SqliteFollower
from prefwatch.ingest.readers.store import RunEnd, StoreBatch, StoreRun, without_index_keys
from prefwatch.ingest.readers.tensorboard import Scalars
from prefwatch.ingest.tail import TailReader

TABLES = frozenset({"runs", "metrics", "params"})
# The columns this reader reads (MLflow 2.x-3.18's schema; alembic revision f4a9b2c7d1e6 in 3.18).
KNOWN = "MLflow up to 3.18 (schema revision f4a9b2c7d1e6)"
_COLUMNS = {
    "runs": {"run_uuid", "name", "experiment_id", "status", "start_time", "lifecycle_stage"},
    "metrics": {"key", "value", "timestamp", "run_uuid", "step", "is_nan"},
    "params": {"key", "value", "run_uuid"},
}
# A run's end as MLflow records it: the status name (SQLite store), or its number (file store's meta.yaml).
_ENDS = {
    "FINISHED": CellState.FINISHED,
    "FAILED": CellState.FAILED,
    "KILLED": CellState.STOPPED,
    "3": CellState.FINISHED,
    "4": CellState.FAILED,
    "5": CellState.STOPPED,
}
_NAMES = {"3": "FINISHED", "4": "FAILED", "5": "KILLED"}
_META = "meta.yaml"
HOLD_SECONDS = 2.0
_UNKNOWN = 1 << 40  # the key id of a key not known yet  # a log's points are all written well within this


# ---- SQLite --------------------------------------------------------------------------------------


def schema_drift(columns: dict[str, set[str]]) -> str | None:
    """What of the columns this reader needs an MLflow database lacks (a newer or older MLflow), or None."""
    missing = [f"{table}.{c}" for table, wanted in _COLUMNS.items() for c in sorted(wanted - columns.get(table, set()))]
    return f"no column {', '.join(missing)}" if missing else None


def run_end(status: object, said: str = "MLflow status") -> RunEnd | None:
    """The end a run's MLflow status says (None while it runs or is scheduled)."""
    text = str(status).strip()
    state = _ENDS.get(text)
    return None if state is None else RunEnd(state, said=f"{said} {_NAMES.get(text, text)}")


def sqlite_runs(db: Path) -> list[StoreRun]:
    """Every active run, oldest first (group: its experiment). Raises sqlite3.Error and OSError."""
    drift = schema_drift(sqlite.tables(db))
    if drift is not None:
        raise sqlite.SchemaDrift(f"{drift}; this reader knows {KNOWN}")

    def query(connection: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], dict[str, Any], dict[str, Any]]:
        runs = connection.execute(
            "SELECT run_uuid, name, experiment_id, start_time FROM runs"
            " WHERE lifecycle_stage IS NOT 'deleted' ORDER BY start_time"
        ).fetchall()
        params: dict[str, dict[str, str]] = {}
        for run_uuid, key, value in connection.execute("SELECT run_uuid, key, value FROM params"):
            params.setdefault(run_uuid, {})[key] = value
        tags: dict[str, dict[str, str]] = {}
        if "tags" in {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            for run_uuid, key, value in connection.execute("SELECT run_uuid, key, value FROM tags"):
                if not key.startswith("mlflow."):  # MLflow's own (user, source, run name): not settings
                    tags.setdefault(run_uuid, {})[key] = value
        return runs, params, tags

    runs, params, tags = sqlite.read(db, query)
    return [
        StoreRun(
            str(name or run_uuid),
            SqliteRunReader(db, str(run_uuid)),
            params.get(str(run_uuid), {}),
            tags.get(str(run_uuid), {}),
            key=f"{db}::{run_uuid}",
            group=str(experiment),
            start=float(start or 0) / 1000.0,
            run_id=str(run_uuid),
        )
        for run_uuid, name, experiment, start in runs
    ]


class SqliteRunReader:
    """One run's metric rows, in the order logged (rowid), fetched as numbers: keys become ids in SQL."""

    def __init__(self, db: Path, run_uuid: str) -> None:
        self.path = db
        self._follower = SqliteFollower(db, KNOWN)
        self._run = run_uuid
        self._keys: list[str] = []

    def fresh(self) -> SqliteRunReader:
        return SqliteRunReader(self.path, self._run)

    @property
    def error(self) -> str | None:
        return self._follower.error

    def watched(self) -> list[Path]:
        return [self.path.parent]

    def poll(self) -> StoreBatch:
        start = self._follower.last_rowid
        if not self._keys:
            self._keys = self._new_keys(start)
        table, restarted = self._follower.numbers("metrics", self._query(), (*self._keys, self._run), 4)
        if len(table) and (np.abs(table[:, 0]) >= _UNKNOWN).any():  # keys not seen before: learn, read again
            self._follower.last_rowid = 0 if restarted else start
            self._keys += self._new_keys(self._follower.last_rowid)
            table, again = self._follower.numbers("metrics", self._query(), (*self._keys, self._run), 4)
            restarted |= again
        coded = table[:, 0]
        nan = coded < 0
        scalars = Scalars(tags=list(self._keys))
        scalars.tag_ids = np.where(nan, -coded - 1, coded).astype(np.int64)
        scalars.values = np.where(nan, math.nan, table[:, 1])
        scalars.walls = table[:, 2] / 1000.0
        scalars.steps = table[:, 3].astype(np.int64)
        if len(scalars) and scalars.tag_ids.max() >= len(self._keys):  # still unknown (a vanished key)
            keep = scalars.tag_ids < len(self._keys)
            scalars.tag_ids, scalars.values = scalars.tag_ids[keep], scalars.values[keep]
            scalars.walls, scalars.steps = scalars.walls[keep], scalars.steps[keep]
        return StoreBatch(without_index_keys(scalars), restarted, ended=self._ended())

    def _ended(self) -> RunEnd | None:
        """The run's status as MLflow recorded it (read after the rows: a run marked ended has them all)."""
        try:
            row = sqlite.read(
                self.path, lambda c: c.execute("SELECT status FROM runs WHERE run_uuid = ?", (self._run,)).fetchone()
            )
        except (sqlite.Busy, sqlite3.Error, OSError):
            return None
        return run_end(row[0]) if row else None

    def _query(self) -> str:
        """Four numbers a point: the key's index in self._keys (-index-1 when the value is NaN, _UNKNOWN
        when the key is new), value, timestamp, step. Parameters: ?1 and ?2 the rowid window
        (SqliteFollower.numbers), then the keys, then the run."""
        n = len(self._keys)
        case = " ".join(f"WHEN ?{i + 3} THEN {i}" for i in range(n))
        key_id = f"(CASE key {case} ELSE {_UNKNOWN} END)" if n else str(_UNKNOWN)
        return (
            f"SELECT {key_id} * (1 - 2 * is_nan) - is_nan, value, timestamp, step FROM metrics"
            f" WHERE rowid > ?1 AND rowid <= ?2 AND +run_uuid = ?{n + 3} ORDER BY rowid"
        )

    def _new_keys(self, after: int) -> list[str]:
        query = "SELECT DISTINCT key FROM metrics WHERE rowid > ? AND +run_uuid = ?"
        try:
            found = sqlite.read(self.path, lambda c: [row[0] for row in c.execute(query, (after, self._run))])
        except (sqlite.Busy, sqlite3.Error, OSError):
            return []
        return [key for key in found if key not in self._keys]


# ---- the file store ------------------------------------------------------------------------------


def is_file_store(path: Path) -> bool:
    """``mlruns/``, one experiment folder of it, or one run folder."""
    return _is_run(path) or any(_is_run(p) for p in _children(path)) or any(_is_experiment(p) for p in _children(path))


def experiment_folders(path: Path) -> list[Path]:
    """The folders a new run of the file store at ``path`` appears in (watched for runs that start later)."""
    if _is_run(path):
        return []
    return [path, *(p for p in _children(path) if _is_experiment(p))]


def _children(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and safe.listable(p))
    except OSError:
        return []


def _is_run(path: Path) -> bool:
    return (path / _META).is_file() and (path / "metrics").is_dir()


def _is_experiment(path: Path) -> bool:
    return (path / _META).is_file() and any(_is_run(p) for p in _children(path))


def file_store_runs(path: Path) -> list[StoreRun]:
    """Every run under ``path``, oldest first (group: its experiment)."""
    if _is_run(path):
        folders = [path]
    else:
        experiments = [p for p in _children(path) if _is_experiment(p)] or [path]
        folders = [run for experiment in experiments for run in _children(experiment) if _is_run(run)]
    runs = []
    for folder in folders:
        meta = _meta(folder / _META)
        if meta.get("lifecycle_stage") == "deleted":
            continue
        params = _key_files(folder / "params")
        name = meta.get("run_name") or _read(folder / "tags" / "mlflow.runName") or folder.name
        try:
            start = float(meta.get("start_time") or 0) / 1000.0
        except ValueError:
            start = 0.0
        tags = {k: v for k, v in _key_files(folder / "tags").items() if not k.startswith("mlflow.")}
        run_id = meta.get("run_id") or folder.name
        reader = FileRunReader(folder)
        run = StoreRun(
            name, reader, params, tags, key=str(folder), group=folder.parent.name, start=start, run_id=run_id
        )
        runs.append(run)
    return sorted(runs, key=lambda r: r.start)


def _meta(path: Path) -> dict[str, str]:
    """The flat ``key: value`` lines of MLflow's meta.yaml (no YAML parser needed for these)."""
    out = {}
    for line in (_read(path) or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith((" ", "-")):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _read(path: Path) -> str | None:
    try:
        return safe.read_text(path, errors="replace")
    except OSError:
        return None


def _key_files(folder: Path) -> dict[str, str]:
    """Files under ``folder`` by their path as a key (``rewards/margins``), with their text."""
    out = {}
    for file in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if file.is_file():
            out[file.relative_to(folder).as_posix()] = (_read(file) or "").strip()
    return out


class FileRunReader:
    """One run folder: a tail reader per metric file, points merged in logging order (time, step, key).

    Each metric is its own file, written one after another: a poll may find one log's points in some
    files and not yet in others. MLflow gives one log's points one timestamp, so the points at the
    newest time are held back until a poll finds nothing newer, or for HOLD_SECONDS at most; never
    in a run whose ``meta.yaml`` says it ended (read first: MLflow marks the end after the last point).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder
        self.error: str | None = None
        self._readers: dict[str, TailReader] = {}
        self._held: dict[str, np.ndarray] = {}

    def fresh(self) -> FileRunReader:
        return FileRunReader(self.path)

    def watched(self) -> list[Path]:
        metrics = self.path / "metrics"
        return [self.path, metrics, *(p for p in metrics.rglob("*") if p.is_dir())]

    def poll(self) -> StoreBatch:
        ended = run_end(_meta(self.path / _META).get("status", ""))
        metrics = self.path / "metrics"
        for key in _metric_keys(metrics):
            self._readers.setdefault(key, TailReader(metrics / key))
        rejected: Counter[str] = Counter()
        tables: dict[str, np.ndarray] = {}
        restarted = False
        for key, reader in self._readers.items():
            blocks: list[bytes] = []
            restarted |= reader.poll(on_block=blocks.append).restarted
            if blocks:
                tables[key], bad = _parse_lines(b"".join(blocks))
                if bad:
                    rejected[f"bad line in metrics/{key}"] += bad
        self.error = next((r.error for r in self._readers.values() if r.error), None)
        if restarted:  # a file was replaced: read every file again
            self._readers = {key: TailReader(metrics / key) for key in self._readers}
            self._held = {}
            return StoreBatch(self.poll().scalars, True, ended=ended)
        newest = max((float(t[:, 0].max()) for t in tables.values() if len(t)), default=None)
        for key, held in self._held.items():
            tables[key] = np.concatenate([held, tables[key]]) if key in tables else held
        self._held = {}
        if ended is None and newest is not None and newest > (time.time() - HOLD_SECONDS) * 1000:
            for key, table in list(tables.items()):
                late = table[:, 0] >= newest
                if late.any():
                    self._held[key], tables[key] = table[late], table[~late]
        return StoreBatch(without_index_keys(_merge(list(tables), list(tables.values()), rejected)), ended=ended)


def _metric_keys(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    keys = []
    for root, _, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        keys += [(relative / name).as_posix() for name in files]
    return sorted(keys)


def _parse_lines(block: bytes) -> tuple[np.ndarray, int]:
    """Rows of (timestamp ms, value, step) from ``<timestamp> <value> <step>`` lines; the count of bad lines."""
    fields = block.split()
    if len(fields) % 3 == 0 and block.count(b"\n") * 3 == len(fields):
        try:
            return np.array(fields, dtype=float).reshape(-1, 3), 0
        except ValueError:
            pass
    rows, bad = [], 0
    for line in block.splitlines():
        parts = line.split()
        try:
            stamp, value, step = float(parts[0]), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0
        except (ValueError, IndexError):
            bad += bool(line.strip())
            continue
        rows.append((stamp, value, step))
    return np.array(rows, dtype=float).reshape(-1, 3), bad


def _merge(tags: list[str], tables: list[np.ndarray], rejected: Counter[str]) -> Scalars:
    """Points of every metric file in the order they were logged: by time, then step, then key."""
    out = Scalars(tags=tags)
    out.rejected.update(rejected)
    if not tables:
        return out
    ids = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in enumerate(tables)])
    table = np.concatenate(tables)
    order = np.lexsort((ids, table[:, 2], table[:, 0]))
    out.tag_ids, out.walls = ids[order], table[order, 0] / 1000.0
    out.steps, out.values = table[order, 2].astype(np.int64), table[order, 1]
    return out
