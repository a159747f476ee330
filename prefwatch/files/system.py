"""What the machine is doing for a cell: its process's CPU and memory, and its GPUs' load and memory.

The training job records a sample every ``INTERVAL`` seconds to the cell's ``system.jsonl``
(``Recorder``, a daemon thread), so a cell on a Slurm node has it like a local one and replay
shows it. The monitor, ``status`` and the findings read the file (``SystemLog``); nobody samples
another machine's processes.

CPU and memory come from psutil; GPU utilisation and memory from NVML (``nvidia-ml-py``, optional:
without it, or without a driver or a GPU, the samples carry no GPUs and the line shows none).
The GPUs of a cell are those CUDA_VISIBLE_DEVICES names (indices or UUIDs), else those NVML finds
this process on.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from prefwatch.files import safe
from prefwatch.files.rundir import SYSTEM_FILE as SYSTEM_FILE

INTERVAL = 10.0
# A GPU is worth a warning when it stays so for this long while its cell runs.
GPU_MEMORY_HIGH = 95.0  # percent of its memory used
GPU_UTIL_LOW = 10.0  # percent utilisation
GPU_WARN_SECONDS = 180.0


class GpuSample(msgspec.Struct, frozen=True):
    index: int
    util: float  # percent of the last sample period a kernel ran
    mem_used: int  # bytes
    mem_total: int

    @property
    def mem_percent(self) -> float:
        return 100.0 * self.mem_used / self.mem_total if self.mem_total else math.nan


class SystemSample(msgspec.Struct, frozen=True):
    time: float
    pid: int
    cpu: float  # percent of one core, since the previous sample (psutil's cpu_percent)
    rss: int  # resident memory, bytes
    gpus: tuple[GpuSample, ...] = ()
    host: str = ""  # the machine the job runs on (Slurm cells run elsewhere)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SystemSample)


# ---- sampling (in the training job) ---------------------------------------------------------------


def load_nvml() -> ModuleType | None:
    """pynvml, initialised; None without the package, a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded...: no GPU to report
        return None
    return pynvml


def cell_gpus(nvml: ModuleType, pid: int, visible: str | None) -> list[int]:
    """NVML indices of the GPUs a cell holds: CUDA_VISIBLE_DEVICES's, else those running ``pid``."""
    try:
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception:
        return []
    if visible is not None:
        uuids = {_text(nvml.nvmlDeviceGetUUID(h)): i for i, h in enumerate(handles)}
        chosen = []
        for part in (p.strip() for p in visible.split(",") if p.strip()):
            if part.isdigit() and int(part) < count:
                chosen.append(int(part))
            elif any(u.startswith(part) for u in uuids):
                chosen.append(next(i for u, i in uuids.items() if u.startswith(part)))
        return chosen
    held = []
    for index, handle in enumerate(handles):
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:
            continue
        if any(p.pid == pid for p in processes):
            held.append(index)
    return held


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_samples(nvml: ModuleType | None, indices: Iterable[int]) -> tuple[GpuSample, ...]:
    if nvml is None:
        return ()
    out = []
    for index in indices:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:
            continue
        out.append(GpuSample(index, float(util.gpu), int(memory.used), int(memory.total)))
    return tuple(out)


class Recorder:
    """Appends a sample of this process (and its GPUs) to ``system.jsonl`` every ``interval`` seconds.

    A daemon thread: it never keeps a finished job alive. The first sample comes at once (psutil's
    CPU percent then counts from the process's start), the last when the recorder stops.
    """

    def __init__(self, path: Path, interval: float = INTERVAL, pid: int | None = None) -> None:
        import psutil

        self.path = path
        self.interval = interval
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prefwatch-system", daemon=True)
        self._nvml = load_nvml()
        self._gpus: list[int] | None = None

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def sample(self) -> SystemSample:
        with self._process.oneshot():
            cpu = self._process.cpu_percent()
            rss = self._process.memory_info().rss
        if self._nvml is not None and not self._gpus:  # the job may open its GPU after the first sample
            self._gpus = cell_gpus(self._nvml, self._process.pid, os.environ.get("CUDA_VISIBLE_DEVICES"))
        gpus = gpu_samples(self._nvml, self._gpus or [])
        return SystemSample(time.time(), self._process.pid, cpu, rss, gpus, socket.gethostname())

    def _run(self) -> None:
        self._process.cpu_percent()  # starts psutil's CPU clock
        while True:
            stopping = self._stop.wait(min(self.interval, 1.0) if not self.path.exists() else self.interval)
            try:
                line = _encoder.encode(self.sample()) + b"\n"
                with safe.open_append(self.path) as f:  # one write per line: a reader never sees half of one
                    f.write(line)
            except Exception:  # the process or a GPU went away: a lost sample, never a failed job
                pass
            if stopping:
                return


