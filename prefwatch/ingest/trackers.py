"""Runs logged by the trackers users already have: trackio, MLflow and W&B, read from their own stores.

A tracker's store becomes cells like any other log: each run is a CellSource whose reader (a
``TrackerRun`` over the store's own reader of the run) yields scalar points (tag, step, wall time,
value) in the order they were logged. The points go through the same pivot as TensorBoard's
(``tensorboard.add_scalars``), and the tags through ``metrics.canonical``, so ``train/rewards/margins``
(trackio, W&B), ``rewards/margins`` and ``eval_rewards/margins`` (MLflow) land in TRL's series and
every finding and the verdict read them unchanged.

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

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.factors import RANK, SEED, Origin, config_factors
from prefwatch.core.factors import peft_rank as _peft_rank
from prefwatch.core.objectives import Claim
from prefwatch.core.series import CellSeries
from prefwatch.files import rundir
from prefwatch.files.rundir import CellState, CellStatus, StatusRecord
from prefwatch.ingest.completions import StoreTables
from prefwatch.ingest.factors import tracker_factors
from prefwatch.ingest.readers import sqlite
from prefwatch.ingest.readers.protocol import Batch, CompletionsReader, SourceError
from prefwatch.ingest.readers.store import RunEnd, StoreBatch, StoreReader, StoreRun
from prefwatch.ingest.readers.tensorboard import add_scalars
from prefwatch.ingest.sources import CellSource, GridSource, factor_source, guess_labels

if TYPE_CHECKING:
    from prefwatch.ingest.readers import trackio

# Settings that differ between the tracker runs of one training run without making it another one:
# where the logs went, what it resumed from, the tracker's own bookkeeping.
_VOLATILE = frozenset({"logging_dir", "resume_from_checkpoint", "output_dir_timestamp"})
# Where each tracker keeps a run's settings (by the module of the run's reader).
_TRACKER_ORIGINS = {"mlflow": Origin.MLFLOW_PARAMS, "trackio": Origin.TRACKIO_CONFIG, "wandb": Origin.WANDB_CONFIG}


def open_store(path: Path, wait: bool = False, clock: Clock = SYSTEM) -> GridSource | None:
    """The runs of the tracker store at ``path`` as a grid, or None when ``path`` is no tracker's store.

    The grid finds runs that start later by itself (``GridSource.refresh``). ``wait``: a store with no
    run yet is a grid of no cells that says what it waits for (``attach``), not an error."""
    if rundir.is_grid_dir(path) or rundir.is_cell_dir(path):
        return None
    finder = StoreFinder(path, clock)
    found = finder.find()
    if found is None:
        return None
    name, root, runs = found
    grid = GridSource(name, root, [], finder=finder, refreshed_at=clock.monotonic(), clock=clock)
    finder.add(grid, runs)
    if not grid.cells and runs and not wait:  # only runs whose names are not written yet: read them as they are
        finder.add(grid, runs, force=True)
    if not grid.cells and not wait:
        raise SourceError(f"{path}: a tracker's store with no runs in it yet")
    return grid


class StoreFinder:
    """The runs a path holds, found again at each ``refresh``: a store grows (a grid trained run after
    run into one trackio project, MLflow experiment or W&B folder), and so does a folder of stores.

    A run seen before keeps its cell. A later run of the same name, group and settings continues the
    cell as a new segment (a training resumed from a checkpoint: TRL's MLflow callback starts a new
    MLflow run under the same name, W&B a new run folder); any other run becomes a cell of its own."""

    def __init__(self, path: Path, clock: Clock = SYSTEM) -> None:
        self.path = path
        self.clock = clock
        self.waiting = f"{path}: waiting for the first run (a trackio, MLflow or W&B store with no runs yet)"
        self._listers: dict[Path, trackio.Lister] = {}
        self._chains: dict[str, list[StoreRun]] = {}  # cell id -> its runs, oldest first
        self._readers: dict[str, TrackerRun] = {}  # cell id -> its reader
        self._keys: set[str] = set()
        self._groups: set[str] = set()
        self._watched: list[Path] = [path if path.is_dir() else path.parent]

    def watched(self) -> list[Path]:
        """Folders whose changes may mean a new run (the store's folder, W&B's run folders' parent)."""
        return list(self._watched)

    def refresh(self, grid: GridSource) -> bool:
        """Add the runs that started since the last look; True when a cell was added or continued."""
        try:
            found = self.find()
        except SourceError:
            return False  # the store cannot be listed now (being migrated): its cells say why, if they cannot be read
        return bool(found and self.add(grid, found[2]))

    def add(self, grid: GridSource, runs: list[StoreRun], force: bool = False) -> bool:
        # A run whose name is not written yet is looked at again at the next refresh.
        new = [r for r in sorted(runs, key=lambda r: r.start) if r.key not in self._keys and (r.ready or force)]
        for run in new:
            self._keys.add(run.key)
            cell_id = self._continued(run)
            if cell_id is not None:
                self._readers[cell_id].continue_with(run.reader)
                self._chains[cell_id].append(run)
                continue
            self._groups.add(run.group)
            reader = TrackerRun(run.reader, self.clock)
            cell = store_cell(run, grid.root, self._new_id(run), reader)
            self._chains[cell.id], self._readers[cell.id] = [run], reader
            grid.cells.append(cell)
        return bool(new)

    def _continued(self, run: StoreRun) -> str | None:
        """The cell whose training ``run`` resumes: same group, name and settings, started before it."""
        for cell_id, chain in self._chains.items():
            last = chain[-1]
            if (last.group, last.name) == (run.group, run.name) and last.start <= run.start:
                if settings(last.config) == settings(run.config):
                    return cell_id
        return None

    def _new_id(self, run: StoreRun) -> str:
        """The run's name; with its group where the path holds several; with the tracker's run id (W&B's
        short one) or a count where another cell has the name already."""
        many = len(self._groups | {run.group}) > 1
        base = f"{run.group}/{run.name}" if many and run.group else run.name
        if base not in self._chains:
            return base
        if run.run_id and len(run.run_id) <= 12:
            candidate = f"{base}#{run.run_id}"
            if candidate not in self._chains:
                return candidate
        count = 2
        while f"{base}#{count}" in self._chains:
            count += 1
        return f"{base}#{count}"

    def find(self) -> tuple[str, Path, list[StoreRun]] | None:
        """(grid name, root, runs) of the store at ``path`` now, or None when it is no tracker's store.
        A store that cannot be read says why in one line (SourceError)."""
        try:
            return self._find(self.path)
        except sqlite.Busy:
            return self.path.name, self.path, []
        except (sqlite3.Error, OSError) as exc:
            raise SourceError(store_error(self.path, exc)) from None

    def _find(self, path: Path) -> tuple[str, Path, list[StoreRun]] | None:
        from prefwatch.ingest.readers import mlflow, trackio, wandb

        if path.is_file():
            if path.suffix == ".wandb":
                return path.parent.name, path.parent, [wandb.store_run(path)]
            columns = sqlite.tables(path)
            if trackio.TABLES <= columns.keys():
                return path.stem, path.parent, self._trackio(path)
            if mlflow.TABLES <= columns.keys():
                return path.parent.name, path.parent, mlflow.sqlite_runs(path)
            if sqlite.is_sqlite(path):  # never read as JSON lines; perhaps a store whose tables are not made yet
                raise SourceError(f"{path}: a SQLite database without trackio's or MLflow's tables (yet)")
            if path.suffix == ".db":
                raise SourceError(f"{path}: not a SQLite database (no SQLite header): not a tracker's store")
            return None
        wandb_files = wandb.run_files(path)
        if wandb_files:
            return path.name, path, [wandb.store_run(f) for f in wandb_files]
        if mlflow.is_file_store(path):
            self._watch(*mlflow.experiment_folders(path))
            return path.name, path, mlflow.file_store_runs(path)
        databases = [p for p in sorted(path.glob("*.db")) if _is_trackio(p)]
        if databases:
            return path.name, path, [run for db in databases for run in self._trackio(db)]
        inside = [p for p in (path / "mlflow.db", path / "mlruns", path / "wandb") if p.exists()]
        if inside:  # the folder a training script ran in: every store it holds
            self._watch(*(p for p in inside if p.is_dir()))
            found = [self._find(p) for p in inside]
            return path.name, path, [run for f in found if f is not None for run in f[2]]
        return None

    def _trackio(self, db: Path) -> list[StoreRun]:
        from prefwatch.ingest.readers import trackio

        lister = self._listers.get(db)
        if lister is None:
            lister = self._listers[db] = trackio.Lister(db)
        return lister.runs()

    def _watch(self, *folders: Path) -> None:
        for folder in folders:
            if folder not in self._watched:
                self._watched.append(folder)


def _is_trackio(path: Path) -> bool:
    from prefwatch.ingest.readers import trackio

    try:
        return trackio.TABLES <= sqlite.tables(path).keys()
    except (sqlite3.Error, sqlite.Busy, OSError):
        return sqlite.is_sqlite(path)  # a project database that cannot be read now: listed, and says why


def store_error(path: Path, exc: BaseException) -> str:
    """One line for a store that cannot be listed: SQLite's words, the file, what they mean."""
    return f"{sqlite.describe(path, exc)}; no run could be listed"


def settings(config: Mapping[str, Any]) -> Any:
    """A run's settings as compared between two tracker runs: the tracker's own keys (``_wandb``,
    ``_Created``) and the volatile ones left out, lists of names in any order (PEFT's target modules)."""

    def norm(value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(sorted((str(k), norm(v)) for k, v in value.items() if not str(k).startswith("_")))
        if isinstance(value, (list, tuple)):
            items = [norm(v) for v in value]
            return tuple(sorted(items, key=repr)) if all(isinstance(v, str) for v in value) else tuple(items)
        return value

    return norm({k: v for k, v in config.items() if k not in _VOLATILE})


class Segments:
    """The tracker runs of one training run, read one after another as one run: a resumed run's
    points replace the steps it replays (the series starts a segment), and the last run's end mark is
    the cell's."""

    def __init__(self, first: StoreReader) -> None:
        self.readers = [first]
        self._started = [True]

    @property
    def path(self) -> Path:
        return self.readers[-1].path

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.readers if r.error), None)

    def add(self, reader: StoreReader) -> None:
        self.readers.append(reader)
        self._started.append(False)

    def watched(self) -> list[Path]:
        return list(dict.fromkeys(p for r in self.readers for p in r.watched()))

    def fresh(self) -> Segments:
        chain = Segments(self.readers[0].fresh())
        for reader in self.readers[1:]:
            chain.add(reader.fresh())
        return chain

    def poll(self) -> StoreBatch:
        batches = [reader.poll() for reader in self.readers]
        if any(b.restarted for b in batches):  # one was rebuilt: every segment is read again
            self.readers = self.fresh().readers
            self._started = [True] + [False] * (len(self.readers) - 1)
            batch = self.poll()
            batch.restarted = True
            return batch
        first = batches[0]
        for index, batch in enumerate(batches[1:], 1):
            begun = not self._started[index] and bool(len(batch.scalars) or batch.end)
            self._started[index] = self._started[index] or begun
            first.after.append((batch, begun))
        first.more = any(b.more for b in batches)
        first.ended = batches[-1].ended
        return first


