"""Where a cell's job runs: one launch spec, two backends, chosen once per grid.

Both backends run the same job, built here and nowhere else (``launch_spec``): the argument list
``python -m prefwatch.run.job CELL.json [--resume] [--gpus N]`` and the environment set on top of the
launcher's. The job (prefwatch.run.job) records its own start and exit in status.json, whichever backend
started it.

  LocalBackend   the grid's supervisor (prefwatch.act.supervise) starts each job in a session and process
                 group of its own; its state comes from the process table, and stopping signals the
                 job's group once the job is proven to be the cell's (``prove_job``).
  SlurmBackend   each job is one sbatch script (prefwatch.run.slurm); its state comes from squeue / sacct,
                 and stopping is scancel.

``prefwatch.run.jobs.backend_for(run_dir)`` is the one choice, made from resources.json (written at launch).
This module never imports torch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from msgspec.structs import replace

from prefwatch.files import rundir, safe
from prefwatch.files.rundir import CellState, CellStatus, StatusRecord
from prefwatch.files.settings import EMBEDDED_DATA_SETS, EMBEDDED_MODEL, CellSettings

STOP_GRACE_SECONDS = 10.0


# ---------------------------------------------------------------------------------------------
# The launch spec


@dataclass(frozen=True)
class LaunchSpec:
    """One cell's job: what runs, with which environment (added to the launcher's), on which device."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # "cpu", "cuda:0"; None where the scheduler decides (Slurm)


def train_command(cell_json: Path, gpus: int = 0, resume: bool = False, python: str = sys.executable) -> list[str]:
    """The trainer the job runs, as an argument list; several GPUs: one process each under torchrun."""
    job = ["-m", "prefwatch.train", str(cell_json)] + (["--resume"] if resume else [])
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *job]
    return [python, *job]


def job_environment(cell: CellSettings) -> dict[str, str]:
    """What every job of this cell needs in its environment, whichever backend starts it: thread counts
    (torch reads them at import) and no Hugging Face hub access when model and data are embedded or local."""
    threads = str(cell.threads)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    data_name = cell.data.name
    if cell.model.name == EMBEDDED_MODEL and (data_name in EMBEDDED_DATA_SETS or Path(data_name).is_file()):
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def launch_spec(
    cell_dir: Path,
    resume: bool,
    gpus: int = 0,
    gpu_index: int | None = None,
    scheduler_places_gpus: bool = False,
    python: str = sys.executable,
) -> LaunchSpec:
    """The job of one cell. ``gpu_index``: the local slot's GPU (None: the CPU). ``scheduler_places_gpus``:
    Slurm sets CUDA_VISIBLE_DEVICES for a job that asked for GPUs; a CPU job must see none."""
    cell_dir = cell_dir.resolve()  # the command line names the absolute cell.json: stop checks it
    cell = cell_settings(cell_dir)
    argv = [python, "-m", "prefwatch.run.job", str(cell_dir / rundir.CELL_FILE)]
    argv += (["--resume"] if resume else []) + ([f"--gpus={gpus}"] if gpus > 1 else [])
    env = job_environment(cell)
    if not (scheduler_places_gpus and gpus > 0):
        env["CUDA_VISIBLE_DEVICES"] = "" if gpu_index is None else str(gpu_index)
    device = None if scheduler_places_gpus else ("cpu" if gpu_index is None else f"cuda:{gpu_index}")
    return LaunchSpec(argv, env, device)


def cell_settings(cell_dir: Path) -> CellSettings:
    """The cell's settings; the defaults where cell.json cannot be read (the trainer then says why)."""
    try:
        return rundir.read_cell(cell_dir).settings
    except rundir.RecordError:
        return CellSettings()


# ---------------------------------------------------------------------------------------------
# Proving a process is a cell's job


def process_start_time(pid: int) -> float | None:
    """The kernel's start time of a process (clock ticks since boot), or None when it does not exist.

    A pid alone is not an identity: pids are reused. pid plus start time is.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if not fields or fields[0] == b"Z" or len(fields) < 20:
        return None
    return float(fields[19])


def process_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_alive(pid: Any, start: Any) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs (a live zombie does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    now = process_start_time(pid)
    return now is not None and (start is None or now == start)


def prove_job(cell_dir: Path, record: StatusRecord) -> str | None:
    """None when ``record`` names a live job that is provably this cell's, else why not (one phrase).

    The proof: on this host; its own process group's leader (pgid == pid) above 1 and not this
    process's group; its start time as recorded; its command line naming this cell's cell.json.
    Only a proven job is ever signalled or followed.
    """
    pid, pgid = record.pid, record.pgid
    if record.host not in (None, socket.gethostname()):
        return f"it runs on {record.host}"
    if pid is None or pgid is None or record.pid_start is None:
        return "no pid, pgid and start time recorded"
    if pgid != pid:
        return f"pgid {pgid} is not its pid {pid}"
    if pgid <= 1:
        return f"pgid {pgid} is not a job's"
    if pgid == os.getpgrp() or pid == os.getpid():
        return f"pgid {pgid} is prefwatch's own"
    started = process_start_time(pid)
    if started is None:
        return f"no process {pid} runs"
    if started != record.pid_start:
        return f"process {pid} started at another time (a reused pid)"
    cell_json = str((cell_dir / rundir.CELL_FILE).resolve())
    if cell_json not in process_argv(pid):
        return f"process {pid} is not running {cell_json}"
    return None


def job_alive(cell_dir: Path, record: StatusRecord) -> bool:
    return prove_job(cell_dir, record) is None


# ---------------------------------------------------------------------------------------------
# The backends


class Backend(Protocol):
    """What the jobs layer needs of a place where cells run."""

    name: rundir.Backend

    def start(self, cell_dir: Path, spec: LaunchSpec) -> StatusRecord:
        """Start the cell's job; returns the record written for it."""
        ...

    def state(self, cell_dir: Path, record: StatusRecord, supervised: bool | None) -> CellStatus:
        """The cell's state now, from its record and what the backend says."""
        ...

    def cancel(self, cells: list[Path], grace: float) -> dict[Path, str]:
        """Stop these cells' jobs; returns one line per job it refused to touch."""
        ...

    def describe(self, status: CellStatus) -> str:
        """The state as a person reads it, with what the backend adds."""
        ...


