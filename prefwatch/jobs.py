"""Start, follow and stop the detached processes that train a grid's cells.

``launch`` writes the run directory and starts one supervisor per grid in a session of its own, so
closing the terminal or losing SSH stops nothing. The supervisor (prefwatch.supervise) starts the
cells as slots free up, each cell in its own session and process group, and records every outcome
in the cell's status.json. This module never imports torch: it runs in the CLI and the monitor.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefwatch import rundir
from prefwatch.grid import Grid

STOP_REQUEST = "stop.request"
SUPERVISOR_LOG = "supervisor.log"
STOP_GRACE_SECONDS = 10.0

QUEUED, RUNNING, FINISHED, FAILED, STOPPED, LOST = "queued", "running", "finished", "failed", "stopped", "lost"
ENDED_STATES = frozenset({FINISHED, FAILED, STOPPED, LOST})


class LaunchError(RuntimeError):
    """A launch that cannot go ahead; str() is the one-line message for the user."""


# ---------------------------------------------------------------------------------------------
# Launching


def create_run_dir(grid: Grid, out_root: Path) -> Path:
    """Write the run directory whole, or not at all: it is built beside its target, then renamed.

    The rename fails when the target exists, so a second launch can never overwrite a run.
    """
    target = out_root / grid.name
    if target.exists():
        raise LaunchError(f"{target}: the run directory exists already; use another name or --out")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{grid.name}.", dir=out_root))
    except OSError as exc:
        raise LaunchError(f"{out_root}: cannot create the run directory ({exc.strerror or exc})") from None
    try:
        shutil.copyfile(grid.path, staging / rundir.GRID_FILE)
        for cell in grid.cells:
            cell_dir = staging / rundir.CELLS_DIR / cell.id
            cell_dir.mkdir(parents=True)
            rundir.write_json_atomic(cell_dir / rundir.CELL_FILE, cell.to_json(grid.name))
            rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, {"state": QUEUED, "host": socket.gethostname()})
        rundir.write_json_atomic(staging / "resources.json", grid.settings["resources"])
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            raise LaunchError(f"{target}: the run directory exists already; use another name or --out") from None
        raise LaunchError(f"{out_root}: cannot write the run directory ({exc.strerror or exc})") from None
    return target


def start_supervisor(run_dir: Path, resume: bool = False, timeout: float = 15.0) -> int:
    """Start the grid's supervisor detached (its own session, stdin closed, output to supervisor.log),
    and return once it holds the run's lock: a supervisor that dies at start is an error here, not a
    grid of cells queued forever."""
    run_dir = run_dir.resolve()  # the supervisor runs in the run directory
    command = [sys.executable, "-m", "prefwatch.supervise", str(run_dir)]
    if resume:
        command.append("--resume")
    with open(run_dir / SUPERVISOR_LOG, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=run_dir,
        )
    deadline = time.monotonic() + timeout
    while not supervisor_alive(run_dir):
        if process.poll() is not None or time.monotonic() > deadline:
            lines = (run_dir / SUPERVISOR_LOG).read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit status {process.returncode}"
            raise LaunchError(f"{run_dir / SUPERVISOR_LOG}: the supervisor did not start: {reason}")
        time.sleep(0.02)
    return process.pid


def requeue_unfinished(run_dir: Path) -> list[str]:
    """Mark every cell that did not finish as queued again, for ``launch --resume``.

    The supervisor then restarts them with ``--resume``: from their last checkpoint where one
    exists, appending to their logs (the reader shows the resumed segment).
    """
    if not rundir.is_grid_dir(run_dir):
        raise LaunchError(f"{run_dir}: not a prefwatch run directory (no cells/ folder)")
    if supervisor_alive(run_dir):
        raise LaunchError(f"{run_dir}: its supervisor is still running; stop it first or attach")
    requeued = []
    for cell_dir in rundir.cell_dirs(run_dir):
        status = read_status(cell_dir, supervisor_alive=False)
        if status.state == FINISHED:
            continue
        (cell_dir / STOP_REQUEST).unlink(missing_ok=True)
        previous = {k: v for k, v in status.raw.items() if k != "previous"}
        rundir.write_json_atomic(
            cell_dir / rundir.STATUS_FILE, {"state": QUEUED, "host": socket.gethostname(), "previous": previous}
        )
        requeued.append(cell_dir.name)
    return requeued


# ---------------------------------------------------------------------------------------------
# Liveness


def process_start_time(pid: int) -> float | None:
    """The kernel's start time of a process (clock ticks since boot), or None when it does not exist.

    A pid alone is not an identity: pids are reused. pid plus start time is.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return _start_time_without_proc(pid)
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return float(fields[19])


