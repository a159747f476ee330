"""Start, follow and stop the jobs that train a grid's cells: the jobs layer, on top of the backends.

``launch`` writes the run directory, then ``start_cells`` hands the queued cells to the grid's backend
(prefwatch.run.backend: local or Slurm, chosen once at launch and kept in resources.json):

  local   one supervisor per grid in a session of its own, so closing the terminal or losing SSH
          stops nothing. The supervisor (prefwatch.act.supervise) starts the cells' jobs as slots free up,
          each job in its own session and process group, and follows jobs already running.
  slurm   each cell's job is one sbatch job (prefwatch.run.slurm); its state comes from squeue / sacct.

Either way the job (prefwatch.run.job) records its own start and exit in status.json. This layer reads
every cell's status (``read_status``, ``grid_statuses``) and hands it to the analysis, the CLI and the
monitor: the log readers (prefwatch.ingest) never ask for it.

This module never imports torch: it runs in the CLI and the monitor.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from prefwatch.files import rundir, safe
from prefwatch.files.grid import Grid
from prefwatch.files.rundir import ENDED_STATES, CellState, CellStatus, RecordError, StatusRecord
from prefwatch.files.settings import SlurmSettings
from prefwatch.run.backend import (
    STOP_GRACE_SECONDS,
    Backend,
    LaunchSpec,
    LocalBackend,
    is_alive,
    job_alive,
    launch_spec,
    process_start_time,
    spawn_detached,
)

if TYPE_CHECKING:
    from prefwatch.ingest.sources import GridSource

# The states under their old names, for callers that compare with them.
QUEUED, RUNNING, FINISHED, FAILED = CellState.QUEUED, CellState.RUNNING, CellState.FINISHED, CellState.FAILED
STOPPED, LOST = CellState.STOPPED, CellState.LOST
LOCAL, SLURM = rundir.Backend.LOCAL, rundir.Backend.SLURM
RESTARTABLE = frozenset({FAILED, STOPPED, LOST})
STOP_REQUEST = rundir.STOP_REQUEST

# Reached through the jobs layer by the CLI, the monitor and the tests.
__all__ = [
    "ENDED_STATES",
    "STOP_GRACE_SECONDS",
    "CellStatus",
    "LaunchSpec",
    "is_alive",
    "process_start_time",
    "spawn_detached",
]


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
    slurm_grid = grid.settings.resources.backend == SLURM
    first = StatusRecord(state=QUEUED, host=socket.gethostname(), backend=SLURM if slurm_grid else LOCAL)
    if slurm_grid:
        _require_slurm()
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        staging = safe.make_dir(out_root, f".{grid.name}.")  # 0777 less the umask, as the user's folders
    except OSError as exc:
        raise LaunchError(f"{out_root}: cannot create the run directory ({exc.strerror or exc})") from None
    try:
        shutil.copyfile(grid.path, staging / rundir.GRID_FILE)
        for cell in grid.cells:
            cell_dir = staging / rundir.CELLS_DIR / cell.id
            cell_dir.mkdir(parents=True)
            rundir.write_cell(cell_dir, cell.record(grid.name))
            rundir.write_status(cell_dir, first)
        rundir.write_resources(staging, grid.settings.resources, grid.settings.slurm if slurm_grid else None)
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            raise LaunchError(f"{target}: the run directory exists already; use another name or --out") from None
        raise LaunchError(f"{out_root}: cannot write the run directory ({exc.strerror or exc})") from None
    return target


def backend_of(run_dir: Path) -> rundir.Backend:
    return rundir.backend_of(run_dir)


def start_cells(run_dir: Path, resume: bool = False) -> str | None:
    """Hand the grid's queued cells to its backend; for Slurm, returns which jobs they became."""
    if backend_of(run_dir) != SLURM:
        start_supervisor(run_dir, resume=resume)
        return None
    from prefwatch.run import slurm

    run_dir = run_dir.resolve()  # the job scripts run on other nodes, in the cell folders
    backend = backend_for(run_dir)
    gpus = rundir.read_slurm(run_dir).gpus_per_cell
    submitted: list[str] = []
    for cell_dir in rundir.cell_dirs(run_dir):
        record = _record_or_none(cell_dir)
        if record is None or record.state != QUEUED:
            continue
        spec = launch_spec(cell_dir, resume or record.previous is not None, gpus=gpus, scheduler_places_gpus=True)
        try:
            submitted.append(backend.start(cell_dir, spec).job_id or "?")
        except slurm.SlurmError as exc:
            _abandon_submission(run_dir, submitted)
            raise LaunchError(str(exc)) from None
    return f"Slurm job{'s' if len(submitted) != 1 else ''} {', '.join(submitted)}"


