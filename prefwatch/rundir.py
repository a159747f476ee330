"""The run directory: the one place that knows its file names and formats.

A run directory is the contract between the launcher, the training jobs, the monitor and the user::

    runs/<grid>/
      grid.toml             the grid as launched (copied)
      launch.lock           held (flock) while a launcher starts or supervises cells
      cells/<cell-id>/
        cell.json           the fully resolved settings of this cell (written by the launcher)
        metrics.jsonl       one TRL log dict per line, plus "step" and "time" (written by the job)
        eval_pairs.jsonl    one line per evaluation: step, pair ids, chosen and rejected rewards
        data.json           statistics of the cell's data, measured by the job at start (brevity check)
        status.json         state, pid, pgid, host, times, exit code or signal (written atomically)
        stdout.log          the job's combined output

Only the job writes metrics.jsonl, eval_pairs.jsonl and data.json; only the jobs layer writes
status.json. The monitor and the report read; they never write into a cell.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

GRID_FILE = "grid.toml"
LOCK_FILE = "launch.lock"
CELLS_DIR = "cells"
CELL_FILE = "cell.json"
METRICS_FILE = "metrics.jsonl"
EVAL_PAIRS_FILE = "eval_pairs.jsonl"
DATA_FILE = "data.json"
STATUS_FILE = "status.json"
STDOUT_FILE = "stdout.log"
CHECKPOINTS_DIR = "checkpoints"


def is_grid_dir(path: Path) -> bool:
    return (path / CELLS_DIR).is_dir()


def is_cell_dir(path: Path) -> bool:
    return (path / CELL_FILE).is_file() or (path / METRICS_FILE).is_file()


def cell_dirs(grid_dir: Path) -> list[Path]:
    """Cell folders of a grid, in launch order (the order cell.json gives, else by name)."""
    root = grid_dir / CELLS_DIR
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir()]

    def order(p: Path) -> tuple[int, str]:
        cell = read_json(p / CELL_FILE) or {}
        index = cell.get("index")
        return (index if isinstance(index, int) else 1 << 30, p.name)

    return sorted(dirs, key=order)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from disk, or None when the file is missing, partial or not an object."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write a temporary file beside the target, then rename: readers see the old or the new file, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
