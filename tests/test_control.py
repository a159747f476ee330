"""Control that cannot hurt, with real processes: ``stop`` signals only a job it can prove is the cell's,
``launch --resume`` follows jobs that still run instead of starting a second copy, no stop is lost while
a job starts, and a job records its own end when no supervisor lives.

The dangerous process groups (0: prefwatch's own, 1: every process) are never signalled for real: those
cases run with ``os.killpg`` replaced by a recorder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import last_step, prefwatch, status, wait_for

from prefwatch.act.supervise import hold_lock
from prefwatch.files import rundir
from prefwatch.files.grid import load_grid
from prefwatch.run import backend, jobs
from prefwatch.run.backend import LaunchSpec, LocalBackend, launch_spec, process_start_time
from prefwatch.run.job import Job, parse

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), tmp_path / "runs")


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process in a session and group of its own (``setsid sleep``), as a user's job would be."""
    process = subprocess.Popen(["setsid", "sleep", "120"])
    wait_for(lambda: os.getpgid(process.pid) == process.pid, 5, "setsid to take effect")
    yield process
    process.kill()
    process.wait()


def write_record(cell_dir: Path, **fields: object) -> None:
    """A status.json as anything could have written it (it is data, not trusted)."""
    (cell_dir / "status.json").write_text(json.dumps({"state": "running", **fields}))


def alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def hostile_records(pid: int) -> dict[str, dict[str, object]]:
    start = process_start_time(pid)
    return {
        "its own group, right start, not the cell's command": {"pid": pid, "pgid": pid, "pid_start": start},
        "pid 1 and another group, no start time": {"pid": 1, "pgid": pid},
        "no start time": {"pid": pid, "pgid": pid},
        "a reused pid (another start time)": {"pid": pid, "pgid": pid, "pid_start": (start or 0) + 7},
        "group of another pid": {"pid": os.getpid(), "pgid": pid, "pid_start": process_start_time(os.getpid())},
    }


@pytest.mark.parametrize("case", list(hostile_records(1)))
def test_stop_leaves_an_unrelated_process_group_alone(
    case: str, run_dir: Path, stranger: subprocess.Popen[bytes]
) -> None:
    cell = run_dir / "cells" / "dpo-r8"
    write_record(cell, **hostile_records(stranger.pid)[case])
    result = prefwatch("stop", str(run_dir), "dpo-r8", "--grace", "1")
    time.sleep(0.3)  # a SIGTERM, had one been sent, is delivered at once
    assert alive(stranger), case
    assert "Traceback" not in result.stderr
    if case == "a reused pid (another start time)":  # the recorded job is gone: the cell reads lost
        assert result.returncode == 0 and "nothing was running" in result.stdout
        return
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dpo-r8: nothing signalled" in lines[0]
    assert not (cell / rundir.STOP_REQUEST).exists()  # not recorded as a stop either


