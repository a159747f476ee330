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

import sqlite3
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefwatch.core.factors import peft_rank as _peft_rank
from prefwatch.files import rundir
from prefwatch.ingest.readers.store import StoreRun, is_sqlite, sqlite_tables
from prefwatch.ingest.sources import CellSource, GridSource, SourceError, guess_labels


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
    from prefwatch.ingest.readers import mlflow, trackio, wandb

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
    # The run's factors (its logged config and tags, then its name) and where its objective and rank were read.
    cell.describe_run(
        run.config, run.tags, run.name, objective_logged=config_labels(run.config, root, "")[0] is not None
    )
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


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