# ---- reading (monitor, status, findings) -----------------------------------------------------------


def decode(record: Any) -> SystemSample | None:
    """A sample from a decoded JSON line, or None when it is not one."""
    try:
        return msgspec.convert(record, SystemSample)
    except (msgspec.ValidationError, TypeError):
        return None


@dataclass
class SystemLog:
    """A cell's samples, oldest first."""

    samples: list[SystemSample] = field(default_factory=list)

    def add(self, record: Any) -> bool:
        sample = decode(record)
        if sample is None:
            return False
        self.samples.append(sample)
        return True

    def until(self, moment: float) -> SystemLog:
        """The samples taken at or before ``moment`` (replay)."""
        return SystemLog([s for s in self.samples if s.time <= moment])

    @property
    def last(self) -> SystemSample | None:
        return self.samples[-1] if self.samples else None


def system_line(sample: SystemSample | None) -> str | None:
    """``cpu 98% 412M  gpu0 87% 30.1/80.0G`` for one sample; None without one."""
    if sample is None:
        return None
    parts = [f"cpu {sample.cpu:.0f}% {_size(sample.rss)}"]
    for gpu in sample.gpus:
        parts.append(f"gpu{gpu.index} {gpu.util:.0f}% {gpu.mem_used / 2**30:.1f}/{gpu.mem_total / 2**30:.1f}G")
    return "  ".join(parts)


def machine_lines(samples: Iterable[SystemSample]) -> list[str]:
    """One line per machine over its running cells' last samples: ``vm: 2 cells cpu 196% 1.2G  gpu0 …``
    (CPU and memory summed over the cells; each GPU once, at its newest sample)."""
    hosts: dict[str, list[SystemSample]] = {}
    for sample in samples:
        hosts.setdefault(sample.host or "?", []).append(sample)
    lines = []
    for host, group in sorted(hosts.items()):
        newest: dict[int, tuple[float, GpuSample]] = {}
        for sample in group:
            for gpu in sample.gpus:
                if gpu.index not in newest or sample.time >= newest[gpu.index][0]:
                    newest[gpu.index] = (sample.time, gpu)
        gpus = tuple(gpu for _, gpu in sorted(newest.values(), key=lambda pair: pair[1].index))
        total = SystemSample(0.0, 0, sum(s.cpu for s in group), sum(s.rss for s in group), gpus)
        cells = "1 cell" if len(group) == 1 else f"{len(group)} cells"
        lines.append(f"{host}: {cells} {system_line(total)}")
    return lines


def _size(size: int) -> str:
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{size}B"


@dataclass(frozen=True)
class GpuWarning:
    kind: str  # gpu_memory, gpu_idle
    message: str


def gpu_warnings(log: SystemLog, running: bool, seconds: float = GPU_WARN_SECONDS) -> list[GpuWarning]:
    """GPUs that sat above GPU_MEMORY_HIGH % memory, or below GPU_UTIL_LOW % utilisation, in every
    sample of the last ``seconds`` (and at least that long) while the cell runs."""
    last = log.last
    if not running or last is None or not last.gpus:
        return []
    window = [s for s in log.samples if s.time >= last.time - seconds]
    if last.time - window[0].time < seconds * 0.9 or len(window) < 3:
        return []  # not minutes of samples yet
    minutes = f"{(last.time - window[0].time) / 60:.0f} min"
    out = []
    for gpu in last.gpus:
        history = [g for s in window for g in s.gpus if g.index == gpu.index]
        if len(history) < len(window):
            continue
        if all(g.mem_percent > GPU_MEMORY_HIGH for g in history):
            out.append(GpuWarning("gpu_memory", f"gpu{gpu.index} memory above {GPU_MEMORY_HIGH:.0f}% for {minutes}"))
        if all(g.util < GPU_UTIL_LOW for g in history):
            out.append(
                GpuWarning("gpu_idle", f"gpu{gpu.index} busy under {GPU_UTIL_LOW:.0f}% of the time for {minutes}")
            )
    return out
