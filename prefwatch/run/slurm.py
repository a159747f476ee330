"""The Slurm backend: each cell is one ``sbatch`` job; Slurm, not prefwatch, schedules them.

prefwatch.run.backend chooses the backend (``[resources] backend`` in the grid, kept in resources.json and
in each cell's status.json); ``SlurmBackend`` is its Slurm side. For each cell, submission writes a
small job script into the cell folder (``job.sh``: the launch spec's environment and argument list,
every value quoted, nothing from the grid file reaches a shell unquoted) and calls ``sbatch`` with an
argument list; the job id goes into status.json.

The state of a cell comes from Slurm while Slurm knows its job: one ``squeue -t all`` call for all
of a grid's jobs (cached for a moment, so a monitor does not hammer the controller), then ``sacct``
where the cluster keeps accounting. The job (prefwatch.run.job, the same on both backends) records its
start and its exit code in status.json, so a cell keeps its outcome after Slurm forgets the job
(``MinJobAge``) on clusters without accounting. ``prefwatch stop`` is ``scancel``.

Cells asking for more than one GPU run under ``torchrun --standalone`` (``python -m
torch.distributed.run``): one process per GPU, on a free rendezvous port, so that two such cells on
one node do not collide. The trainer's metrics callback writes on the main process only, and TRL
gathers the reward metrics across processes before they are logged.
This module never imports torch.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from msgspec.structs import replace

from prefwatch.files import rundir, safe
from prefwatch.files.rundir import CellState, CellStatus, StatusRecord
from prefwatch.files.settings import CellSettings, SlurmSettings
from prefwatch.run.backend import LaunchSpec, cell_settings

JOB_SCRIPT = rundir.JOB_SCRIPT
QUERY_SECONDS = 2.0  # how long one squeue answer serves every cell of a grid
COMMAND_TIMEOUT = 30.0

# Slurm job states (squeue's and sacct's long names) onto prefwatch's cell states.
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}


class SlurmError(RuntimeError):
    """Slurm refused or could not be asked; str() is one line for the user."""


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job."""

    state: str  # Slurm's long state name, e.g. RUNNING, COMPLETED, CANCELLED
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    node: str = ""

    @property
    def ended(self) -> bool:
        return self.state not in _QUEUED and self.state not in _RUNNING


# ---------------------------------------------------------------------------------------------
# Submitting


def job_script(cell_dir: Path, cell: CellSettings, spec: LaunchSpec) -> str:
    """The cell's sbatch script: the launch spec's environment, then its job. Every value is quoted.

    The job (prefwatch.run.job) records its own start and exit in status.json."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"# prefwatch: the Slurm job of cell {cell.id or cell_dir.name} (written at launch; do not edit)",
        "export " + " ".join(f"{name}={q(value)}" for name, value in spec.env.items()),
        f"cd {q(str(cell_dir))} || exit 1",
        "exec " + " ".join(q(arg) for arg in spec.argv),
    ]
    return "\n".join(lines) + "\n"


def sbatch_command(cell_dir: Path, grid_name: str, slurm: SlurmSettings, script: Path) -> list[str]:
    """sbatch's argument list for one cell: output appended to the cell's stdout.log, run in the cell folder."""
    command = [
        "sbatch",
        "--parsable",
        f"--job-name={grid_name}/{cell_dir.name}",
        f"--output={cell_dir / rundir.STDOUT_FILE}",
        "--open-mode=append",
        f"--chdir={cell_dir}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={slurm.cpus_per_cell or 1}",
    ]
    if slurm.partition:
        command.append(f"--partition={slurm.partition}")
    if slurm.gpus_per_cell:
        command.append(f"--gres=gpu:{slurm.gpus_per_cell}")
    if slurm.mem:
        command.append(f"--mem={slurm.mem}")
    if slurm.time:
        command.append(f"--time={slurm.time}")
    if slurm.account:
        command.append(f"--account={slurm.account}")
    command += list(slurm.options)
    return [*command, str(script)]


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmError(
            'sbatch not found: a grid with [resources] backend = "slurm" is launched on a Slurm login node '
            "(or a machine with the Slurm client commands and SLURM_CONF)"
        )


def submit(cell_dir: Path, grid_name: str, slurm: SlurmSettings, spec: LaunchSpec) -> StatusRecord:
    """Write the cell's job script, hand it to sbatch and record the job id in status.json."""
    cell = cell_settings(cell_dir)
    script = cell_dir / JOB_SCRIPT
    safe.write_atomic(script, job_script(cell_dir, cell, spec).encode())  # never through a planted link
    script.chmod(0o755)
    command = sbatch_command(cell_dir, grid_name, slurm, script)
    result = _run(command)
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused cell {cell_dir.name}: {_one_line(result.stderr or result.stdout)}")
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit() and "_" not in job_id:
        raise SlurmError(f"sbatch gave no job id for cell {cell_dir.name}: {_one_line(result.stdout)}")
    submitted = StatusRecord(
        state=CellState.QUEUED,
        backend=rundir.Backend.SLURM,
        job_id=job_id,
        host=socket.gethostname(),
        submit_time=time.time(),
        command=command,
    )
    # The job may have recorded its start already (a fast scheduler): then only the job id is added.
    return rundir.update_status(
        cell_dir,
        lambda r: (
            replace(r, job_id=job_id, command=command, submit_time=submitted.submit_time)
            if r.pid is not None and r.state != CellState.QUEUED
            else replace(submitted, previous=r.previous)
        ),
    )


