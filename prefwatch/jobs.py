"""Start, follow and stop the detached processes that train a grid's cells.

``launch`` writes the run directory, then ``start_cells`` hands the cells to the grid's backend,
chosen here and nowhere else (``[resources] backend``, kept in resources.json and in each cell's
status.json):

  local   one supervisor per grid in a session of its own, so closing the terminal or losing SSH
          stops nothing. The supervisor (prefwatch.supervise) starts the cells as slots free up,
          each cell in its own session and process group, and records every outcome in the cell's
          status.json.
  slurm   each cell is one sbatch job (prefwatch.slurm); its state comes from squeue / sacct, and
          stopping is scancel.

This module never imports torch: it runs in the CLI and the monitor.
"""

from __future__ import annotations

import dataclasses
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
RESOURCES_FILE = "resources.json"

LOCAL, SLURM = "local", "slurm"
BACKENDS = (LOCAL, SLURM)

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
    resources: dict[str, Any] = dataclasses.asdict(grid.settings.resources)
    first_status: dict[str, Any] = {"state": QUEUED, "host": socket.gethostname()}
    if resources.get("backend", LOCAL) == SLURM:
        _require_slurm()
        resources[SLURM] = dataclasses.asdict(grid.settings.slurm)
        first_status["backend"] = SLURM
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
            rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, first_status)
        rundir.write_json_atomic(staging / RESOURCES_FILE, resources)
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            raise LaunchError(f"{target}: the run directory exists already; use another name or --out") from None
        raise LaunchError(f"{out_root}: cannot write the run directory ({exc.strerror or exc})") from None
    return target


def backend_of(run_dir: Path) -> str:
    """The grid's backend, from the resources.json its launch wrote (grids from before backends: local)."""
    resources = rundir.read_json(run_dir / RESOURCES_FILE) or {}
    backend = resources.get("backend", LOCAL)
    return backend if backend in BACKENDS else LOCAL


def start_cells(run_dir: Path, resume: bool = False) -> str | None:
    """Hand the grid's queued cells to its backend; for Slurm, returns which jobs they became."""
    if backend_of(run_dir) != SLURM:
        start_supervisor(run_dir, resume=resume)
        return None
    from prefwatch import slurm

    run_dir = run_dir.resolve()  # the job scripts run on other nodes, in the cell folders
    settings = (rundir.read_json(run_dir / RESOURCES_FILE) or {}).get(SLURM) or {}
    submitted: list[str] = []
    for cell_dir in rundir.cell_dirs(run_dir):
        if (rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}).get("state", QUEUED) != QUEUED:
            continue
        try:
            submitted.append(slurm.submit(cell_dir, run_dir.name, settings, resume=resume))
        except slurm.SlurmError as exc:
            _abandon_submission(run_dir, submitted)
            raise LaunchError(str(exc)) from None
    return f"Slurm job{'s' if len(submitted) != 1 else ''} {', '.join(submitted)}"


def _abandon_submission(run_dir: Path, submitted: list[str]) -> None:
    """sbatch refused a cell: cancel the jobs already submitted, so that no half grid runs unseen."""
    from prefwatch import slurm

    try:
        slurm.cancel(submitted)
    except slurm.SlurmError:
        pass
    for cell_dir in rundir.cell_dirs(run_dir):
        raw = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
        if raw.get("state", QUEUED) == QUEUED:
            rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, {**raw, "state": STOPPED, "end_time": time.time()})


def _require_slurm() -> None:
    from prefwatch import slurm

    try:
        slurm.require_sbatch()
    except slurm.SlurmError as exc:
        raise LaunchError(str(exc)) from None


def spawn_detached(
    command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process in a session of its own (so a terminal's SIGHUP never reaches it), stdin closed,
    stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            env=env,
        )


def start_supervisor(run_dir: Path, resume: bool = False, timeout: float = 15.0) -> int:
    """Start the grid's supervisor detached (its own session, stdin closed, output to supervisor.log),
    and return once it holds the run's lock: a supervisor that dies at start is an error here, not a
    grid of cells queued forever."""
    run_dir = run_dir.resolve()  # the supervisor runs in the run directory
    command = [sys.executable, "-m", "prefwatch.supervise", str(run_dir)]
    if resume:
        command.append("--resume")
    process = spawn_detached(command, run_dir / SUPERVISOR_LOG, run_dir)
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
    statuses = {cell_dir: read_status(cell_dir, supervisor_alive=False) for cell_dir in rundir.cell_dirs(run_dir)}
    for cell_dir, status in statuses.items():
        if status.raw.get("backend") == SLURM and status.state in (QUEUED, RUNNING):
            job = status.raw.get("job_id")
            raise LaunchError(
                f"{run_dir}: cell {cell_dir.name} is still {status.state} in Slurm (job {job}); stop it first"
            )
    slurm_grid = backend_of(run_dir) == SLURM
    if slurm_grid:
        _require_slurm()
    requeued = []
    for cell_dir, status in statuses.items():
        if status.state != FINISHED:
            _requeue(cell_dir, status, slurm_grid)
            requeued.append(cell_dir.name)
    return requeued


def _requeue(cell_dir: Path, status: CellStatus, slurm_grid: bool) -> None:
    """Queue a cell again; "previous" keeps its last run's record and tells the starter to resume it."""
    (cell_dir / STOP_REQUEST).unlink(missing_ok=True)
    previous = {k: v for k, v in status.raw.items() if k != "previous"}
    fresh: dict[str, Any] = {"state": QUEUED, "host": socket.gethostname(), "previous": previous}
    if slurm_grid:
        fresh["backend"] = SLURM
    rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, fresh)