class TrackerRun:
    """A run in a tracker's store as a cell's reader: its points pivoted into one series, the store's
    end mark as the run's state. A later tracker run that resumes the training continues it
    (``continue_with``: the runs are read one after another, as ``Segments``)."""

    def __init__(self, run: StoreReader, clock: Clock = SYSTEM) -> None:
        self.run: StoreReader | Segments = run
        self.clock = clock
        self.series = CellSeries()
        self.ended: RunEnd | None = None  # the tracker's own word that the run ended

    def continue_with(self, reader: StoreReader) -> None:
        chain = self.run if isinstance(self.run, Segments) else Segments(self.run)
        chain.add(reader)
        self.run = chain

    @property
    def path(self) -> Path:
        return self.run.path

    def watched(self) -> list[Path]:
        return self.run.watched()

    def preview(self, max_bytes: int) -> CellSeries | None:
        return None

    def written_at(self) -> float | None:
        try:
            return self.run.path.stat().st_mtime
        except OSError:
            return None

    def completions(self) -> CompletionsReader | None:
        return StoreTables.of(lambda: self.run, self.clock)  # W&B's and trackio's completions tables

    def poll(self) -> Batch:
        changed, more, restarted = False, True, False
        while more:
            batch = self.run.poll()
            if batch.restarted:
                self.series, restarted = CellSeries(), True
            # A run resumed under a new tracker run comes as later segments: where one begins, the end
            # of what came before is void (a finished run that was trained further).
            for part, begun in [(batch, False), *batch.after]:
                if begun:
                    self.series.end_record = None
                add_scalars(self.series, part.scalars)
                if part.end:
                    self.series.end_record = {**(self.series.end_record or {}), **part.end}
                changed |= bool(begun or len(part.scalars) or part.scalars.rejected or part.end)
            changed |= batch.restarted or batch.ended != self.ended
            self.ended = batch.ended
            more = batch.more
        error = self.run.error
        if error is not None:
            state = CellStatus(CellState.UNREADABLE, error=error)
        elif self.ended is not None:  # the tracker's own mark: MLflow's status, W&B's exit record
            end = self.ended
            state = CellStatus(end.state, StatusRecord(state=end.state, exit_code=end.exit_code or None))
        else:
            state = None
        return Batch(self.series, changed, restarted, error, state)