class SlurmBackend:
    """Cells as sbatch jobs; Slurm schedules, squeue / sacct say where they are, scancel stops them."""

    name = rundir.Backend.SLURM

    def __init__(self, settings: SlurmSettings) -> None:
        self.settings = settings

    def start(self, cell_dir: Path, spec: LaunchSpec) -> StatusRecord:
        return submit(cell_dir, cell_dir.parent.parent.name, self.settings, spec)

    def state(self, cell_dir: Path, record: StatusRecord, supervised: bool | None) -> CellStatus:
        return cell_state(cell_dir, record)

    def cancel(self, cells: list[Path], grace: float) -> dict[Path, str]:
        """scancel the cells' jobs (Slurm sends SIGTERM, then SIGKILL after its KillWait) and record them stopped."""
        records = {d: _record(d) for d in cells}
        cancel([r.job_id for r in records.values() if r is not None and r.job_id])
        for cell_dir in cells:
            rundir.update_status(
                cell_dir, lambda r: None if r.ended else replace(r, state=CellState.STOPPED, end_time=time.time())
            )
        return {}

    def describe(self, status: CellStatus) -> str:
        return status.describe()  # Slurm's words (its reason, timeout, out of memory) are in the status


def _record(cell_dir: Path) -> StatusRecord | None:
    try:
        return rundir.read_status(cell_dir)
    except rundir.RecordError:
        return None


# ---------------------------------------------------------------------------------------------
# Asking Slurm

_cache: dict[str, tuple[float, JobInfo | None]] = {}


def query(job_ids: list[str]) -> dict[str, JobInfo]:
    """What Slurm says about these jobs now: squeue (jobs it still holds), then sacct for the rest.

    A job missing from the answer is unknown to Slurm. Raises SlurmError when Slurm cannot be asked.
    """
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    result = _run(
        [
            "squeue",
            "--noheader",
            "--states=all",
            f"--jobs={','.join(ids)}",
            "--Format=JobID:|,State:|,Reason:|,exit_code:|,NodeList:|",
        ]
    )
    if result.returncode != 0 and "invalid job id" not in (result.stderr or "").lower():
        raise SlurmError(f"squeue failed: {_one_line(result.stderr or result.stdout)}")
    found = parse_squeue(result.stdout if result.returncode == 0 else "")
    missing = [j for j in ids if j not in found]
    if missing:
        found.update(sacct(missing))
    return found


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines of ``JobID|State|Reason|exit_code|NodeList|``; exit_code is the raw wait status."""
    jobs = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 5 or not parts[0]:
            continue
        job_id, state, reason, status, node = parts[:5]
        code, sig = _wait_status(status)
        jobs[job_id] = JobInfo(state=state.upper(), reason=reason, exit_code=code, signal=sig, node=node)
    return jobs


def _wait_status(text: str) -> tuple[int | None, int | None]:
    try:
        status = int(text)
    except ValueError:
        return None, None
    if status & 0x7F:
        return None, status & 0x7F
    return status >> 8, None


def sacct(job_ids: list[str]) -> dict[str, JobInfo]:
    """Ended jobs from Slurm's accounting; nothing where the cluster keeps none (sacct then fails)."""
    if shutil.which("sacct") is None:
        return {}
    result = _run(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={','.join(job_ids)}",
            "--format=JobID,State,ExitCode,NodeList",
        ]
    )
    return parse_sacct(result.stdout) if result.returncode == 0 else {}


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines of ``JobID|State|ExitCode|NodeList``; State may read "CANCELLED by 1000", ExitCode "code:signal"."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0] or "." in parts[0]:
            continue
        state = parts[1].split()[0].upper() if parts[1].strip() else "UNKNOWN"
        code_text, _, sig_text = parts[2].partition(":")
        code = int(code_text) if code_text.isdigit() else None
        sig = int(sig_text) if sig_text.isdigit() and int(sig_text) else None
        jobs[parts[0]] = JobInfo(state=state, exit_code=code, signal=sig, node=parts[3])
    return jobs