def _abandon_submission(run_dir: Path, submitted: list[str]) -> None:
    """sbatch refused a cell: cancel the jobs already submitted, so that no half grid runs unseen."""
    from prefwatch.run import slurm

    try:
        slurm.cancel(submitted)
    except slurm.SlurmError:
        pass
    for cell_dir in rundir.cell_dirs(run_dir):
        rundir.update_status(
            cell_dir, lambda r: replace(r, state=STOPPED, end_time=time.time()) if r.state == QUEUED else None
        )


def _require_slurm() -> None:
    from prefwatch.run import slurm

    try:
        slurm.require_sbatch()
    except slurm.SlurmError as exc:
        raise LaunchError(str(exc)) from None


def start_supervisor(run_dir: Path, resume: bool = False, timeout: float = 15.0) -> int:
    """Start the grid's supervisor detached (its own session, stdin closed, output to supervisor.log),
    and return once it holds the run's lock: a supervisor that dies at start is an error here, not a
    grid of cells queued forever."""
    run_dir = run_dir.resolve()  # the supervisor runs in the run directory
    command = [sys.executable, "-m", "prefwatch.act.supervise", str(run_dir)]
    if resume:
        command.append("--resume")
    log = run_dir / rundir.SUPERVISOR_LOG
    process = spawn_detached(command, log, run_dir)
    deadline = time.monotonic() + timeout
    while not supervisor_alive(run_dir):
        if process.poll() is not None or time.monotonic() > deadline:
            try:
                lines = safe.read_text(log, errors="replace").strip().splitlines()
            except OSError:
                lines = []
            reason = lines[-1] if lines else f"exit status {process.returncode}"
            raise LaunchError(f"{log}: the supervisor did not start: {reason}")
        time.sleep(0.02)
    return process.pid


# A supervisor whose cells have all ended still takes a last look at the grid (ends and the verdict)
# before it gives launch.lock up (its last deliveries come after: prefwatch.act.policy.watching); a
# resume asked for in that moment waits for it.
SUPERVISOR_FINISH_SECONDS = 30.0


