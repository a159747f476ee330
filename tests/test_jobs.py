"""The jobs layer, one piece at a time: the supervisor's bookkeeping with stand-in job processes, liveness by
pid and start time, stopping a process group. The real training jobs are proven in test_launch.py."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import wait_for

from prefwatch.act.supervise import Slot, Supervisor, hold_lock, plan_slots
from prefwatch.files import rundir
from prefwatch.files.grid import load_grid
from prefwatch.files.settings import ResourcesSettings
from prefwatch.run import jobs
from prefwatch.run.backend import LaunchSpec

ROOT = Path(__file__).resolve().parent.parent


class StandInSupervisor(Supervisor):
    """Runs the real job (prefwatch.run.job) with a short Python program per cell instead of the trainer."""

    scripts: dict[str, str] = {}

    def spec(self, cell_dir: Path, resume: bool, slot: Slot) -> LaunchSpec:
        real = super().spec(cell_dir, resume, slot)
        return LaunchSpec([*real.argv, "--", sys.executable, "-c", self.scripts[cell_dir.name]], real.env, real.device)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    grid = load_grid(ROOT / "examples" / "tiny-grid.toml")
    return jobs.create_run_dir(grid, tmp_path / "runs")


def supervise(run_dir: Path, scripts: dict[str, str], slots: int = 2) -> threading.Thread:
    rundir.write_json_atomic(run_dir / "resources.json", {"devices": "cpu", "max_parallel": slots})
    StandInSupervisor.scripts = scripts
    supervisor = StandInSupervisor(run_dir, resume=False, log=io.StringIO())
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    return thread


def state(run_dir: Path, cell: str) -> jobs.CellStatus:
    return jobs.read_status(run_dir / "cells" / cell, supervisor_alive=True)


def test_run_dir_is_complete_and_never_overwritten(run_dir: Path) -> None:
    cells = sorted(p.name for p in (run_dir / "cells").iterdir())
    assert cells == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    assert (run_dir / "grid.toml").is_file()
    assert rundir.read_json(run_dir / "cells" / "dpo-r8" / "cell.json")["rank"] == 8
    grid = load_grid(ROOT / "examples" / "tiny-grid.toml")
    with pytest.raises(jobs.LaunchError, match="exists already"):
        jobs.create_run_dir(grid, run_dir.parent)
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 16 KiB tmpfs (as root, where mount is allowed); the test says why where it is not."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_read_only_out_dir_is_a_clear_error_and_leaves_nothing(small_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    grid = load_grid(ROOT / "examples" / "tiny-grid.toml")
    with pytest.raises(jobs.LaunchError, match="cannot create the run directory.*Read-only"):
        jobs.create_run_dir(grid, small_tmpfs)


def test_full_disk_is_a_clear_error_and_leaves_nothing(small_tmpfs: Path) -> None:
    with open(small_tmpfs / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 1024)
        except OSError:
            pass
    grid = load_grid(ROOT / "examples" / "tiny-grid.toml")
    with pytest.raises(jobs.LaunchError, match="No space left"):
        jobs.create_run_dir(grid, small_tmpfs)
    assert [p.name for p in small_tmpfs.iterdir()] == ["filler"]


def test_outcomes_exit_code_signal_and_finish(run_dir: Path) -> None:
    thread = supervise(
        run_dir,
        {
            "dpo-r16": "pass",
            "dpo-r8": "raise SystemExit(3)",
            "simpo-r16": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            "simpo-r8": "import time; time.sleep(0.2)",
        },
    )
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert state(run_dir, "dpo-r16").state == jobs.FINISHED
    failed = state(run_dir, "dpo-r8")
    assert failed.state == jobs.FAILED and failed.exit_code == 3 and failed.describe() == "failed (exit 3)"
    killed = state(run_dir, "simpo-r16")
    assert killed.state == jobs.FAILED and killed.signal == 9 and killed.describe() == "failed (signal 9)"
    assert state(run_dir, "simpo-r8").state == jobs.FINISHED


def test_slots_queue_the_rest(run_dir: Path) -> None:
    sleep = "import time; time.sleep(0.6)"
    thread = supervise(run_dir, dict.fromkeys(["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"], sleep), slots=1)
    wait_for(lambda: state(run_dir, "dpo-r16").state == jobs.RUNNING)
    assert [state(run_dir, c).state for c in ("dpo-r8", "simpo-r16", "simpo-r8")] == [jobs.QUEUED] * 3
    thread.join(timeout=20)
    starts = [rundir.read_json(run_dir / "cells" / c / "status.json")["start_time"] for c in ("dpo-r16", "dpo-r8")]
    ends = [rundir.read_json(run_dir / "cells" / c / "status.json")["end_time"] for c in ("dpo-r16", "dpo-r8")]
    assert starts[1] >= ends[0]


def test_stop_terminates_the_group_and_says_stopped(run_dir: Path) -> None:
    # The job ignores SIGTERM and has a child: SIGKILL after the grace period takes the whole group.
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    scripts = {"dpo-r16": stubborn, "dpo-r8": "import time; time.sleep(60)", "simpo-r16": "pass", "simpo-r8": "pass"}
    thread = supervise(run_dir, scripts, slots=2)
    wait_for(lambda: state(run_dir, "dpo-r16").state == jobs.RUNNING and state(run_dir, "dpo-r8").state == jobs.RUNNING)
    pgid = rundir.read_json(run_dir / "cells" / "dpo-r16" / "status.json")["pgid"]
    stopped = jobs.request_stop(run_dir, grace=0.5).stopped
    assert set(stopped) == {"dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"}
    thread.join(timeout=20)
    assert [state(run_dir, c).state for c in ("dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8")] == [jobs.STOPPED] * 4
    assert live_members(pgid) == []


def live_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (a container's init may leave zombies unreaped)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def test_liveness_needs_pid_and_start_time() -> None:
    me = os.getpid()
    assert jobs.is_alive(me, jobs.process_start_time(me))
    assert not jobs.is_alive(me, (jobs.process_start_time(me) or 0) + 1)  # a reused pid
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not jobs.is_alive(dead.pid, None)


def test_running_cell_without_process_or_supervisor_is_lost(run_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cell = run_dir / "cells" / "dpo-r16"
    rundir.write_json_atomic(cell / "status.json", {"state": "running", "pid": dead.pid, "pid_start": 1.0})
    rundir.write_json_atomic(run_dir / "launch.lock", {"pid": dead.pid, "pid_start": 1.0})
    assert jobs.supervisor_alive(run_dir) is False
    assert jobs.read_status(cell).state == jobs.LOST
    assert jobs.read_status(run_dir / "cells" / "dpo-r8").state == jobs.QUEUED
    assert jobs.read_status(run_dir / "cells" / "dpo-r8", supervisor_alive=False).state == jobs.LOST


def test_lock_is_exclusive_and_released_by_death(run_dir: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from prefwatch.act.supervise import hold_lock;"
            "from pathlib import Path; h = hold_lock(Path(sys.argv[1])); print(h is not None, flush=True); time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "True"
    assert hold_lock(run_dir) is None
    assert jobs.supervisor_alive(run_dir) is True
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert jobs.supervisor_alive(run_dir) is False
    assert hold_lock(run_dir) is not None


def test_slots_follow_resources() -> None:
    assert len(plan_slots(ResourcesSettings(devices=[0, 1], cells_per_device=2))) == 4
    assert [s.gpu for s in plan_slots(ResourcesSettings(devices=[3], cells_per_device=1))] == [3]
    cpu = plan_slots(ResourcesSettings(devices="cpu", threads_per_cell=1))
    assert len(cpu) == (os.cpu_count() or 1) and all(s.gpu is None for s in cpu)
    assert len(plan_slots(ResourcesSettings(devices="cpu", max_parallel=1))) == 1