def job_info(cell_dir: Path, job_id: str) -> JobInfo | None:
    """Slurm's word on one cell's job, asked once for every cell of the grid and kept QUERY_SECONDS.

    None when Slurm does not know the job (any more). Raises SlurmError when Slurm cannot be asked.
    """
    now = time.monotonic()
    cached = _cache.get(job_id)
    if cached and (now - cached[0] < QUERY_SECONDS or cached[1] is not None and cached[1].ended):
        return cached[1]
    siblings = [job_id]
    for other in rundir.cell_dirs(cell_dir.parent.parent):
        other_record = _record(other)
        other_id = other_record.job_id if other_record is not None else None
        if other_id is not None and other_id not in siblings:
            held = _cache.get(other_id)
            if not (held and held[1] is not None and held[1].ended):
                siblings.append(other_id)
    answer = query(siblings)
    for other_id in siblings:
        _cache[other_id] = (now, answer.get(other_id))
    return answer.get(job_id)


def forget_cache() -> None:
    _cache.clear()


def cell_state(cell_dir: Path, record: StatusRecord) -> CellStatus:
    """A Slurm cell's state: Slurm's word while it knows the job, else what was recorded.

    stopped (prefwatch stop recorded it) wins; a job Slurm no longer knows keeps the end the job
    recorded; one that never recorded an end is lost.
    """
    recorded = record.state
    if record.job_id is None:  # not submitted (yet): sbatch refused, or a launch is under way
        return CellStatus(recorded, record)
    try:
        info = job_info(cell_dir, record.job_id)
    except SlurmError as exc:
        return CellStatus(recorded, record, error=str(exc))
    if info is None:
        return CellStatus(recorded if record.ended else CellState.LOST, record)
    if info.node:
        record = replace(record, node=info.node, device=_device(info.node, record))
    reason = info.reason if info.reason and info.reason != "None" else None

    def status(state: CellState, final: StatusRecord = record) -> CellStatus:
        return CellStatus(state, final, slurm_state=info.state, slurm_reason=reason)

    if recorded == CellState.STOPPED:  # prefwatch stop cancelled it; Slurm may still be winding it down
        return status(CellState.STOPPED)
    if info.state in _QUEUED:
        return status(CellState.QUEUED)
    if info.state in _RUNNING:
        return status(CellState.RUNNING)
    if info.state == "COMPLETED":
        return status(CellState.FINISHED)
    if info.state == "CANCELLED":
        return status(CellState.STOPPED)
    # FAILED and its kin: the job's own record of the exit is exact.
    if record.exit_code is None and record.signal is None:
        if info.signal:
            record = replace(record, signal=info.signal)
        elif info.exit_code is not None:
            record = replace(record, exit_code=info.exit_code)
    return status(CellState.FAILED, record)


def _device(node: str, record: StatusRecord) -> str:
    command = record.command or []
    gres = next((a.split(":", 1)[1] for a in command if a.startswith("--gres=gpu:")), None)
    return f"{node} ({gres} GPU)" if gres else node


def cancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    result = _run(["scancel", *job_ids])
    if result.returncode != 0 and "invalid job id" not in (result.stderr or "").lower():
        raise SlurmError(f"scancel failed: {_one_line(result.stderr or result.stdout)}")
    for job_id in job_ids:
        _cache.pop(job_id, None)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise SlurmError(f"{command[0]} not found: this machine has no Slurm client commands") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} gave no answer in {COMMAND_TIMEOUT:.0f} s") from None


def _one_line(text: str) -> str:
    return " ".join((text or "").split()) or "no message"
