"""The run directory: the one place that knows its file names and formats.

A run directory is the contract between the launcher, the training jobs, the monitor and the user::

    runs/<grid>/
      grid.toml             the grid as launched (copied)
      launch.lock           held (flock) by the grid's one supervisor: pid, pid start time, host
      supervisor.log        the supervisor's own output
      resources.json        [resources] as launched (and [slurm] under "slurm"): where cells run
      alerts.jsonl          every alert sent (findings, cell ends, the verdict); alerts.lock: its sender
      cells/<cell-id>/
        cell.json           the fully resolved settings of this cell (written by the launcher)
        metrics.jsonl       one TRL log dict per line, plus "step" and "time" (written by the job)
        eval_pairs.jsonl    one line per evaluation: step, pair ids, chosen and rejected rewards
        completions.jsonl   one line per evaluation: greedy answers to a fixed sample of held-out prompts
                            (step 0: the reference's), each with its token count and whether it ended on EOS
        system.jsonl        every 10 s: the job's CPU %, resident memory, its GPUs' load and memory (prefwatch.files.system)
        data.json           statistics of the cell's data, measured by the job at start (brevity check)
        status.json         a StatusRecord (below), written atomically under .status.lock
        stop.request        a requested stop: the cell never starts, and its end reads "stopped"
        job.sh              Slurm cells: the generated, quoted batch script
        stdout.log          the job's combined output
        best/               the adapter at the best held-out evaluation, with best.json (written by the job)

Only the job writes metrics.jsonl, eval_pairs.jsonl, completions.jsonl, system.jsonl and data.json. status.json is written here and
only here (``write_status``, ``update_status``), by the jobs layer, the supervisor and the job's own
start and exit records (prefwatch.run.job). The monitor and the report read; they never write into a cell.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import msgspec

from prefwatch.files import safe
from prefwatch.files.settings import CellSettings, ResourcesSettings, SlurmSettings, explain

T = TypeVar("T", ResourcesSettings, SlurmSettings)
GRID_FILE = "grid.toml"
LOCK_FILE = "launch.lock"
CELLS_DIR = "cells"
CELL_FILE = "cell.json"
METRICS_FILE = "metrics.jsonl"
EVAL_PAIRS_FILE = "eval_pairs.jsonl"
COMPLETIONS_FILE = "completions.jsonl"  # what the model writes at each evaluation (prefwatch.callback.completions)
DATA_FILE = "data.json"
SYSTEM_FILE = "system.jsonl"
STATUS_FILE = "status.json"
STDOUT_FILE = "stdout.log"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"  # the adapter at the best held-out evaluation (prefwatch.train.best)
BEST_FILE = "best.json"  # in BEST_DIR: step, heldout_accuracy, pairs_won, pairs, time
ALERTS_FILE = "alerts.jsonl"  # every alert sent, one JSON line each (prefwatch.act.alerts)
ALERTS_LOCK = "alerts.lock"  # flock of the one follower that sends a grid's alerts (prefwatch.act.policy)
STOP_REQUEST = "stop.request"
STATUS_LOCK = ".status.lock"
SUPERVISOR_LOG = "supervisor.log"
RESOURCES_FILE = "resources.json"
JOB_SCRIPT = "job.sh"
# The trainer's temporary folder (TMPDIR), removed when it ends: libraries that clean their temporary
# files only at a normal exit (the datasets library's hf_datasets-*) leave them here, not in /tmp.
SCRATCH_DIR = ".tmp"
MAX_RECORD_BYTES = 1 << 20  # a status.json or lock larger than this is not one prefwatch wrote
# A run directory's file system with less room than this is full: a job's first records, its output and its
# first log lines would not fit, so no job starts (the supervisor waits) and waiting cells read "disk full".
ROOM_TO_START = 1 << 20
DISK_FULL = "disk full"


def is_grid_dir(path: Path) -> bool:
    return (path / CELLS_DIR).is_dir()


def is_cell_dir(path: Path) -> bool:
    return (path / CELL_FILE).is_file() or (path / METRICS_FILE).is_file()


def is_launched_cell(path: Path) -> bool:
    """A cell that prefwatch launched (it has a status record), not logs found on disk."""
    return os.path.lexists(path / STATUS_FILE)  # a pipe or a link in its place: launched, its record unreadable


def cell_dirs(grid_dir: Path) -> list[Path]:
    """Cell folders of a grid, in launch order (the order cell.json gives, else by name)."""
    root = grid_dir / CELLS_DIR
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir()]

    def order(p: Path) -> tuple[int, str]:
        try:
            index = read_cell(p).settings.index
        except RecordError:
            index = None
        return (index if index is not None else 1 << 30, p.name)

    return sorted(dirs, key=order)


def read_json(path: Path, limit: int = 64 << 20) -> dict[str, Any] | None:
    """A JSON object from disk, or None when the file is missing, partial, larger than ``limit``, nested
    too deep or not an object."""
    try:
        data = safe.read_bytes(path, limit)
        value = json.loads(data) if len(data) <= limit else None
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def disk_full(run_dir: Path) -> bool:
    """Whether the run directory's file system has too little room left to start a job (ROOM_TO_START)."""
    return safe.disk_full(run_dir, ROOM_TO_START)


