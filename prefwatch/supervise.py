"""The grid supervisor: ``python -m prefwatch.supervise RUN_DIR [--resume]``.

Started detached by ``prefwatch launch``. It holds launch.lock (an flock, released by the kernel
when the supervisor dies, so it can never go stale), starts cells as slots free up, and writes
each cell's status.json atomically when the cell starts and when it ends. A cell's own process
group is the unit of stopping; the supervisor is outside it and survives the stop to record it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prefwatch import rundir
from prefwatch.gpus import detect_gpus
from prefwatch.jobs import (
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    STOP_REQUEST,
    STOPPED,
    process_start_time,
    spawn_detached,
)

POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Slot:
    """Where a cell runs: a GPU index, or None for the CPU."""

    gpu: int | None


@dataclass
class Running:
    cell_dir: Path
    process: subprocess.Popen[bytes]
    slot: Slot
    status: dict[str, Any]


def plan_slots(resources: dict[str, Any]) -> list[Slot]:
    """Slots from [resources]: cells_per_device on each visible GPU, else one per core's worth of threads."""
    devices = resources.get("devices", "auto")
    gpus = visible_gpus() if devices == "auto" else ([] if devices == "cpu" else list(devices))
    if gpus:
        slots = [Slot(gpu) for gpu in gpus for _ in range(resources.get("cells_per_device", 1))]
    else:
        threads = max(1, resources.get("threads_per_cell", 1))
        slots = [Slot(None)] * max(1, (os.cpu_count() or 1) // threads)
    limit = resources.get("max_parallel", 0)
    return slots[:limit] if limit else slots


def visible_gpus() -> list[int]:
    """GPU indices this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(v) for v in visible.split(",") if v.strip().isdigit()]
    return [gpu.index for gpu in detect_gpus()]


def cell_environment(cell: dict[str, Any], slot: Slot) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(cell.get("threads", 1))
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="" if slot.gpu is None else str(slot.gpu),
    )
    if cell.get("model", {}).get("name") == "tiny":
        env["HF_HUB_OFFLINE"] = "1"
    return env


class Supervisor:
    def __init__(self, run_dir: Path, resume: bool, log: TextIO) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.log = log
        resources = rundir.read_json(run_dir / "resources.json") or {}
        self.free = plan_slots(resources)
        self.running: list[Running] = []
        self.host = socket.gethostname()

    def say(self, message: str) -> None:
        self.log.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        self.log.flush()

    def run(self) -> int:
        self.say(f"supervising {self.run_dir} with {len(self.free)} slot(s)")
        while True:
            self.reap()
            waiting = self.waiting_cells()
            while waiting and self.free:
                self.start(waiting.pop(0), self.free.pop(0))
            if not waiting and not self.running:
                self.say("all cells ended")
                return 0
            time.sleep(POLL_SECONDS)

    def waiting_cells(self) -> list[Path]:
        waiting = []
        for cell_dir in rundir.cell_dirs(self.run_dir):
            status = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
            if status.get("state", QUEUED) != QUEUED:
                continue
            if (cell_dir / STOP_REQUEST).exists():
                self.write_status(cell_dir, {**status, "state": STOPPED, "end_time": time.time()})
                continue
            waiting.append(cell_dir)
        return waiting

    def command(self, cell_dir: Path) -> list[str]:
        """The cell's training job, as an argument list: nothing from the grid file reaches a shell.

        A cell queued again after a run of its own (restart, resume) continues from its checkpoint."""
        command = [sys.executable, "-m", "prefwatch.train", str(cell_dir / rundir.CELL_FILE)]
        status = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
        return command + ["--resume"] if self.resume or "previous" in status else command

    def start(self, cell_dir: Path, slot: Slot) -> None:
        cell = rundir.read_json(cell_dir / rundir.CELL_FILE) or {}
        command = self.command(cell_dir)
        process = spawn_detached(command, cell_dir / rundir.STDOUT_FILE, cell_dir, cell_environment(cell, slot))
        status = {
            "state": RUNNING,
            "pid": process.pid,
            "pgid": process.pid,
            "pid_start": process_start_time(process.pid),
            "host": self.host,
            "device": "cpu" if slot.gpu is None else f"cuda:{slot.gpu}",
            "start_time": time.time(),
            "command": command,
        }
        self.write_status(cell_dir, status)
        self.running.append(Running(cell_dir, process, slot, status))
        self.say(f"started {cell_dir.name} (pid {process.pid}, {status['device']})")

    def reap(self) -> None:
        for job in list(self.running):
            code = job.process.poll()
            if code is None:
                continue
            self.running.remove(job)
            self.free.append(job.slot)
            self.write_status(job.cell_dir, self.outcome(job, code))
            self.say(f"{job.cell_dir.name} ended with {code}")

    def outcome(self, job: Running, code: int) -> dict[str, Any]:
        status = {**job.status, "end_time": time.time()}
        if code < 0:
            status["signal"] = -code
        else:
            status["exit_code"] = code
        if (job.cell_dir / STOP_REQUEST).exists():
            status["state"] = STOPPED
        else:
            status["state"] = FINISHED if code == 0 else FAILED
        return status

    def write_status(self, cell_dir: Path, status: dict[str, Any]) -> None:
        rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)

    def stop_all(self, signum: int, _frame: Any) -> None:
        """SIGTERM to the supervisor stops the grid: every cell is asked to stop, then recorded."""
        self.say(f"signal {signum}: stopping every cell")
        for cell_dir in rundir.cell_dirs(self.run_dir):
            (cell_dir / STOP_REQUEST).touch()
        for job in self.running:
            try:
                os.killpg(job.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def hold_lock(run_dir: Path) -> TextIO | None:
    """Take launch.lock; None when another live supervisor holds it."""
    handle = open(run_dir / rundir.LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    pid = os.getpid()
    json.dump({"pid": pid, "pid_start": process_start_time(pid), "host": socket.gethostname()}, handle)
    handle.flush()
    return handle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefwatch.supervise")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lock = hold_lock(args.run_dir)
    if lock is None:
        print(f"{args.run_dir}: another supervisor is running", file=sys.stderr)
        return 2
    supervisor = Supervisor(args.run_dir, args.resume, sys.stdout)
    signal.signal(signal.SIGTERM, supervisor.stop_all)
    try:
        return supervisor.run()
    finally:
        lock.close()


if __name__ == "__main__":
    raise SystemExit(main())
