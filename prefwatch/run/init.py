"""``prefwatch init``: write a commented grid.toml that fits the machine it runs on.

The machine is read without importing torch: nvidia-smi gives each GPU's name, free memory and
compute capability (bf16 needs 8.0 or newer). Without a GPU, or with nothing named, the grid uses the
embedded defaults that train on the CPU. Keys, defaults and comments come from the grid's settings
tables (prefwatch.files.settings), so a file ``init`` writes always says what the validator reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from msgspec.structs import replace

from prefwatch.files.settings import (
    EMBEDDED_DATA,
    EMBEDDED_MODEL,
    DataSettings,
    ModelSettings,
    ObjectiveTables,
    Settings,
    SimpoParams,
    docs,
)
from prefwatch.run.gpus import Gpu, detect_gpus


def batch_size_for(free_mib: int, cells_per_gpu: int) -> int:
    """A per-device batch for a ~0.5–1B model with LoRA at 1k tokens: about 6 GiB per pair of sequences."""
    per_cell = free_mib / cells_per_gpu / 1024
    return max(1, min(16, int(per_cell // 6)))


# What init writes of each table (the rest keeps its default and stays out of the file).
SHOWN: dict[str, tuple[str, ...]] = {
    "model": ("name", "dtype"),
    "data": ("name", "heldout", "max_length"),
    "train": (
        "max_steps",
        "learning_rate",
        "batch_size",
        "grad_accum",
        "eval_every",
        "log_every",
        "save_every",
        "lr_scheduler",
        "warmup_steps",
        "seeds",
    ),
    "grid": ("objectives", "ranks"),
    "objectives.dpo": ("beta",),
    "objectives.simpo": ("beta", "gamma"),
    "lora": ("alpha", "dropout"),
    "resources": ("devices", "cells_per_device"),
    "policy": ("stop_on", "patience"),
}


def choices(model: str | None, data: str | None, gpus: list[Gpu]) -> Settings:
    """The grid this machine gets: the defaults, with a real schedule for a real model on GPUs."""
    chosen = Settings(
        model=ModelSettings(name=model or EMBEDDED_MODEL),
        data=DataSettings(name=data or EMBEDDED_DATA),
        objectives=ObjectiveTables(simpo=SimpoParams(gamma=0.5)),
    )
    if not gpus or model in (None, EMBEDDED_MODEL):
        return chosen
    free = min(g.free_mib for g in gpus)
    cells_per_gpu = 2 if free >= 40 * 1024 else 1
    batch = batch_size_for(free, cells_per_gpu)
    chosen.model.dtype = "bf16" if all(g.capability >= 8.0 for g in gpus) else "fp16"
    chosen.data.heldout, chosen.data.max_length = 0.1, 1024
    chosen.train = replace(
        chosen.train,
        max_steps=1000,
        learning_rate=5e-6,
        batch_size=batch,
        grad_accum=max(1, 16 // batch),
        eval_every=50,
        log_every=10,
        save_every=200,
        lr_scheduler="cosine",
        warmup_steps=50,
    )
    chosen.lora.dropout = 0.05
    chosen.resources.cells_per_device = cells_per_gpu
    return chosen


def render(model: str | None, data: str | None, name: str, gpus: list[Gpu]) -> str:
    """The grid file, table by table from the grid's settings: this machine's choices and each key's own
    comment."""
    embedded = model in (None, EMBEDDED_MODEL)
    if gpus and not embedded:
        machine = ", ".join(f"{g.name} ({g.free_mib // 1024} GiB free)" for g in gpus)
    else:
        machine = ", ".join(g.name for g in gpus) if gpus else "no GPU: cells train on the CPU, one per core"
    chosen = choices(model, data, gpus)
    lines = [
        f"# Written by `prefwatch init` for: {machine}",
        "# Check it with `prefwatch launch {this file} --check`, then launch it.",
        f"name = {_toml(name)}",
    ]
    for table, keys in SHOWN.items():
        values = (
            chosen.objectives.of(table.split(".")[1]) if table.startswith("objectives.") else getattr(chosen, table)
        )
        doc = (type(values).__doc__ or "").split(": ", 1)
        comments = docs(type(values))
        lines += ["", f"[{table}]" + (f"    # {doc[1]}" if len(doc) == 2 else "")]
        for key in keys:
            comment = f"    # {comments[key]}" if comments[key] else ""
            lines.append(f"{key} = {_toml(getattr(values, key))}{comment}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    """A TOML value: strings quoted with escapes (JSON's form is valid TOML), numbers and lists as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def default_name(model: str | None) -> str:
    if model in (None, EMBEDDED_MODEL):
        return "tiny-demo"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", str(model).rstrip("/").split("/")[-1]).strip("-.")
    return f"{stem or 'grid'}-prefs"


def write_grid(path: Path, model: str | None, data: str | None, name: str | None) -> str:
    """Write the grid file (never over an existing one) and return its text."""
    text = render(model, data, name or default_name(model), detect_gpus())
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)
    return text
