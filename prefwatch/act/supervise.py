"""The grid supervisor: ``python -m prefwatch.act.supervise RUN_DIR [--resume]``.

Started detached by ``prefwatch launch``. It holds launch.lock (an flock, released by the kernel
when the supervisor dies, so it can never go stale), follows the jobs still running from a supervisor
before it, and starts queued cells as slots free up (prefwatch.run.backend's launch spec). Each job records
its own start and end (prefwatch.run.job); the supervisor records an end only where the job could not
(killed with SIGKILL). A job's own process group is the unit of stopping; the supervisor is outside it.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from msgspec.structs import replace

from prefwatch.act.policy import watching
from prefwatch.files import rundir
from prefwatch.files.rundir import CellState, StatusRecord
from prefwatch.files.settings import ResourcesSettings
from prefwatch.run.backend import (
    LaunchSpec,
    LocalBackend,
    is_alive,
    job_alive,
    launch_spec,
    process_start_time,
    signal_job,
)
from prefwatch.run.gpus import detect_gpus

POLL_SECONDS = 0.2
# Errors of a full file system: the supervisor waits for space, it does not die of them.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# Lines said while the log could not be written, kept to be written when it can (the newest, at most).
PENDING_LINES = 1000


@dataclass(frozen=True)
class Slot:
    """Where a cell runs: a GPU index, or None for the CPU."""

    gpu: int | None


@dataclass
class Running:
    """A job the supervisor follows: one it started (``process``), or one it adopted (running before it)."""

    cell_dir: Path
    slot: Slot
    record: StatusRecord
    process: subprocess.Popen[bytes] | None = None


def plan_slots(resources: ResourcesSettings) -> list[Slot]:
    """Slots from [resources]: cells_per_device on each visible GPU, else one per core's worth of threads."""
    devices = resources.devices
    gpus = visible_gpus() if devices == "auto" else ([] if devices == "cpu" else [int(d) for d in devices])
    if gpus:
        slots = [Slot(gpu) for gpu in gpus for _ in range(resources.cells_per_device)]
    else:
        threads = max(1, resources.threads_per_cell)
        slots = [Slot(None)] * max(1, (os.cpu_count() or 1) // threads)
    limit = resources.max_parallel
    return slots[:limit] if limit else slots


def visible_gpus() -> list[int]:
    """GPU indices this process may use, without importing torch (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(v) for v in visible.split(",") if v.strip().isdigit()]
    return [gpu.index for gpu in detect_gpus()]


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Supervisor:
    def __init__(self, run_dir: Path, resume: bool, log: Writer, lock: BinaryIO | None = None) -> None:
        self.run_dir = run_dir
        self.resume = resume
        self.log = log
        self.lock = lock  # launch.lock while its record is still to be written (a full disk)
        self.free = plan_slots(rundir.read_resources(run_dir))
        self.running: list[Running] = []
        self.backend = LocalBackend()
        self.host = socket.gethostname()
        self.unsaid: list[str] = []
        self._saying = threading.Lock()
        self.disk_full: str | None = None  # what failed for want of space, while it lasts

    def say(self, message: str) -> None:
        """A line in supervisor.log; on a full disk it waits (in memory) and goes out with the next line said."""
        with self._saying:  # the alerts follower says things from its own thread
            self.unsaid = [*self.unsaid, f"{time.strftime('%H:%M:%S')} {message}\n"][-PENDING_LINES:]
            try:
                while self.unsaid:
                    self.log.write(self.unsaid[0])
                    self.log.flush()
                    self.unsaid.pop(0)
            except OSError:
                pass

    def run(self) -> int:
        self.say(f"supervising {self.run_dir} with {len(self.free)} slot(s)")
        self.adopt()
        while True:
            try:
                if self.step():
                    self.say("all cells ended")
                    return 0
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise
                self.out_of_space(f"{exc.filename or self.run_dir}: {exc.strerror}")
            time.sleep(POLL_SECONDS)

    def step(self) -> bool:
        """One look at the grid: reap, then start what waits while slots and space allow. True when all ended."""
        if self.lock is not None:
            write_lock_record(self.lock)
            self.lock = None
        self.reap()
        waiting = self.waiting_cells()
        if waiting and self.free and rundir.disk_full(self.run_dir):
            self.out_of_space(f"{len(waiting)} cell(s) wait for space in {self.run_dir}")
            return False
        while waiting and self.free:
            self.start(waiting.pop(0), self.free.pop(0))
        if self.disk_full is not None:
            self.say(f"space again: carrying on (disk full since: {self.disk_full})")
            self.disk_full = None
        return not waiting and not self.running

    def out_of_space(self, what: str) -> None:
        """Said once per spell of a full disk: the cells wait, nothing is lost, the supervisor carries on after."""
        if self.disk_full is None:
            self.disk_full = what
            self.say(f"disk full: {what}; waiting for space")

    def adopt(self) -> None:
        """Follow the jobs that still run from before this supervisor (its predecessor died): each keeps its
        slot, nothing starts a second copy, and the job records its own end."""
        for cell_dir in rundir.cell_dirs(self.run_dir):
            record = _record(cell_dir)
            if record is None or record.state != CellState.RUNNING or not job_alive(cell_dir, record):
                continue
            slot = next((s for s in self.free if record.device == ("cpu" if s.gpu is None else f"cuda:{s.gpu}")), None)
            slot = slot or (self.free[0] if self.free else Slot(None))
            if slot in self.free:
                self.free.remove(slot)
            self.running.append(Running(cell_dir, slot, record))
            self.say(f"following {cell_dir.name} (pid {record.pid}), still running from before")

    def waiting_cells(self) -> list[Path]:
        waiting = []
        following = {job.cell_dir for job in self.running}
        for cell_dir in rundir.cell_dirs(self.run_dir):
            record = _record(cell_dir)
            if record is None or record.state != CellState.QUEUED or cell_dir in following:
                continue
            if rundir.stop_requested(cell_dir):
                rundir.update_status(
                    cell_dir,
                    lambda r: (
                        replace(r, state=CellState.STOPPED, end_time=time.time())
                        if r.state == CellState.QUEUED
                        else None
                    ),
                )
                continue
            waiting.append(cell_dir)
        return waiting

    def start(self, cell_dir: Path, slot: Slot) -> None:
        """Start the cell's job; a cell queued again after a run of its own (restart, resume) resumes it."""
        record = _record(cell_dir)
        resume = self.resume or (record is not None and record.previous is not None)
        spec = self.spec(cell_dir, resume, slot)
        started = self.backend.start(cell_dir, spec)
        process = self.backend.processes.pop(cell_dir)
        self.running.append(Running(cell_dir, slot, started, process))
        self.say(f"started {cell_dir.name} (pid {process.pid}, {spec.device})")

    def spec(self, cell_dir: Path, resume: bool, slot: Slot) -> LaunchSpec:
        """The cell's job: the one launch spec both backends share."""
        return launch_spec(cell_dir, resume, gpu_index=slot.gpu)

    def reap(self) -> None:
        for job in list(self.running):
            if job.process is not None:
                code = job.process.poll()
                if code is None:
                    continue
            elif is_alive(job.record.pid, job.record.pid_start):
                continue
            else:
                code = None
            # Recorded first: on a full disk the write fails and the job stays followed, to be recorded later.
            final = rundir.update_status(job.cell_dir, functools.partial(self.outcome, job, code=code))
            self.running.remove(job)
            self.free.append(job.slot)
            self.say(f"{job.cell_dir.name} ended: {final.state}" + (f" ({code})" if code is not None else ""))

    def outcome(self, job: Running, record: StatusRecord, code: int | None) -> StatusRecord | None:
        """The end of a job that did not record it itself (killed with SIGKILL, or failed before recording)."""
        if record.ended or (record.pid not in (None, job.record.pid)):
            return None
        if rundir.stop_requested(job.cell_dir):
            state = CellState.STOPPED
        elif code is None:  # an adopted job: no exit status to be had
            state = CellState.LOST
        else:
            state = CellState.FINISHED if code == 0 else CellState.FAILED
        fields: dict[str, Any] = {"state": state, "end_time": time.time()}
        if code is not None and code < 0:
            fields["signal"] = -code
        elif code is not None:
            fields["exit_code"] = code
        return replace(record, **fields)

    def stop_all(self, signum: int, _frame: Any) -> None:
        """SIGTERM to the supervisor stops the grid: every cell is asked to stop; the jobs record their end."""
        self.say(f"signal {signum}: stopping every cell")
        for cell_dir in rundir.cell_dirs(self.run_dir):
            rundir.request_stop(cell_dir)
        for job in self.running:
            if job_alive(job.cell_dir, job.record):
                signal_job(job.record, signal.SIGTERM)


def _record(cell_dir: Path) -> StatusRecord | None:
    try:
        return rundir.read_status(cell_dir)
    except rundir.RecordError:
        return None


def hold_lock(run_dir: Path) -> BinaryIO | None:
    """Take launch.lock and write who holds it; None when another live supervisor holds it."""
    taken = take_lock(run_dir)
    if taken is not None and not taken[1]:
        write_lock_record(taken[0])  # raises what a full disk raised
    return taken[0] if taken is not None else None


def take_lock(run_dir: Path) -> tuple[BinaryIO, bool] | None:
    """launch.lock held, and whether its record (pid, start time, host) is written: on a full disk the lock
    is held all the same and the record written once there is room. None when another supervisor holds it."""
    handle = rundir.try_flock(run_dir / rundir.LOCK_FILE)
    if handle is None:
        return None
    try:
        write_lock_record(handle)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            handle.close()
            raise
        return handle, False
    return handle, True


def write_lock_record(handle: BinaryIO) -> None:
    handle.seek(0)
    handle.truncate()
    pid = os.getpid()
    handle.write(json.dumps({"pid": pid, "pid_start": process_start_time(pid), "host": socket.gethostname()}).encode())
    handle.flush()


class _Log:
    """supervisor.log, unbuffered: a write that fails (a full disk) has written nothing, so it can be said again."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        data = text.encode()
        while data:
            data = data[os.write(self.fd, data) :]
        return len(text)

    def flush(self) -> None:
        pass


def release_lock(handle: BinaryIO) -> None:
    """Give launch.lock up, its record naming no process first: from here this process is not the grid's
    supervisor (it may still deliver its last alerts), ``supervisor_alive`` says so (False), and a
    resume starts the next one at once. A SIGTERM now ends this process instead of stopping the cells
    of a grid that another supervisor may run by then."""
    if handle.closed:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": None, "host": socket.gethostname()}).encode())
        handle.flush()
    except OSError:
        pass  # the kernel releases the flock with the handle all the same
    handle.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefwatch.act.supervise")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        taken = take_lock(args.run_dir)
    except OSError as exc:  # a link, a pipe, ... in its place: one line naming it
        print(f"{args.run_dir}: the supervisor cannot start: {exc}", file=sys.stderr)
        return 2
    if taken is None:
        print(f"{args.run_dir}: another supervisor is running", file=sys.stderr)
        return 2
    lock, written = taken
    supervisor = Supervisor(args.run_dir, args.resume, _Log(sys.stdout.fileno()), lock=None if written else lock)
    signal.signal(signal.SIGTERM, supervisor.stop_all)
    try:
        # alerts and the stop policy (prefwatch.act.policy); the lock is given up before the last alerts go
        with watching(args.run_dir, supervisor.say, functools.partial(release_lock, lock)):
            return supervisor.run()
    finally:
        release_lock(lock)


if __name__ == "__main__":
    raise SystemExit(main())