def _start_time_without_proc(pid: int) -> float | None:
    if sys.platform.startswith("linux"):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0


def is_alive(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    now = process_start_time(pid)
    if now is None:
        return False
    return start is None or now == start


@dataclass(frozen=True)
class CellStatus:
    """A cell's status.json, with its state corrected by what the process table says now."""

    state: str
    raw: dict[str, Any]

    @property
    def exit_code(self) -> int | None:
        return self.raw.get("exit_code")

    @property
    def signal(self) -> int | None:
        return self.raw.get("signal")

    def describe(self) -> str:
        if self.state == FAILED and self.signal:
            return f"failed (signal {self.signal})"
        if self.state == FAILED and self.exit_code is not None:
            return f"failed (exit {self.exit_code})"
        return self.state


def read_status(cell_dir: Path, supervisor_alive: bool | None = None) -> CellStatus:
    raw = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
    state = raw.get("state", QUEUED)
    same_host = raw.get("host") in (None, socket.gethostname())
    if state == RUNNING and same_host and not is_alive(raw.get("pid"), raw.get("pid_start")):
        # The supervisor records the end within a fraction of a second; a job that is gone while
        # its status still says running had no supervisor to record it.
        if supervisor_alive is False or supervisor_alive is None and not _has_live_supervisor(cell_dir):
            state = LOST
    elif state == QUEUED and same_host and supervisor_alive is False:
        state = LOST
    return CellStatus(state, raw)


def supervisor_alive(run_dir: Path) -> bool | None:
    """Whether the grid's supervisor runs (None when this run directory has none, e.g. a user's TRL dir)."""
    lock = rundir.read_json(run_dir / rundir.LOCK_FILE)
    if lock is None:  # no supervisor ever, or one writing its lock this instant
        return None
    if lock.get("host") not in (None, socket.gethostname()):
        return None
    return is_alive(lock.get("pid"), lock.get("pid_start"))


def _has_live_supervisor(cell_dir: Path) -> bool:
    run_dir = cell_dir.parent.parent
    return bool(supervisor_alive(run_dir))


# ---------------------------------------------------------------------------------------------
# Stopping


def request_stop(run_dir: Path, cell_ids: list[str] | None = None, grace: float = STOP_GRACE_SECONDS) -> list[str]:
    """Stop cells: queued ones never start; running ones get SIGTERM to their process group, then SIGKILL.

    Returns the ids of the cells that were asked to stop. The supervisor records them as stopped;
    where there is no live supervisor, this function records it.
    """
    cells = {p.name: p for p in rundir.cell_dirs(run_dir)}
    unknown = [c for c in cell_ids or [] if c not in cells]
    if unknown:
        raise LaunchError(f"{run_dir}: no cell named {unknown[0]!r} (cells: {', '.join(cells)})")
    targets = [cells[c] for c in cell_ids] if cell_ids else list(cells.values())
    supervised = supervisor_alive(run_dir)
    stopped = []
    for cell_dir in targets:
        status = read_status(cell_dir, supervised)
        if status.state in ENDED_STATES:
            continue
        (cell_dir / STOP_REQUEST).touch()
        stopped.append(cell_dir.name)
    deadline = time.monotonic() + grace
    for cell_dir in (cells[c] for c in stopped):
        status = read_status(cell_dir, supervised)
        if status.state == RUNNING:
            _terminate_group(status.raw, deadline)
        if not supervised:
            _record_stopped(cell_dir)
    return stopped


def _terminate_group(raw: dict[str, Any], deadline: float) -> None:
    pgid, pid, start = raw.get("pgid"), raw.get("pid"), raw.get("pid_start")
    if not isinstance(pgid, int) or not is_alive(pid, start):
        return
    _signal_group(pgid, signal.SIGTERM)
    while time.monotonic() < deadline and is_alive(pid, start):
        time.sleep(0.05)
    if is_alive(pid, start):
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _record_stopped(cell_dir: Path) -> None:
    raw = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
    raw.update(state=STOPPED, end_time=time.time())
    rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, raw)