def _finishing_supervisor_exits(run_dir: Path, timeout: float = SUPERVISOR_FINISH_SECONDS) -> bool:
    """True when the live supervisor has no cell left to run and exits within ``timeout`` seconds."""
    cells = rundir.cell_dirs(run_dir)
    if not cells or any(read_status(c, supervisor_alive=True).state not in ENDED_STATES for c in cells):
        return False
    deadline = time.monotonic() + timeout
    while supervisor_alive(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@dataclass
class Resumed:
    """What ``launch --resume`` did: cells queued again, and cells whose job still runs (followed, not restarted)."""

    requeued: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def requeue_unfinished(run_dir: Path) -> Resumed:
    """Queue every cell that did not finish again, for ``launch --resume``; leave running jobs alone.

    A cell whose job still runs (a local job proven to be the cell's, or a job Slurm still holds) is
    adopted: the new supervisor follows it, nothing starts a second copy. The others restart with
    ``--resume``: from their last checkpoint where one exists, appending to their logs.
    """
    if not rundir.is_grid_dir(run_dir):
        raise LaunchError(f"{run_dir}: not a prefwatch run directory (no cells/ folder)")
    for name in (
        rundir.LOCK_FILE,
        rundir.SUPERVISOR_LOG,
    ):  # the files a new supervisor writes: refused before any change
        try:
            safe.refuse_planted(run_dir / name)
        except safe.PlantedFile as exc:
            raise LaunchError(str(exc)) from None
    if supervisor_alive(run_dir) and not _finishing_supervisor_exits(run_dir):
        raise LaunchError(f"{run_dir}: its supervisor is still running; stop it first or attach")
    slurm_grid = backend_of(run_dir) == SLURM
    if slurm_grid:
        _require_slurm()
    resumed = Resumed()
    for cell_dir in rundir.cell_dirs(run_dir):
        status = read_status(cell_dir, supervisor_alive=False)
        if status.state == FINISHED:
            continue
        if _still_running(cell_dir, status):
            resumed.running.append(cell_dir.name)
            continue
        _requeue(cell_dir, status.record, slurm_grid)
        resumed.requeued.append(cell_dir.name)
    return resumed


def _still_running(cell_dir: Path, status: CellStatus) -> bool:
    if status.record.backend == SLURM:
        return status.state in (QUEUED, RUNNING) and status.record.job_id is not None
    return status.record.state == RUNNING and job_alive(cell_dir, status.record)


def _requeue(cell_dir: Path, record: StatusRecord, slurm_grid: bool) -> None:
    """Queue a cell again; ``previous`` keeps its last run's record and tells the starter to resume it."""
    rundir.clear_stop(cell_dir)
    fresh = StatusRecord(
        state=QUEUED,
        host=socket.gethostname(),
        backend=SLURM if slurm_grid else LOCAL,
        previous=replace(record, previous=None),
    )
    rundir.update_status(cell_dir, lambda _: fresh)


def restart_cells(run_dir: Path, cell_ids: list[str]) -> list[str]:
    """Start failed, stopped or lost cells again from their last checkpoint, while the rest run on.

    A live supervisor picks the requeued cells up (it resumes any cell queued with a previous run);
    with none, one is started (and follows the cells still running). Under Slurm they are submitted again.
    """
    cells = _cells(run_dir, cell_ids)
    supervised = supervisor_alive(run_dir)
    statuses = {c: read_status(cells[c], supervised) for c in cell_ids}
    stuck = [
        f"{c} is {s.state}" if s.state not in RESTARTABLE else f"{c} still runs"
        for c, s in statuses.items()
        if s.state not in RESTARTABLE or _still_running(cells[c], s)
    ]
    if stuck:
        raise LaunchError(f"{run_dir}: only failed, stopped or lost cells restart ({'; '.join(stuck)})")
    slurm_grid = backend_of(run_dir) == SLURM
    for cell_id, status in statuses.items():
        _requeue(cells[cell_id], status.record, slurm_grid)
    if slurm_grid:
        start_cells(run_dir, resume=True)
    else:
        _hand_to_a_supervisor(run_dir, [cells[c] for c in cell_ids])
    return list(cell_ids)


def _cells(run_dir: Path, cell_ids: list[str] | None) -> dict[str, Path]:
    cells = {p.name: p for p in rundir.cell_dirs(run_dir)}
    unknown = [c for c in cell_ids or [] if c not in cells]
    if unknown:
        raise LaunchError(f"{run_dir}: no cell named {unknown[0]!r} (cells: {', '.join(cells)})")
    return cells


def _hand_to_a_supervisor(run_dir: Path, cell_dirs: list[Path], wait: float = 1.0) -> None:
    """A running supervisor takes queued cells within a fraction of a second; one that was just
    finishing may exit without them, so start a new one unless they leave the queue."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not supervisor_alive(run_dir):
            break
        if all((_record_or_none(d) or StatusRecord(state=QUEUED)).state != QUEUED for d in cell_dirs):
            return
        time.sleep(0.05)
    if not supervisor_alive(run_dir):
        start_supervisor(run_dir, resume=True)


# ---------------------------------------------------------------------------------------------
# Status: handed to the analysis, the CLI and the monitor


def _record_or_none(cell_dir: Path) -> StatusRecord | None:
    try:
        return rundir.read_status(cell_dir)
    except RecordError:
        return None


def read_status(cell_dir: Path, supervisor_alive: bool | None = None) -> CellStatus:
    """A cell's state now: its status.json corrected by its backend (the process table, or Slurm).

    An unreadable status.json reads "lost", with the reason in one line; never an exception.
    """
    try:
        record = rundir.read_status(cell_dir)
    except RecordError as exc:
        return CellStatus(LOST, StatusRecord(state=LOST), error=str(exc))
    if supervisor_alive is None and record.state == RUNNING and record.backend == LOCAL:
        supervisor_alive = _supervisor_of(cell_dir)
    return backend_for_record(record).state(cell_dir, record, supervisor_alive)


def grid_statuses(run_dir: Path, cell_dirs: list[Path] | None = None) -> dict[str, CellStatus]:
    """Every cell's status by cell id, with one look at the supervisor for the grid."""
    supervised = supervisor_alive(run_dir)
    dirs = rundir.cell_dirs(run_dir) if cell_dirs is None else cell_dirs
    full = rundir.disk_full(run_dir)
    return {d.name: _noted(read_status(d, supervised), full) for d in dirs}


def _noted(status: CellStatus, disk_full: bool) -> CellStatus:
    """A cell that has not ended on a full disk says so: it waits for space (the supervisor starts nothing)."""
    return status.noted(rundir.DISK_FULL) if disk_full and status.state not in ENDED_STATES else status


RUN_DIR_GONE = "run directory gone"


def hand_statuses(grid: GridSource) -> None:
    """Read the status of every launched cell of ``grid`` and hand it to the cell's reader: the analysis,
    the CLI and the monitor then use it; the readers themselves never look at processes or Slurm."""
    if not grid.managed or _run_dir_gone(grid):
        return
    grid.supervised = supervisor_alive(grid.root)
    full = rundir.disk_full(grid.root)
    for cell in grid.cells:
        if cell.managed:
            cell.handed_status = _noted(read_status(cell.directory, grid.supervised), full)


def _run_dir_gone(grid: GridSource) -> bool:
    """True when the grid's run directory was moved or deleted under the reader. A cell's state then
    comes from the records it read, not from where its folder was first seen (a missing status.json
    would read "queued"): each keeps the status last handed in, marked "run directory gone"."""
    if rundir.is_grid_dir(grid.root):
        return False
    for cell in grid.cells:
        if cell.managed and cell.handed_status is not None and cell.handed_status.note != RUN_DIR_GONE:
            cell.handed_status = cell.handed_status.noted(RUN_DIR_GONE)
    return True


class StatusReader:
    """``hand_statuses`` for a caller that asks at every refresh (the monitor, a thousand cells).

    A cell's status.json is read again only when its (inode, size, mtime) changed or the grid's
    supervisor came or went; the process table (or Slurm) is asked again about a cell that has not
    ended at most every ``recheck`` seconds (a job killed without recording its end reads "lost"
    within that long). A status that did not change keeps its object, so a caller may compare
    statuses by identity. Reading every status.json and every job's /proc entry at each refresh
    was most of what a refresh of a large grid cost.
    """

    def __init__(self, recheck: float = 5.0, clock: Any = time.monotonic) -> None:
        self.recheck = recheck
        self.clock = clock
        self._seen: dict[Path, tuple[tuple[int, int, int] | None, bool | None, float]] = {}
        self._full = False  # the run directory's disk full at the last call

    def __call__(self, grid: GridSource) -> None:
        if not grid.managed or _run_dir_gone(grid):
            return
        grid.supervised = supervisor_alive(grid.root)
        full, was_full = rundir.disk_full(grid.root), self._full
        self._full = full
        now = self.clock()
        for cell in grid.cells:
            if not cell.managed:
                continue
            seen = _identity(rundir.status_path(cell.directory))
            before = self._seen.get(cell.directory)
            status = cell.handed_status
            if (
                before is not None
                and status is not None
                and before[:2] == (seen, grid.supervised)
                and full == was_full
                and (status.state in ENDED_STATES or now - before[2] < self.recheck)
            ):
                continue
            fresh = _noted(read_status(cell.directory, grid.supervised), full)
            if fresh != status:
                cell.handed_status = fresh
            self._seen[cell.directory] = (seen, grid.supervised, now)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def describe(status: CellStatus) -> str:
    """A cell's state as a person reads it, in its backend's words."""
    backend = backend_for_record(status.record)
    return backend.describe(status)


def backend_for(run_dir: Path) -> Backend:
    """The grid's backend: chosen at launch, kept in resources.json."""
    if rundir.backend_of(run_dir) == rundir.Backend.SLURM:
        from prefwatch.run.slurm import SlurmBackend

        return SlurmBackend(rundir.read_slurm(run_dir))
    return LocalBackend()


def backend_for_record(record: StatusRecord) -> Backend:
    if record.backend == SLURM:
        from prefwatch.run.slurm import SlurmBackend

        return SlurmBackend(SlurmSettings())  # reading and describing need no settings
    return LocalBackend()


def supervisor_alive(run_dir: Path) -> bool | None:
    """Whether the grid's supervisor runs (None when this run directory has none, e.g. a user's TRL dir)."""
    lock = rundir.read_json(run_dir / rundir.LOCK_FILE)
    if lock is None:  # no supervisor ever, or one writing its lock this instant
        return None
    if lock.get("host") not in (None, socket.gethostname()):
        return None
    return is_alive(lock.get("pid"), lock.get("pid_start"))


def _supervisor_of(cell_dir: Path) -> bool | None:
    return supervisor_alive(cell_dir.parent.parent)


# ---------------------------------------------------------------------------------------------
# Stopping


@dataclass
class StopOutcome:
    """The cells asked to stop, and one line for each cell whose job could not be proven its own."""

    stopped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def request_stop(
    run_dir: Path, cell_ids: list[str] | None = None, grace: float = STOP_GRACE_SECONDS, reason: str | None = None
) -> StopOutcome:
    """Stop cells: queued ones never start; running ones get SIGTERM to their process group, then SIGKILL.

    ``reason`` (the stop policy's, e.g. non_finite) goes into stop.request and from there into status.json,
    whoever records the stop: the cell reads "stopped (non_finite)".

    stop.request is written before the job's pid is read, and the job records its pid before it looks
    for stop.request: a stop during a start is never lost. Only a job proven to be the cell's is
    signalled (prefwatch.run.backend.prove_job); for any other, one line says why and nothing is signalled.
    The job (or the supervisor) records the cell stopped; where neither can, this function does.
    """
    cells = _cells(run_dir, cell_ids)
    targets = [cells[c] for c in cell_ids] if cell_ids else list(cells.values())
    supervised = supervisor_alive(run_dir)
    asked = []
    for cell_dir in targets:
        if read_status(cell_dir, supervised).state in ENDED_STATES:
            continue
        rundir.request_stop(cell_dir, reason)
        asked.append(cell_dir)
    outcome = StopOutcome()
    by_backend: dict[rundir.Backend, list[Path]] = {}
    for cell_dir in asked:
        record = _record_or_none(cell_dir)
        by_backend.setdefault(record.backend if record else LOCAL, []).append(cell_dir)
    refused: dict[Path, str] = {}
    for kind, dirs in by_backend.items():
        backend = backend_for(run_dir) if kind == SLURM else LocalBackend()  # Slurm needs its settings
        try:
            refused.update(backend.cancel(dirs, grace))
        except RuntimeError as exc:  # scancel failed
            raise LaunchError(str(exc)) from None
    for cell_dir in asked:
        if cell_dir in refused:
            rundir.clear_stop(cell_dir)
            outcome.refused.append(refused[cell_dir])
            continue
        outcome.stopped.append(cell_dir.name)
        if not supervised:
            _record_stopped(cell_dir)
    return outcome


def _record_stopped(cell_dir: Path) -> None:
    """No supervisor lives to record the end: record it, unless the job still runs (it records it itself)."""

    def stopped(record: StatusRecord) -> StatusRecord | None:
        if record.ended or (record.backend == LOCAL and job_alive(cell_dir, record)):
            return None
        return replace(record, state=STOPPED, end_time=time.time())

    rundir.update_status(cell_dir, stopped)