def write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    """Write a temporary file beside the target, then rename: readers see the old or the new file, whole."""
    _write_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


class RecordError(ValueError):
    """A run-directory record that cannot be read as what it should be; str() is one line naming the file."""


# ---------------------------------------------------------------------------------------------
# cell.json: the settings of a cell, as the launcher resolved them


@dataclass(frozen=True)
class CellRecord:
    """cell.json, read: the cell's settings (what the trainer runs, a missing key at its default) and the
    keys the file itself gives ("rank", "train.max_steps"): what the file says, for those who report it."""

    settings: CellSettings = field(default_factory=CellSettings)
    given: frozenset[str] = frozenset()

    def says(self, key: str) -> Any:
        """The value of a dotted key ("train.learning_rate") when the file gives it, else None."""
        if key not in self.given:
            return None
        value: Any = self.settings
        for part in key.split("."):
            value = getattr(value, part)
        return value


def read_cell(cell_dir: Path) -> CellRecord:
    """The cell's cell.json, typed (see read_cell_file)."""
    return read_cell_file(cell_dir / CELL_FILE)


def read_cell_file(path: Path) -> CellRecord:
    """A cell.json, typed. Raises RecordError, one line naming the file and the field, for a file that is
    missing, too large, not JSON, nested too deep, or holds a value its field does not take."""
    data = _read_record(path, "cell settings")
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RecordError(f"{path}: not cell settings ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: not cell settings (not a JSON object)")
    try:
        settings = msgspec.convert(raw, CellSettings)
    except msgspec.ValidationError as exc:
        keys, problem = explain(exc, raw, CellSettings)
        raise RecordError(f"{path}: {'.'.join(keys)}: {problem}") from None
    given = [*raw, *(f"{key}.{inner}" for key, table in raw.items() if isinstance(table, dict) for inner in table)]
    return CellRecord(settings, frozenset(given))


def write_cell(cell_dir: Path, settings: CellSettings) -> None:
    """Write the cell's cell.json (atomically), every key sorted."""
    write_json_atomic(cell_dir / CELL_FILE, msgspec.to_builtins(settings))


def _decode(path: Path, decoder: Any, what: str) -> Any:
    try:
        return decoder.decode(_read_record(path, what))
    except (msgspec.DecodeError, RecursionError) as exc:
        raise RecordError(f"{path}: not {what} ({' '.join(str(exc).split())[:200]})") from None


def _read_record(path: Path, what: str) -> bytes:
    try:
        data = safe.read_bytes(path, MAX_RECORD_BYTES)
    except OSError as exc:
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"{path}: larger than {MAX_RECORD_BYTES >> 20} MiB: not {what}")
    return data


# ---------------------------------------------------------------------------------------------
# status.json: a cell's state, where its job runs and how it ended