@pytest.mark.parametrize(
    "record",
    [
        {"pid": 1, "pgid": 1},
        {"pid": 1, "pgid": 1, "pid_start": "own"},
        {"pid": 0, "pgid": 0},
        {"pid": "own", "pgid": "own", "pid_start": "own"},
        {"pid": 1, "pgid": -1},
    ],
    ids=["pgid 1", "pgid 1 with its start", "pgid 0", "stop's own group", "pgid -1"],
)
def test_stop_never_signals_group_0_1_or_its_own(
    record: dict[str, object], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
    own = os.getpgrp()
    values = {k: (own if v == "own" else v) for k, v in record.items()}
    if record.get("pid_start") == "own":
        values["pid_start"] = process_start_time(int(values["pid"]))  # type: ignore[arg-type]
    cell = run_dir / "cells" / "dpo-r8"
    write_record(cell, **values)
    outcome = jobs.request_stop(run_dir, ["dpo-r8"], grace=0.1)
    assert sent == []
    assert outcome.stopped == []
    if jobs.is_alive(values["pid"], None):  # a live process named: one line says why it is not touched
        assert len(outcome.refused) == 1 and "nothing signalled" in outcome.refused[0]
    # The last guard, at the one call of os.killpg, refuses them too.
    for pgid in (0, 1, own):
        backend.signal_job(rundir.StatusRecord(state=jobs.RUNNING, pid=pgid, pgid=pgid), signal.SIGTERM)
    assert sent == []


def test_the_job_passes_its_options_to_the_trainer(tmp_path: Path) -> None:
    cell_json = tmp_path / "cell.json"
    assert parse([str(cell_json), "--resume"]) == (cell_json, True, 0, [])
    assert Job(cell_json, True, 0).argv[-2:] == [str(cell_json), "--resume"]
    assert parse([str(cell_json), "--gpus=2", "--", "python", "--resume"]) == (
        cell_json,
        False,
        2,
        ["python", "--resume"],
    )


def stand_in(cell_dir: Path, program: str) -> LaunchSpec:
    """The cell's real job (prefwatch.run.job), running a short program instead of the trainer."""
    real = launch_spec(cell_dir, resume=False)
    return LaunchSpec([*real.argv, "--", sys.executable, "-c", program], real.env, real.device)


def test_a_stop_during_start_is_never_lost(run_dir: Path, tmp_path: Path) -> None:
    lock = hold_lock(run_dir)  # a live supervisor: stop leaves the recording to the job
    assert lock is not None
    marker = tmp_path / "trained"
    program = f"open({str(marker)!r}, 'w').close(); import time; time.sleep(120)"

    # The stop lands first, while the cell still reads queued: the job sees stop.request and never trains.
    early = run_dir / "cells" / "dpo-r8"
    assert jobs.request_stop(run_dir, ["dpo-r8"]).stopped == ["dpo-r8"]
    spawner = LocalBackend()
    spawner.start(early, stand_in(early, program))
    assert spawner.processes[early].wait(timeout=60) != 0
    assert status(run_dir, "dpo-r8").state == jobs.STOPPED and not marker.exists()

    # The job starts first: the stop reads the pid the job recorded before anything else, and ends it.
    late = run_dir / "cells" / "dpo-r16"
    spawner.start(late, stand_in(late, program))
    wait_for(marker.exists, 60, "the stand-in trainer to start")
    assert jobs.request_stop(run_dir, ["dpo-r16"], grace=10).stopped == ["dpo-r16"]
    assert spawner.processes[late].wait(timeout=30) == 128 + signal.SIGTERM
    final = status(run_dir, "dpo-r16")
    assert final.state == jobs.STOPPED and final.signal == signal.SIGTERM
    lock.close()


def test_what_a_stopped_trainer_left_in_its_temporary_folder_is_removed(run_dir: Path, tmp_path: Path) -> None:
    """A trainer ended by a signal runs no exit handler: the datasets library's hf_datasets-* folders
    would stay in /tmp for good. The job gives the trainer a TMPDIR of the cell's own and removes it."""
    lock = hold_lock(run_dir)
    assert lock is not None
    made = tmp_path / "made"
    program = (
        "import tempfile, pathlib, time; d = tempfile.mkdtemp(prefix='hf_datasets-'); "
        f"(pathlib.Path(d) / 'cache.arrow').write_bytes(b'x'); pathlib.Path({str(made)!r}).write_text(d); time.sleep(120)"
    )
    cell = run_dir / "cells" / "dpo-r8"
    spawner = LocalBackend()
    spawner.start(cell, stand_in(cell, program))
    wait_for(made.exists, 60, "the stand-in trainer to make its temporary folder")
    left = Path(made.read_text())
    assert left.parent == cell / rundir.SCRATCH_DIR and left.is_dir()
    assert jobs.request_stop(run_dir, ["dpo-r8"], grace=10).stopped == ["dpo-r8"]
    assert spawner.processes[cell].wait(timeout=30) == 128 + signal.SIGTERM
    assert not left.exists() and not (cell / rundir.SCRATCH_DIR).exists()
    lock.close()


def write_grid(tmp_path: Path, name: str, steps: int, data: str | None = None) -> Path:
    text = (ROOT / "examples" / "tiny-grid.toml").read_text()
    text = text.replace('name = "tiny-demo"', f'name = "{name}"').replace("max_steps = 100", f"max_steps = {steps}")
    text = text.replace('objectives = ["dpo", "simpo"]', 'objectives = ["dpo"]').replace(
        "ranks = [16, 8]", "ranks = [8]"
    )
    if data:
        text = text.replace('name = "tiny-sales"', f'name = "{data}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def trainers_of(cell_dir: Path) -> list[int]:
    """Live trainer processes (python -m prefwatch.train) of one cell, from the process table."""
    cell_json = str(cell_dir.resolve() / "cell.json")
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            zombie = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if b"prefwatch.train" in argv and cell_json.encode() in argv and not zombie:
            found.append(int(proc.name))
    return found


def kill_supervisor(run_dir: Path) -> None:
    supervisor = json.loads((run_dir / "launch.lock").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: jobs.supervisor_alive(run_dir) is False, 10, "the supervisor to die")


def test_resume_after_the_supervisor_died_follows_the_running_job(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, "adopt", steps=40)
    assert prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs")).returncode == 0
    run_dir = tmp_path / "runs" / "adopt"
    cell = run_dir / "cells" / "dpo-r8"
    wait_for(lambda: last_step(run_dir, "dpo-r8") >= 3, 180, "dpo-r8 to log")
    kill_supervisor(run_dir)
    assert status(run_dir, "dpo-r8").state == jobs.RUNNING  # the job runs on, and says so itself

    resumed = prefwatch("launch", str(run_dir), "--resume", "--detach")
    assert resumed.returncode == 0, resumed.stderr
    assert "following dpo-r8 (still running)" in resumed.stdout and "resuming" not in resumed.stdout
    assert jobs.supervisor_alive(run_dir)
    assert len(trainers_of(cell)) == 1
    wait_for(lambda: status(run_dir, "dpo-r8").state in jobs.ENDED_STATES, 300, "dpo-r8 to end")
    final = status(run_dir, "dpo-r8")
    assert final.state == jobs.FINISHED and final.exit_code == 0
    steps = [json.loads(line)["step"] for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_steps = [s for s in steps if isinstance(s, int)]
    assert train_steps == sorted(train_steps) and train_steps[-1] == 40  # one writer: nothing interleaved
    assert "(pid" in (run_dir / "supervisor.log").read_text().split("following dpo-r8")[1][:20]
    wait_for(lambda: jobs.supervisor_alive(run_dir) is False, 30, "the supervisor to exit")
    again = prefwatch("launch", str(run_dir), "--resume", "--detach")
    assert again.returncode == 0 and "nothing to resume" in again.stdout  # a finished job is left alone


def test_a_job_that_outlives_its_supervisor_records_its_end(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n' * 20)
    grid = write_grid(tmp_path, "orphan", steps=10, data=str(bad))
    assert prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs")).returncode == 0
    run_dir = tmp_path / "runs" / "orphan"
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.RUNNING, 60, "the job to start")
    kill_supervisor(run_dir)
    record = rundir.read_status(run_dir / "cells" / "dpo-r8")
    wait_for(lambda: not jobs.is_alive(record.pid, record.pid_start), 180, "the job to end")
    final = status(run_dir, "dpo-r8")
    assert final.state == jobs.FAILED and final.exit_code == 2, final
    assert "failed (exit 2)" in prefwatch("status", str(run_dir)).stdout


FINISHING_SUPERVISOR = """
import sys, time
from pathlib import Path
from prefwatch.act.supervise import hold_lock
handle = hold_lock(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.readline()  # the test says when; then half a second of last alerts before exiting
time.sleep(0.5)
"""


def hold_as_supervisor(run_dir: Path) -> subprocess.Popen[str]:
    """A real process holding launch.lock the way the supervisor does, until told to exit."""
    process = subprocess.Popen(
        [sys.executable, "-c", FINISHING_SUPERVISOR, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    assert jobs.supervisor_alive(run_dir)
    return process


def test_resume_waits_for_a_supervisor_that_is_finishing(run_dir: Path) -> None:
    """Every cell ended, the supervisor still sends its last alerts: --resume waits for it to exit
    instead of refusing (seen in CI: a resume right after the grid ended was refused)."""
    cells = rundir.cell_dirs(run_dir)
    for cell_dir in cells[1:]:
        write_record(cell_dir, state="finished", exit_code=0)
    write_record(cells[0], state="stopped")
    supervisor = hold_as_supervisor(run_dir)
    try:
        # a cell that has not ended: the supervisor is not finishing, resume refuses at once
        write_record(cells[1], state="queued")
        with pytest.raises(jobs.LaunchError, match="supervisor is still running"):
            jobs.requeue_unfinished(run_dir)
        write_record(cells[1], state="finished", exit_code=0)
        assert supervisor.stdin is not None
        supervisor.stdin.write("done\n")
        supervisor.stdin.flush()  # it exits now; requeue must wait for that, not refuse
        resumed = jobs.requeue_unfinished(run_dir)
    finally:
        supervisor.kill()
        supervisor.wait()
    assert resumed.requeued == [cells[0].name]
    assert jobs.read_status(cells[0]).state == jobs.QUEUED
