"""``prefwatch init``: write a commented grid.toml that fits the machine it runs on.

The machine is read without importing torch: nvidia-smi gives each GPU's name, free memory and
compute capability (bf16 needs 8.0 or newer). Without a GPU, or with nothing named, the grid uses the
embedded defaults that train on the CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefwatch.gpus import Gpu, detect_gpus
from prefwatch.grid import EMBEDDED_DATA, EMBEDDED_MODEL


def batch_size_for(free_mib: int, cells_per_gpu: int) -> int:
    """A per-device batch for a ~0.5–1B model with LoRA at 1k tokens: about 6 GiB per pair of sequences."""
    per_cell = free_mib / cells_per_gpu / 1024
    return max(1, min(16, int(per_cell // 6)))


def render(model: str | None, data: str | None, name: str, gpus: list[Gpu]) -> str:
    embedded = model in (None, EMBEDDED_MODEL)
    model = model or EMBEDDED_MODEL
    data = data or EMBEDDED_DATA
    if gpus and not embedded:
        free = min(g.free_mib for g in gpus)
        cells_per_gpu = 2 if free >= 40 * 1024 else 1
        batch = batch_size_for(free, cells_per_gpu)
        dtype = "bf16" if all(g.capability >= 8.0 for g in gpus) else "fp16"
        machine = ", ".join(f"{g.name} ({g.free_mib // 1024} GiB free)" for g in gpus)
        train = dict(
            max_steps=1000,
            learning_rate="5e-6",
            batch_size=batch,
            grad_accum=max(1, 16 // batch),
            eval_every=50,
            log_every=10,
            save_every=200,
            lr_scheduler='"cosine"',
            warmup_steps=50,
        )
        max_length, heldout = 1024, 0.1
    else:
        cells_per_gpu, dtype = 1, "auto"
        machine = ", ".join(g.name for g in gpus) if gpus else "no GPU: cells train on the CPU, one per core"
        train = dict(
            max_steps=100,
            learning_rate="5e-4",
            batch_size=8,
            grad_accum=1,
            eval_every=10,
            log_every=1,
            save_every=50,
            lr_scheduler='"constant"',
            warmup_steps=0,
        )
        max_length, heldout = 128, 0.2
    train_lines = "\n".join(f"{k} = {v}" for k, v in train.items())
    return f"""# Written by `prefwatch init` for: {machine}
# Check it with `prefwatch launch {{this file}} --check`, then launch it.
name = "{name}"

[model]
name = "{model}"    # "tiny" (embedded), a Hugging Face id or a local path
dtype = "{dtype}"    # auto: bf16 on GPUs that support it, else fp32

[data]
name = "{data}"    # "tiny-sales" (embedded), a JSONL file (prompt/chosen/rejected) or a data set id
heldout = {heldout}    # held-out share, or a JSONL file; every cell is judged on the same held-out pairs
max_length = {max_length}

[train]
{train_lines}
seeds = [0]    # add seeds to see whether a difference is larger than the spread across runs

[grid]
objectives = ["dpo", "simpo"]
ranks = [16, 8]

[objectives.dpo]
beta = 0.1

[objectives.simpo]
beta = 2.0     # SimPO's reward is beta x the mean token log-prob: its beta is larger than DPO's
gamma = 0.5    # target margin

[lora]
alpha = 32
dropout = {0.05 if not embedded else 0.0}

[resources]
devices = "auto"
cells_per_device = {cells_per_gpu}
"""


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
