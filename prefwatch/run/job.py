"""``python -m prefwatch.run.job CELL.json [--resume] [--gpus=N] [-- COMMAND...]``: one cell's job, on either backend.

The job is a small process that records itself in the cell's status.json before anything else (pid,
process group, start time, host), then runs the trainer as its child and records how it ended (exit code
or signal). So:

- no stop is lost while a job starts: the job records its pid before it checks stop.request, ``stop``
  writes stop.request before it reads the pid; one of the two sees the other;
- a job that ends while no supervisor lives still reads finished or failed, with its code, and
  ``launch --resume`` leaves it alone;
- the trainer's command line names the cell's cell.json, and so does the job's: ``stop`` checks it.

The job runs prefwatch's trainer, or COMMAND (a training script of one's own that writes the cell's
logs, or a stand-in in tests). SIGTERM, SIGINT and SIGHUP are passed to the trainer (which ends); the job outlives it to record the
end. Exit status: the trainer's, or 128 + the signal that ended it. This module never imports torch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from msgspec.structs import replace

from prefwatch.files import rundir
from prefwatch.files.rundir import CellState, StatusRecord
from prefwatch.run.backend import process_start_time, train_command


class Job:
    def __init__(self, cell_json: Path, resume: bool, gpus: int, command: list[str] | None = None) -> None:
        self.cell_json = cell_json
        self.cell_dir = cell_json.parent
        self.argv = command or train_command(cell_json, gpus, resume)
        self.child: subprocess.Popen[bytes] | None = None
        self.signalled: int | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signalled = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        record = rundir.update_status(self.cell_dir, self.started)
        if record.pid != os.getpid():  # the cell ended (stopped) before its job got here
            return 0
        if rundir.stop_requested(self.cell_dir) or self.signalled:
            self.ended(None, self.signalled or signal.SIGTERM)
            return 128 + (self.signalled or signal.SIGTERM)
        scratch = self.cell_dir / rundir.SCRATCH_DIR
        shutil.rmtree(scratch, ignore_errors=True)  # what a job killed with SIGKILL left
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch)}
        self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env, preexec_fn=_end_with_parent)
        if self.signalled:  # a signal between the check and the spawn: the trainer must not run on
            self.child.send_signal(self.signalled)
        code = self.child.wait()
        shutil.rmtree(scratch, ignore_errors=True)
        self.ended(code if code >= 0 else None, -code if code < 0 else None)
        return code if code >= 0 else 128 - code

    def started(self, current: StatusRecord) -> StatusRecord | None:
        if current.ended:
            return None
        me = os.getpid()
        node = socket.gethostname()
        return replace(
            current,
            state=CellState.RUNNING,
            host=node if current.backend == rundir.Backend.LOCAL else current.host,
            node=node,
            pid=me,
            pgid=os.getpgrp(),
            pid_start=process_start_time(me),
            start_time=time.time(),
            slurm_job=os.environ.get("SLURM_JOB_ID", current.slurm_job),
            end_time=None,
            exit_code=None,
            signal=None,
        )

    def ended(self, exit_code: int | None, signum: int | None) -> None:
        stopped = rundir.stop_requested(self.cell_dir)

        def end(current: StatusRecord) -> StatusRecord | None:
            if current.pid != os.getpid():  # another run of the cell owns the record now
                return None
            if current.state == CellState.STOPPED or stopped:
                state = CellState.STOPPED
            else:
                state = CellState.FINISHED if exit_code == 0 else CellState.FAILED
            return replace(current, state=state, end_time=time.time(), exit_code=exit_code, signal=signum)

        rundir.update_status(self.cell_dir, end)


def _end_with_parent() -> None:
    """In the trainer, before exec: SIGTERM when the job dies (Linux), so a job killed with SIGKILL leaves
    no trainer running unrecorded and unstoppable."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse(argv: list[str]) -> tuple[Path, bool, int, list[str]]:
    """cell.json, --resume, --gpus and the command after ``--`` (options before it are the job's own)."""
    parser = argparse.ArgumentParser(prog="python -m prefwatch.run.job", description="Run and record one cell's job.")
    parser.add_argument("cell", type=Path, help="the cell's cell.json; its folder holds status.json")
    parser.add_argument("--resume", action="store_true", help="the trainer continues from its newest checkpoint")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of this job (more than one: torchrun)")
    parser.epilog = "After --: a command to run instead of the trainer."
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    return args.cell.resolve(), args.resume, args.gpus, argv[split + 1 :]


def main(argv: list[str] | None = None) -> int:
    cell_json, resume, gpus, command = parse(sys.argv[1:] if argv is None else argv)
    if not (cell_json.parent / rundir.CELL_FILE).is_file():
        print(f"prefwatch.run.job: {cell_json}: no such cell", file=sys.stderr)
        return 2
    try:
        return Job(cell_json, resume, gpus, command).run()
    except (OSError, rundir.RecordError) as exc:
        print(f"prefwatch.run.job: cannot record the job in {cell_json.parent}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
