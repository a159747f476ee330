"""A cell's settings: cell.json with every missing key filled from the defaults below.

The launcher writes fully resolved cells; the defaults let tests and users hand-write minimal ones.
This module imports only the standard library: the entry point reads the cell before importing torch,
so that thread settings take effect.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

OBJECTIVES = ("dpo", "simpo", "orpo")
DTYPES = ("auto", "bf16", "fp16", "fp32")

DEFAULTS: dict[str, Any] = {
    "id": None,  # the cell folder's name when missing
    "index": 0,
    "grid": None,
    "objective": "dpo",
    "rank": 16,
    "seed": 0,
    "model": {"name": "tiny", "dtype": "auto"},
    # name: tiny-sales, a JSONL file or a datasets id (split: which of its splits); heldout: fraction or JSONL file
    "data": {"name": "tiny-sales", "split": "train", "heldout": 0.2, "max_length": 128, "seed": 1234},
    "train": {
        "max_steps": 100,
        "learning_rate": 5e-4,
        "batch_size": 8,
        "eval_batch_size": 10,  # divides the 100 held-out pairs: batch-mean accuracies then equal the pair mean
        "grad_accum": 1,
        "eval_every": 10,
        "log_every": 1,
        "save_every": 50,
        "lr_scheduler": "constant",
        "warmup_steps": 0,
    },
    "objective_params": {},  # filled per objective from OBJECTIVE_DEFAULTS
    "lora": {"alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "threads": 1,
}

# The values the tiny demo was measured with (SimPO: gamma/beta = 0.5, as in the paper); starting points elsewhere.
OBJECTIVE_DEFAULTS: dict[str, dict[str, float]] = {
    "dpo": {"beta": 0.1},
    "simpo": {"beta": 2.0, "gamma": 1.0},
    "orpo": {"beta": 0.1},
}


class CellError(ValueError):
    """cell.json cannot be used; the message is one line that names the file and the key."""


def load_cell(path: str | Path) -> dict[str, Any]:
    """Read cell.json and fill in defaults; the cell directory is the file's folder."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CellError(f"{path}: cannot read ({e})") from None
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