def spawn_detached(argv: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in a session of its own (so a terminal's SIGHUP never reaches it), stdin closed,
    stdout and stderr appended to ``log``."""
    with safe.open_append(log) as out:  # supervisor.log, stdout.log: never through a planted link
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            env=env,
        )


class LocalBackend:
    """Jobs on this machine, each the leader of its own session and process group."""

    name = rundir.Backend.LOCAL

    def __init__(self) -> None:
        self.processes: dict[Path, subprocess.Popen[bytes]] = {}

    def start(self, cell_dir: Path, spec: LaunchSpec) -> StatusRecord:
        """Spawn the job and record it at once (the job records itself too, before it trains): a stop
        that reads the record after this sees a pid to signal; one before it, the job sees."""
        process = spawn_detached(spec.argv, cell_dir / rundir.STDOUT_FILE, cell_dir, {**os.environ, **spec.env})
        self.processes[cell_dir] = process
        started = StatusRecord(
            state=CellState.RUNNING,
            host=socket.gethostname(),
            pid=process.pid,
            pgid=process.pid,
            pid_start=process_start_time(process.pid),
            device=spec.device,
            command=spec.argv,
            start_time=time.time(),
        )

        def record(current: StatusRecord) -> StatusRecord | None:
            if current.state != CellState.QUEUED:  # the job recorded itself first (or ended already)
                return replace(current, device=spec.device, command=spec.argv) if current.pid == process.pid else None
            return replace(started, previous=current.previous)

        return rundir.update_status(cell_dir, record)

    def state(self, cell_dir: Path, record: StatusRecord, supervised: bool | None) -> CellStatus:
        same_host = record.host in (None, socket.gethostname())
        if record.state == CellState.RUNNING and same_host and not is_alive(record.pid, record.pid_start):
            # The job records its own end, and the supervisor within a fraction of a second; a job gone
            # while its status still says running had neither (killed with SIGKILL, its machine rebooted).
            if not supervised:
                return CellStatus(CellState.LOST, record)
        elif record.state == CellState.QUEUED and same_host and supervised is False:
            return CellStatus(CellState.LOST, record)
        return CellStatus(record.state, record)

    def cancel(self, cells: list[Path], grace: float) -> dict[Path, str]:
        """SIGTERM to each proven job's process group, then SIGKILL to those still alive after ``grace``."""
        refused: dict[Path, str] = {}
        proven = []
        for cell_dir in cells:
            try:
                record = rundir.read_status(cell_dir)
            except rundir.RecordError:
                continue  # nothing in it can name a job to signal
            if record.state != CellState.RUNNING:
                continue
            why = prove_job(cell_dir, record)
            if why is None:
                proven.append(record)
            elif is_alive(record.pid, None) or record.pgid != record.pid:  # not just a job that ended
                refused[cell_dir] = f"{cell_dir.name}: nothing signalled: status.json names pgid {record.pgid} ({why})"
        for record in proven:
            signal_job(record, signal.SIGTERM)
        _wait_gone(proven, time.monotonic() + grace)
        for record in proven:
            signal_job(record, signal.SIGKILL)
        _wait_gone(proven, time.monotonic() + 5.0)
        return refused

    def describe(self, status: CellStatus) -> str:
        return status.describe()


def _wait_gone(records: list[StatusRecord], deadline: float) -> None:
    while time.monotonic() < deadline and any(is_alive(r.pid, r.pid_start) for r in records):
        time.sleep(0.05)


def signal_job(record: StatusRecord, sig: signal.Signals) -> None:
    """Signal a proven job's process group. The cheap checks of prove_job are repeated here, at the one
    call of os.killpg, because a wrong pgid is fatal: 0 is prefwatch's own group, 1 (as -1) every process."""
    pgid = record.pgid
    if pgid is None or pgid <= 1 or pgid == os.getpgrp() or not is_alive(record.pid, record.pid_start):
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