def store_cell(run: StoreRun, root: Path, cell_id: str, reader: TrackerRun) -> CellSource:
    objective, rank = config_labels(run.config, root, run.name)
    cell = CellSource(cell_id, root, reader, objective, rank, seed=_int(run.config.get("seed")), clock=reader.clock)
    max_steps = _int(run.config.get("max_steps"))
    if max_steps is not None and max_steps > 0:
        cell.planned_steps = max_steps
    # The run's factors (its logged config and tags, then its name) and where its objective and rank were read.
    origin = _TRACKER_ORIGINS.get(type(run.reader).__module__.rsplit(".", 1)[-1], Origin.RUN_NAME)
    describe_run(cell, run, origin, objective_logged=config_labels(run.config, root, "")[0] is not None)
    return cell


def describe_run(cell: CellSource, run: StoreRun, origin: Origin, objective_logged: bool) -> None:
    """A tracker's run: its factors from its logged config (MLflow params, trackio's or W&B's
    config), MLflow's tags, then its name; its objective and rank say where each was read."""
    cell.factors = tracker_factors(run.config, run.name, origin)
    config_factors(run.tags, Origin.MLFLOW_TAGS, cell.factors)
    rank = cell.factors.values.get(RANK)
    seed = cell.factors.get(SEED)
    cell.rank = int(rank.value) if rank is not None else cell.rank
    cell.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else cell.seed
    said = str(origin) if objective_logged else "run name"
    cell.claim = Claim(
        cell.objective, said if cell.objective else None, cell.rank, factor_source(rank) if rank else None
    )
    cell.objective = cell.claim.objective


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


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