RESTARTABLE = frozenset({FAILED, STOPPED, LOST})


def restart_cells(run_dir: Path, cell_ids: list[str]) -> list[str]:
    """Start failed, stopped or lost cells again from their last checkpoint, while the rest run on.

    A live supervisor picks the requeued cells up (it resumes any cell queued with a previous run);
    with none, one is started. Under Slurm the cells are submitted again.
    """
    cells = {p.name: p for p in rundir.cell_dirs(run_dir)}
    unknown = [c for c in cell_ids if c not in cells]
    if unknown:
        raise LaunchError(f"{run_dir}: no cell named {unknown[0]!r} (cells: {', '.join(cells)})")
    supervised = supervisor_alive(run_dir)
    statuses = {c: read_status(cells[c], supervised) for c in cell_ids}
    stuck = [f"{c} is {s.state}" for c, s in statuses.items() if s.state not in RESTARTABLE]
    if stuck:
        raise LaunchError(f"{run_dir}: only failed, stopped or lost cells restart ({'; '.join(stuck)})")
    slurm_grid = backend_of(run_dir) == SLURM
    for cell_id, status in statuses.items():
        _requeue(cells[cell_id], status, slurm_grid)
    if slurm_grid:
        start_cells(run_dir, resume=True)
    else:
        _hand_to_a_supervisor(run_dir, [cells[c] for c in cell_ids])
    return list(cell_ids)


def _hand_to_a_supervisor(run_dir: Path, cell_dirs: list[Path], wait: float = 1.0) -> None:
    """A running supervisor takes queued cells within a fraction of a second; one that was just
    finishing may exit without them, so start a new one unless they leave the queue."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not supervisor_alive(run_dir):
            break
        if all((rundir.read_json(d / rundir.STATUS_FILE) or {}).get("state") != QUEUED for d in cell_dirs):
            return
        time.sleep(0.05)
    if not supervisor_alive(run_dir):
        start_supervisor(run_dir, resume=True)


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
        if self.raw.get("backend") == SLURM:
            from prefwatch import slurm

            why = slurm.describe_failure(self.raw) if self.state == FAILED else None
            if why:
                return f"failed ({why})"
        if self.state == FAILED and self.signal:
            return f"failed (signal {self.signal})"
        if self.state == FAILED and self.exit_code is not None:
            return f"failed (exit {self.exit_code})"
        return self.state


def read_status(cell_dir: Path, supervisor_alive: bool | None = None) -> CellStatus:
    raw = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}
    if raw.get("backend") == SLURM:  # Slurm's word, not the process table's
        from prefwatch import slurm

        slurm_state, merged = slurm.cell_state(cell_dir, raw)
        return CellStatus(slurm_state, merged)
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
    slurm_cells = [cells[c] for c in stopped if _is_slurm(cells[c])]
    if slurm_cells:
        _cancel_slurm(slurm_cells)
    deadline = time.monotonic() + grace
    for cell_dir in (cells[c] for c in stopped if not _is_slurm(cells[c])):
        status = read_status(cell_dir, supervised)
        if status.state == RUNNING:
            _terminate_group(status.raw, deadline)
        if not supervised:
            _record_stopped(cell_dir)
    return stopped


def _is_slurm(cell_dir: Path) -> bool:
    return (rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}).get("backend") == SLURM


def _cancel_slurm(cell_dirs: list[Path]) -> None:
    """scancel the cells' jobs (Slurm sends SIGTERM, then SIGKILL after its KillWait) and record them stopped."""
    from prefwatch import slurm

    job_ids = []
    for cell_dir in cell_dirs:
        job_id = (rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}).get("job_id")
        if isinstance(job_id, str):
            job_ids.append(job_id)
    try:
        slurm.cancel(job_ids)
    except slurm.SlurmError as exc:
        raise LaunchError(str(exc)) from None
    for cell_dir in cell_dirs:
        _record_stopped(cell_dir)


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
