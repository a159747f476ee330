"""The Slurm backend: each cell is one ``sbatch`` job; Slurm, not prefwatch, schedules them.

prefwatch.jobs chooses the backend (``[resources] backend`` in the grid, ``"backend"`` in each cell's
status.json) and calls in here. For each cell, submission writes a small job script into the cell
folder (``job.sh``: every value in it quoted, nothing from the grid file reaches a shell unquoted)
and calls ``sbatch`` with an argument list; the job id goes into status.json (written atomically).

The state of a cell comes from Slurm while Slurm knows its job: one ``squeue -t all`` call for all
of a grid's jobs (cached for a moment, so a monitor does not hammer the controller), then ``sacct``
where the cluster keeps accounting. The job script also records the job's start and its exit code
in status.json, so a cell keeps its outcome after Slurm forgets the job (``MinJobAge``) on clusters
without accounting. ``prefwatch stop`` is ``scancel``.

Cells asking for more than one GPU run under ``torchrun --standalone`` (``python -m
torch.distributed.run``): one process per GPU, on a free rendezvous port, so that two such cells on
one node do not collide. The trainer's metrics callback writes on the main process only, and TRL
gathers the reward metrics across processes before they are logged.

``python -m prefwatch.slurm started|ended CELL_DIR [EXIT_STATUS]`` is what the job script calls.
This module never imports torch.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefwatch import rundir

BACKEND = "slurm"
JOB_SCRIPT = "job.sh"
QUERY_SECONDS = 2.0  # how long one squeue answer serves every cell of a grid
COMMAND_TIMEOUT = 30.0
STOP_REQUEST = "stop.request"  # the same name as jobs.STOP_REQUEST (kept here to avoid an import cycle)

# Slurm job states (squeue's and sacct's long names) onto prefwatch's cell states.
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
_FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"}


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


def train_command(cell_dir: Path, gpus: int = 0, resume: bool = False, python: str = sys.executable) -> list[str]:
    """The cell's training command as an argument list; several GPUs: one process each under torchrun."""
    job = ["-m", "prefwatch.train", str(cell_dir / rundir.CELL_FILE)] + (["--resume"] if resume else [])
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *job]
    return [python, *job]


def job_script(cell_dir: Path, cell: dict[str, Any], slurm: dict[str, Any], resume: bool = False) -> str:
    """The cell's sbatch script: environment, start record, training, exit record. Every value is quoted."""
    q = shlex.quote
    python = sys.executable
    threads = int(cell.get("threads", 1))
    gpus = int(slurm.get("gpus_per_cell", 0))
    lines = [
        "#!/bin/sh",
        f"# prefwatch: the Slurm job of cell {cell.get('id', cell_dir.name)} (written at launch; do not edit)",
        f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false",
    ]
    if gpus == 0:  # sbatch passes the submitting shell's environment on; a CPU cell must not see its GPUs
        lines.append("export CUDA_VISIBLE_DEVICES=")
    lines += [
        f"cd {q(str(cell_dir))} || exit 1",
        f"{q(python)} -m prefwatch.slurm started {q(str(cell_dir))}",
        " ".join(q(arg) for arg in train_command(cell_dir, gpus, resume, python)),
        "code=$?",
        f'{q(python)} -m prefwatch.slurm ended {q(str(cell_dir))} "$code"',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def sbatch_command(cell_dir: Path, grid_name: str, slurm: dict[str, Any], script: Path) -> list[str]:
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
        f"--cpus-per-task={slurm.get('cpus_per_cell') or 1}",
    ]
    if slurm.get("partition"):
        command.append(f"--partition={slurm['partition']}")
    if slurm.get("gpus_per_cell"):
        command.append(f"--gres=gpu:{slurm['gpus_per_cell']}")
    if slurm.get("mem"):
        command.append(f"--mem={slurm['mem']}")
    if slurm.get("time"):
        command.append(f"--time={slurm['time']}")
    if slurm.get("account"):
        command.append(f"--account={slurm['account']}")
    command += list(slurm.get("options") or [])
    return [*command, str(script)]


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise SlurmError(
            'sbatch not found: a grid with [resources] backend = "slurm" is launched on a Slurm login node '
            "(or a machine with the Slurm client commands and SLURM_CONF)"
        )