class CellState(enum.StrEnum):
    """A cell's state. The first six are recorded in status.json; INCOMPLETE and UNREADABLE are read from logs alone."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"  # status says running or queued, but no job and no supervisor can be found
    # Logs prefwatch did not start, without an end-of-training record and unchanged for a while:
    # the run stopped before its last step (it was called "idle").
    INCOMPLETE = "incomplete"
    # A tracker's store that cannot be read (damaged, another schema): the error says why.
    UNREADABLE = "unreadable"


ENDED_STATES = frozenset({CellState.FINISHED, CellState.FAILED, CellState.STOPPED, CellState.LOST})
RECORDED_ENDS = frozenset({CellState.FINISHED, CellState.FAILED, CellState.STOPPED})


class Backend(enum.StrEnum):
    LOCAL = "local"
    SLURM = "slurm"


class StatusRecord(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    """status.json. Every field but ``state`` is optional: a record grows as the cell goes.

    pid, pgid and pid_start (the kernel's start time, in clock ticks since boot) identify a local job:
    a pid alone is not an identity, pids are reused. ``previous`` keeps the last run of a cell queued again.
    """

    state: CellState
    backend: Backend = Backend.LOCAL
    host: str | None = None
    pid: int | None = None
    pgid: int | None = None
    pid_start: float | None = None
    device: str | None = None
    command: list[str] | None = None
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    job_id: str | None = None  # Slurm
    slurm_job: str | None = None
    node: str | None = None
    stop_reason: str | None = None  # why a stop was asked, where it says (the stop policy's: non_finite)
    previous: StatusRecord | None = None

    @property
    def ended(self) -> bool:
        return self.state in RECORDED_ENDS


_STATUS_DECODER = msgspec.json.Decoder(StatusRecord)


def status_path(cell_dir: Path) -> Path:
    """The cell's status file (for callers that watch it change: its stat, never its name)."""
    return cell_dir / STATUS_FILE


def read_status(cell_dir: Path) -> StatusRecord:
    """The cell's status.json; a missing file is a queued cell (the launcher writes it before any job runs).

    Raises RecordError (one line, naming the file) for a file that is not a status record: too large,
    not JSON, nested too deep, a field of the wrong type.
    """
    path = cell_dir / STATUS_FILE
    if not path.exists():
        return StatusRecord(state=CellState.QUEUED)
    return _decode(path, _STATUS_DECODER, "a status record")


def write_status(cell_dir: Path, record: StatusRecord) -> None:
    """Replace the cell's status.json whole (atomically: readers see the old or the new record)."""
    if record.state == CellState.STOPPED and record.stop_reason is None and stop_reason(cell_dir):
        record = msgspec.structs.replace(record, stop_reason=stop_reason(cell_dir))  # whoever records the stop
    _write_atomic(cell_dir / STATUS_FILE, msgspec.json.format(msgspec.json.encode(record), indent=1) + b"\n")


def update_status(cell_dir: Path, change: Callable[[StatusRecord], StatusRecord | None]) -> StatusRecord:
    """Read, change and write status.json under the cell's lock, so that the supervisor, the job's own
    records and ``stop`` never lose each other's writes. ``change`` returns the new record, or None to
    leave it as it is. An unreadable record is replaced by what ``change`` makes of an empty one."""
    with _status_lock(cell_dir):
        try:
            current = read_status(cell_dir)
        except RecordError:
            current = StatusRecord(state=CellState.LOST)
        new = change(current)
        if new is not None and new != current:
            write_status(cell_dir, new)
            return new
        return current


def try_flock(path: Path) -> BinaryIO | None:
    """Take an exclusive flock on ``path`` without waiting; the open handle holds it (the kernel
    releases it when the holder dies, so it never goes stale), None when another process holds it.
    One shape for the grid's locks: launch.lock (the supervisor) and alerts.lock (the one follower)."""
    handle = safe.open_lock(path)  # a link or a pipe in its place: PlantedFile
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def _status_lock(cell_dir: Path) -> Iterator[None]:
    with safe.open_lock(cell_dir / STATUS_LOCK) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_write_atomic = safe.write_atomic  # never through a link; the mode follows the umask


@dataclass(frozen=True)
class CellStatus:
    """A cell's state as the jobs layer reads it now: the record, corrected by what the process table or
    Slurm says, and what Slurm adds (its state name, why it waits). Handed to analysis, cli and tui."""

    state: CellState
    record: StatusRecord = field(default_factory=lambda: StatusRecord(state=CellState.QUEUED))
    slurm_state: str | None = None
    slurm_reason: str | None = None
    error: str | None = None  # status.json unreadable, or Slurm could not be asked
    note: str | None = None  # what the reader saw around the records: "disk full", "run directory gone"

    @property
    def exit_code(self) -> int | None:
        return self.record.exit_code

    @property
    def signal(self) -> int | None:
        return self.record.signal

    def noted(self, note: str) -> CellStatus:
        return dataclasses.replace(self, note=note)

    def describe(self) -> str:
        """The state as a person reads it: "failed (exit 1)", "failed (timeout)", "queued (Resources)",
        "queued (disk full)", "finished (run directory gone)"."""
        said = self._describe()
        return f"{said} ({self.note})" if self.note else said

    def _describe(self) -> str:
        if self.state == CellState.FAILED:
            if self.slurm_state in SLURM_FAILURE_WORDS:
                return f"failed ({SLURM_FAILURE_WORDS[self.slurm_state]})"
            if self.signal:
                return f"failed (signal {self.signal})"
            if self.exit_code is not None:
                return f"failed (exit {self.exit_code})"
        if self.error and self.state in (CellState.LOST, CellState.UNREADABLE):
            return f"lost ({self.error})"
        if self.state == CellState.QUEUED and self.slurm_reason:  # why Slurm keeps it waiting
            return f"queued ({self.slurm_reason})"
        if self.state == CellState.STOPPED and self.record.stop_reason:  # the policy's: "stopped (non_finite)"
            return f"stopped ({self.record.stop_reason})"
        return str(self.state)


# Slurm's end states that say more than an exit status.
SLURM_FAILURE_WORDS = {
    s: s.lower().replace("_", " ")
    for s in ("TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED")
}


# ---------------------------------------------------------------------------------------------
# stop.request


def stop_requested(cell_dir: Path) -> bool:
    return (cell_dir / STOP_REQUEST).exists()


def request_stop(cell_dir: Path, reason: str | None = None) -> None:
    """Mark a stop; ``reason`` (the stop policy's) is kept in the file and copied into status.json."""
    _write_atomic(cell_dir / STOP_REQUEST, json.dumps({"reason": reason}).encode() if reason else b"")


def stop_reason(cell_dir: Path) -> str | None:
    reason = (read_json(cell_dir / STOP_REQUEST) or {}).get("reason")
    return reason if isinstance(reason, str) else None


def clear_stop(cell_dir: Path) -> None:
    (cell_dir / STOP_REQUEST).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# resources.json


def write_resources(run_dir: Path, resources: ResourcesSettings, slurm: SlurmSettings | None = None) -> None:
    """resources.json: [resources] as launched, and [slurm] under "slurm" for a Slurm grid."""
    record = msgspec.to_builtins(resources) | ({"slurm": msgspec.to_builtins(slurm)} if slurm else {})
    write_json_atomic(run_dir / RESOURCES_FILE, record)


def read_resources(run_dir: Path) -> ResourcesSettings:
    """[resources] as launched; the defaults for run directories from before it, or a damaged file."""
    return _launched(read_json(run_dir / RESOURCES_FILE) or {}, ResourcesSettings)


def read_slurm(run_dir: Path) -> SlurmSettings:
    """[slurm] as launched; the defaults where it is missing or damaged (apart from [resources])."""
    return _launched((read_json(run_dir / RESOURCES_FILE) or {}).get("slurm"), SlurmSettings)


def _launched(raw: object, table: type[T]) -> T:
    try:
        return msgspec.convert(raw, table)  # other keys ignored
    except msgspec.ValidationError:
        return table()


def backend_of(run_dir: Path) -> Backend:
    """The grid's backend, chosen at launch (grids from before backends, or a damaged file: local)."""
    value = (read_json(run_dir / RESOURCES_FILE) or {}).get("backend")
    return Backend(value) if value in tuple(Backend) else Backend.LOCAL


def read_best(cell_dir: Path) -> dict[str, Any] | None:
    """best/best.json: where the cell's best adapter comes from; None when it has none (yet).

    A job killed between the two renames of a replacement leaves the previous adapter beside: use it."""
    for folder in (cell_dir / BEST_DIR, *sorted(cell_dir.glob(f".{BEST_DIR}.*.old"))):
        record = read_json(folder / BEST_FILE)
        if (
            record is not None
            and isinstance(record.get("step"), int)
            and isinstance(record.get("heldout_accuracy"), (int, float))
        ):
            return {**record, "path": folder}
    return None
