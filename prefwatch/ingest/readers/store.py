"""What every tracker reader shares: a poll's batch, a run found in a store, the points a reader
collects, and read-only SQLite access (trackio and MLflow keep their stores in SQLite)."""

from __future__ import annotations

import itertools
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prefwatch.core.metrics import non_finite_text
from prefwatch.ingest.readers.tensorboard import Scalars

# Keys a tracker logs beside TRL's metrics that index a row rather than measure anything.
_INDEX_KEYS = frozenset({"train/global_step", "global_step"})


@dataclass
class StoreBatch:
    """What one poll of a run's store produced: new points, whether the store restarted first
    (what was built from it is void), and the run's end-of-training values once the store says it ended."""

    scalars: Scalars
    restarted: bool = False
    end: dict[str, float] | None = None
    more: bool = False  # the reader stopped at a size limit: poll again now (memory stays bounded)


class StoreReader(Protocol):
    """A run in a tracker's store, followed by polling."""

    path: Path  # the file or folder named in messages

    @property
    def error(self) -> str | None: ...

    def poll(self) -> StoreBatch: ...

    def watched(self) -> list[Path]: ...


class Points:
    """Scalar points collected row by row, turned into columns once (``scalars``)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.tag_ids: list[int] = []
        self.steps: list[int] = []
        self.walls: list[float] = []
        self.values: list[float] = []
        self.rejected: Counter[str] = Counter()
        self._tags: dict[str, int | None] = {}

    def add_row(self, row: Mapping[str, Any], step: int, wall: float) -> None:
        """One logged dict: its numbers, index keys left out. Booleans and text are not metrics, except
        text that spells NaN or ±Infinity (trackio stores NaN as "NaN"): that is the number it names.

        The inner loop of every tracker reader: a key's tag id (or None: not a metric) is looked up once.
        """
        tags, ids, values = self._tags, self.tag_ids, self.values
        before = len(values)
        for key, value in row.items():
            kind = type(value)
            if kind is str:
                value = non_finite_text(value)
                if value is None:
                    continue
            elif kind is not float and kind is not int:  # bool, dict, None: not a point
                continue
            tag = tags.get(key, -1)
            if tag == -1:
                tag = tags[key] = self._tag_of(key)
            if tag is not None:
                ids.append(tag)
                values.append(float(value))
        added = len(values) - before
        self.steps.extend([step] * added)
        self.walls.extend([wall] * added)

    def _tag_of(self, key: str) -> int | None:
        if key in _INDEX_KEYS or key.startswith("_") or key.startswith("system/"):
            return None
        return self.index.setdefault(key, len(self.index))

    def scalars(self) -> Scalars:
        return Scalars(
            tags=list(self.index),
            tag_ids=np.array(self.tag_ids, dtype=np.int64),
            steps=np.array(self.steps, dtype=np.int64),
            walls=np.array(self.walls, dtype=float),
            values=np.array(self.values, dtype=float),
            rejected=self.rejected,
        )


def without_index_keys(scalars: Scalars) -> Scalars:
    """The points of ``scalars`` that measure something (for stores that log every key alike: MLflow)."""
    drop = [i for i, tag in enumerate(scalars.tags) if tag in _INDEX_KEYS]
    if not drop or not len(scalars):
        return scalars
    keep = ~np.isin(scalars.tag_ids, drop)
    scalars.tag_ids, scalars.steps = scalars.tag_ids[keep], scalars.steps[keep]
    scalars.walls, scalars.values = scalars.walls[keep], scalars.values[keep]
    return scalars


@dataclass
class StoreRun:
    """One run found in a store: its name, labels and settings, and the reader of its points."""

    name: str
    reader: StoreReader
    config: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)  # MLflow's run tags (its own mlflow.* left out)


# ---- SQLite, read-only ----------------------------------------------------------------------------


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``: no journal, no write lock, ever). Each query is its own
    short read transaction: in rollback-journal mode (MLflow) a reader holds the writer back only
    while a query runs; in WAL mode (trackio) not at all."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)
    connection.execute("PRAGMA query_only = 1")
    return connection


def sqlite_tables(path: Path) -> set[str]:
    """The tables of a SQLite file; empty for anything else (checked by its 16-byte header first)."""
    if not is_sqlite(path):
        return set()
    try:
        connection = connect_ro(path)
        try:
            return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return set()


def is_sqlite(path: Path) -> bool:
    """Whether a file starts with SQLite's 16-byte header (an empty file, just created, counts too)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head == b"SQLite format 3\x00" or (not head and path.suffix == ".db")


class SqliteFollower:
    """The rows a store appends to one table, found by rowid above the last one read.

    The file is reopened when it is replaced (another inode), and a rowid that falls below what was
    read means the rows were deleted or the file rebuilt: the caller reads it again from the start.
    """

    BATCH = 200_000  # rows per query: a reader never holds a read lock for long

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self.last_rowid = 0
        self._connection: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    def rows(self, table: str, query: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], bool]:
        """New rows of ``query`` on ``table`` (its first column the rowid, filtered by ``rowid > ?``
        as its first parameter, ordered by rowid, ``LIMIT ?`` last), and whether the store restarted."""
        out: list[tuple[Any, ...]] = []

        def read(top: int) -> None:
            assert self._connection is not None
            while True:
                batch = self._connection.execute(query, (self.last_rowid, *params, self.BATCH)).fetchall()
                out.extend(batch)
                if batch:
                    self.last_rowid = batch[-1][0]
                if len(batch) < self.BATCH:
                    return

        return out, self._read(table, read)

    def numbers(self, table: str, query: str, params: tuple[Any, ...], width: int) -> tuple[np.ndarray, bool]:
        """New rows of a query of ``width`` numeric columns, as one float array made in C from the cursor
        (at a million points a tuple per row costs more than the query). The query takes a window of
        rowids: ``rowid > ?1 AND rowid <= ?2``, ordered by rowid; ``params`` follow from ?3."""
        chunks: list[np.ndarray] = []

        def read(top: int) -> None:
            assert self._connection is not None
            while self.last_rowid < top:
                upto = min(top, self.last_rowid + self.BATCH)
                cursor = self._connection.execute(query, (self.last_rowid, upto, *params))
                chunks.append(np.fromiter(itertools.chain.from_iterable(cursor), dtype=float).reshape(-1, width))
                self.last_rowid = upto

        restarted = self._read(table, read)
        return (np.concatenate(chunks) if chunks else np.empty((0, width))), restarted

    def _read(self, table: str, read: Any) -> bool:
        """Open (again) when needed, notice a restart, then ``read(max rowid)``; errors are kept in ``error``."""
        restarted = False
        try:
            stat = self.path.stat()
            inode = (stat.st_dev, stat.st_ino)
            if self._connection is None or inode != self._inode:
                restarted = self._inode is not None and inode != self._inode
                self.close()
                self._connection, self._inode = connect_ro(self.path), inode
            (top,) = self._connection.execute(f"SELECT max(rowid) FROM {table}").fetchone()
            if (top or 0) < self.last_rowid:  # rows deleted, or the database rebuilt in place
                restarted = True
            if restarted:
                self.last_rowid = 0
            read(top or 0)
            self.error = None
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):  # a writer's commit: read at the next poll
                self.error = f"{self.path}: {exc}"
        except sqlite3.Error as exc:
            self.error = f"{self.path}: {exc}"
        return restarted

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