def submit(cell_dir: Path, grid_name: str, slurm: dict[str, Any], resume: bool = False) -> str:
    """Write the cell's job script, hand it to sbatch and record the job id in status.json; returns the id."""
    cell = rundir.read_json(cell_dir / rundir.CELL_FILE) or {}
    script = cell_dir / JOB_SCRIPT
    script.write_text(job_script(cell_dir, cell, slurm, resume))
    script.chmod(0o755)
    command = sbatch_command(cell_dir, grid_name, slurm, script)
    result = _run(command)
    if result.returncode != 0:
        raise SlurmError(f"sbatch refused cell {cell_dir.name}: {_one_line(result.stderr or result.stdout)}")
    job_id = result.stdout.strip().split(";")[0]
    if not job_id.isdigit() and "_" not in job_id:
        raise SlurmError(f"sbatch gave no job id for cell {cell_dir.name}: {_one_line(result.stdout)}")
    previous = (rundir.read_json(cell_dir / rundir.STATUS_FILE) or {}).get("previous")
    status: dict[str, Any] = {
        "state": "queued",
        "backend": BACKEND,
        "job_id": job_id,
        "host": socket.gethostname(),
        "submit_time": time.time(),
        "command": command,
    }
    if previous:
        status["previous"] = previous
    rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)
    return job_id


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
        other_id = (rundir.read_json(other / rundir.STATUS_FILE) or {}).get("job_id")
        if isinstance(other_id, str) and other_id not in siblings:
            held = _cache.get(other_id)
            if not (held and held[1] is not None and held[1].ended):
                siblings.append(other_id)
    answer = query(siblings)
    for other_id in siblings:
        _cache[other_id] = (now, answer.get(other_id))
    return answer.get(job_id)


def forget_cache() -> None:
    _cache.clear()


def cell_state(cell_dir: Path, raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A Slurm cell's state and status fields: Slurm's word while it knows the job, else what was recorded.

    stopped (prefwatch stop recorded it) wins; a job Slurm no longer knows keeps an end the job
    script recorded; one that never recorded an end is lost.
    """
    recorded = raw.get("state", "queued")
    job_id = raw.get("job_id")
    if not isinstance(job_id, str):  # not submitted (yet): sbatch refused, or a launch is under way
        return recorded, raw
    try:
        info = job_info(cell_dir, job_id)
    except SlurmError as exc:
        return recorded, {**raw, "slurm_error": str(exc)}
    if info is None:
        return (recorded if recorded in ("finished", "failed", "stopped") else "lost"), raw
    merged = {**raw, "slurm_state": info.state}
    if info.node:
        merged["node"] = info.node
        merged["device"] = _device(info.node, raw)
    if info.reason and info.reason != "None":
        merged["slurm_reason"] = info.reason
    if recorded == "stopped":  # prefwatch stop cancelled it; Slurm may still be winding it down
        return "stopped", merged
    if info.state in _QUEUED:
        return "queued", merged
    if info.state in _RUNNING:
        return "running", merged
    if info.state == "COMPLETED":
        return "finished", merged
    if info.state == "CANCELLED":
        return "stopped", merged
    # FAILED and its kin: the job script's own record of the exit is exact (a signal shows in sh as 128+n).
    if "exit_code" not in raw and "signal" not in raw:
        if info.signal:
            merged["signal"] = info.signal
        elif info.exit_code is not None:
            merged["exit_code"] = info.exit_code
    return "failed", merged


def _device(node: str, raw: dict[str, Any]) -> str:
    command = raw.get("command") or []
    gres = next((a.split(":", 1)[1] for a in command if isinstance(a, str) and a.startswith("--gres=gpu:")), None)
    return f"{node} ({gres} GPU)" if gres else node


def describe_failure(raw: dict[str, Any]) -> str | None:
    """Why a Slurm cell failed where Slurm says more than an exit status (time limit, memory, node)."""
    state = raw.get("slurm_state")
    if state in _FAILED and state != "FAILED":
        return state.lower().replace("_", " ")
    return None


def cancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    result = _run(["scancel", *job_ids])
    if result.returncode != 0 and "invalid job id" not in (result.stderr or "").lower():
        raise SlurmError(f"scancel failed: {_one_line(result.stderr or result.stdout)}")
    for job_id in job_ids:
        _cache.pop(job_id, None)


# ---------------------------------------------------------------------------------------------
# The job script's records


def record(cell_dir: Path, event: str, exit_status: int | None = None) -> None:
    """The job's own record in status.json: its start (node, time), then its exit code or signal."""
    status = rundir.read_json(cell_dir / rundir.STATUS_FILE) or {"backend": BACKEND}
    if event == "started":
        status.update(
            node=socket.gethostname(),
            start_time=time.time(),
            slurm_job=os.environ.get("SLURM_JOB_ID", status.get("job_id")),
        )
        if status.get("state") != "stopped":
            status["state"] = "running"
    else:
        code = exit_status if exit_status is not None else 1
        status["end_time"] = time.time()
        if code > 128:  # sh reports a child killed by signal n as 128 + n
            status["signal"] = code - 128
        else:
            status["exit_code"] = code
        if status.get("state") != "stopped" and not (cell_dir / STOP_REQUEST).exists():
            status["state"] = "finished" if code == 0 else "failed"
        else:
            status["state"] = "stopped"
    rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)


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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("started", "ended"):
        print("usage: python -m prefwatch.slurm started|ended CELL_DIR [EXIT_STATUS]", file=sys.stderr)
        return 2
    exit_status = int(args[2]) if len(args) > 2 and args[2].isdigit() else None
    try:
        record(Path(args[1]), args[0], exit_status)
    except OSError as exc:  # the record is a courtesy: never let it change the job's outcome
        print(f"prefwatch.slurm: cannot record {args[0]} in {args[1]}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
