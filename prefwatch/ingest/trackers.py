"""Runs logged by the trackers users already have: trackio, MLflow and W&B, read from their own stores.

A tracker's store becomes cells like any other log: each run is a CellSource whose ``tracker`` reader
yields scalar points (tag, step, wall time, value) in the order they were logged. The points go
through the same pivot as TensorBoard's (``tensorboard.add_scalars``), and the tags through
``metrics.canonical``, so ``train/rewards/margins`` (trackio, W&B), ``rewards/margins`` and
``eval_rewards/margins`` (MLflow) land in TRL's series and every finding and the verdict read them
unchanged.

Recognised from the path (``open_store``):

  trackio   a project database ``<project>.db`` (tables ``metrics`` and ``configs``), or a folder of them
            (``~/.cache/huggingface/trackio``, or ``$TRACKIO_DIR``)
  MLflow    a SQLite store ``mlflow.db`` (tables ``runs``, ``metrics``, ``params``), a file store
            ``mlruns/`` (``<experiment>/<run>/metrics/<key>``), one experiment or one run folder of it
  W&B       ``wandb/``, one ``offline-run-*`` / ``run-*`` folder, or its ``run-*.wandb`` file

and a folder that holds ``mlflow.db``, ``mlruns/`` or ``wandb/`` (the folder a training script ran in).
Each reader lives in its own module and is imported only when its store is found.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prefwatch import rundir
from prefwatch.ingest.sources import CellSource, GridSource, SourceError, guess_labels
from prefwatch.ingest.tensorboard import Scalars

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
        """One logged dict: its numbers (booleans and text are not metrics), index keys left out.

        The inner loop of every tracker reader: a key's tag id (or None: not a metric) is looked up once.
        """
        tags, ids, values = self._tags, self.tag_ids, self.values
        before = len(values)
        for key, value in row.items():
            kind = type(value)
            if kind is not float and kind is not int:  # bool, str, dict, None: not a point
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


def open_store(path: Path) -> GridSource | None:
    """The runs of the tracker store at ``path`` as a grid, or None when ``path`` is no tracker's store."""
    if rundir.is_grid_dir(path) or rundir.is_cell_dir(path):
        return None
    try:
        found = _find(path)
    except sqlite3.Error as exc:  # a store being created or migrated by its writer: try again later
        raise SourceError(f"{path}: cannot be read yet ({exc})") from None
    if found is None:
        return None
    name, root, runs = found
    if not runs:
        raise SourceError(f"{path}: a tracker's store with no runs in it yet")
    many_groups = len({group for group, _ in runs}) > 1
    cells = [store_cell(run, root, f"{group}/{run.name}" if many_groups else run.name) for group, run in runs]
    _unique_ids(cells)
    return GridSource(name, root, cells)


def _find(path: Path) -> tuple[str, Path, list[tuple[str, StoreRun]]] | None:
    """(grid name, root, [(group, run)]) of the store at ``path``; a group is a trackio project, an
    MLflow experiment or a W&B folder: run names are unique within one only."""
    from prefwatch.ingest import mlflow, trackio, wandb

    if path.is_file():
        if path.suffix == ".wandb":
            return path.parent.name, path.parent, [("wandb", wandb.store_run(path))]
        tables = sqlite_tables(path)
        if trackio.TABLES <= tables:
            return path.stem, path.parent, [(path.stem, run) for run in trackio.store_runs(path)]
        if mlflow.TABLES <= tables:
            return path.parent.name, path.parent, mlflow.sqlite_runs(path)
        if is_sqlite(path):  # never read as JSON lines; perhaps a store whose tables are not made yet
            raise SourceError(f"{path}: a SQLite database without trackio's or MLflow's tables (yet)")
        return None
    wandb_files = wandb.run_files(path)
    if wandb_files:
        return path.name, path, [(f.parent.name, wandb.store_run(f)) for f in wandb_files]
    if mlflow.is_file_store(path):
        return path.name, path, mlflow.file_store_runs(path)
    databases = [p for p in sorted(path.glob("*.db")) if trackio.TABLES <= sqlite_tables(p)]
    if databases:
        return path.name, path, [(db.stem, run) for db in databases for run in trackio.store_runs(db)]
    inside = [_find(p) for p in (path / "mlflow.db", path / "mlruns", path / "wandb") if p.exists()]
    runs = [run for found in inside if found is not None for run in found[2]]
    if runs:  # the folder a training script ran in: every store it holds
        return path.name, path, runs
    return None


def store_cell(run: StoreRun, root: Path, cell_id: str) -> CellSource:
    objective, rank = config_labels(run.config, root, run.name)
    cell = CellSource(cell_id, root, objective, rank, seed=_int(run.config.get("seed")), tracker=run.reader)
    max_steps = _int(run.config.get("max_steps"))
    if max_steps is not None and max_steps > 0:
        cell.info["train"] = {"max_steps": max_steps}
    return cell


def _unique_ids(cells: list[CellSource]) -> None:
    """Two runs of one name (a script run twice) stay two cells: the later ones get ``#2``, ``#3``."""
    seen: Counter[str] = Counter()
    for cell in cells:
        seen[cell.id] += 1
        if seen[cell.id] > 1:
            cell.id = f"{cell.id}#{seen[cell.id]}"


def config_labels(config: Mapping[str, Any], root: Path, name: str) -> tuple[str | None, int | None]:
    """Objective and LoRA rank from a run's logged settings (TRL's config class shows in its fields,
    PEFT's rank in ``peft_config``), else from tokens of the run's name (``dpo-r16``)."""
    loss_type = str(config.get("loss_type", ""))
    objective = None
    if "simpo" in loss_type or "simpo_gamma" in config or "cpo_alpha" in config:
        objective = "simpo"  # CPO and SimPO share TRL's CPOConfig; prefwatch files CPO with SimPO
    elif "precompute_ref_log_probs" in config or "ref_model_init_kwargs" in config:
        objective = "dpo"
    elif "padding_value" in config and "loss_type" not in config:
        objective = "orpo"
    rank = _peft_rank(config.get("peft_config"))
    # The name only: a path under a file (the store's root may be one) has no adapter_config.json.
    claim = guess_labels(root / rundir.CELL_FILE / Path(name).name) if name else None
    by_name = (claim.objective, claim.rank) if claim is not None else (None, None)
    return objective or by_name[0], rank if rank is not None else by_name[1]


def _peft_rank(peft_config: Any) -> int | None:
    """``r`` of PEFT's config as trackers log it: {"default": {"r": 16, ...}} or {"r": 16, ...}."""
    if isinstance(peft_config, str):
        match = re.search(r"['\"]r['\"]:\s*(\d+)", peft_config)
        return int(match.group(1)) if match else None
    if not isinstance(peft_config, Mapping):
        return None
    if isinstance(peft_config.get("r"), int):
        return int(peft_config["r"])
    return next((_peft_rank(v) for v in peft_config.values() if isinstance(v, Mapping) and "r" in v), None)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


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
