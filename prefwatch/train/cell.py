"""A cell's settings: cell.json with every missing key filled from the defaults below.

The launcher writes fully resolved cells; the defaults let tests and users hand-write minimal ones.
This module imports only the standard library and prefwatch.files.grid (which declares the defaults): the
entry point reads the cell before importing torch, so that thread settings take effect.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from prefwatch.files import safe
from prefwatch.files.grid import OBJECTIVES, cell_defaults, objective_defaults

DTYPES = ("auto", "bf16", "fp16", "fp32")

# The defaults come from the grid's settings tables (one place): a hand-written cell means what a grid
# file that sets nothing means.
DEFAULTS: dict[str, Any] = cell_defaults()
OBJECTIVE_DEFAULTS: dict[str, dict[str, float]] = objective_defaults()


class CellError(ValueError):
    """cell.json cannot be used; the message is one line that names the file and the key."""


def load_cell(path: str | Path) -> dict[str, Any]:
    """Read cell.json and fill in defaults; the cell directory is the file's folder."""
    path = Path(path)
    try:
        raw = json.loads(safe.read_bytes(path))
    except (OSError, ValueError, RecursionError) as e:
        raise CellError(f"{path}: cannot read ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise CellError(f"{path}: not a JSON object")
    return resolve_cell(raw, path)


def resolve_cell(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    cell = _merged(DEFAULTS, raw)
    cell["id"] = cell["id"] or path.parent.name
    objective = cell["objective"]
    if objective not in OBJECTIVES:
        raise CellError(f"{path}: objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    cell["objective_params"] = OBJECTIVE_DEFAULTS[objective] | cell["objective_params"]
    if cell["model"]["dtype"] not in DTYPES:
        raise CellError(f"{path}: model.dtype {cell['model']['dtype']!r} is not one of {', '.join(DTYPES)}")
    return cell


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given values, one level of nesting deep (sections merge key by key)."""
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = merged[key] | value
        else:
            merged[key] = value
    return merged
