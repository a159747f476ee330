"""The machine's NVIDIA GPUs, read from nvidia-smi: no torch import on the CLI's or the supervisor's path."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    free_mib: int
    capability: float  # compute capability: bf16 needs 8.0 or newer


def detect_gpus() -> list[Gpu]:
    """Every GPU nvidia-smi lists (none where there is no nvidia-smi or it fails)."""
    if not shutil.which("nvidia-smi"):
        return []
    query = "index,name,memory.free,compute_cap"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(parts[2]), float(parts[3])))
        except (IndexError, ValueError):
            continue
    return gpus
