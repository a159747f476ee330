"""Faults with the real thing: real training jobs killed, stopped and resumed through the real supervisor."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from helpers import last_step, prefwatch, status, wait_for

from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parent.parent


def write_grid(tmp_path: Path, name: str, steps: int) -> Path:
    text = (ROOT / "examples" / "tiny-grid.toml").read_text()
    text = text.replace('name = "tiny-demo"', f'name = "{name}"').replace("max_steps = 100", f"max_steps = {steps}")
    text = text.replace("log_every = 1", "log_every = 1\nsave_every = 20")
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_kill_stop_resume_with_real_jobs(tmp_path: Path) -> None:
    grid = write_grid(tmp_path, "faults", steps=60)
    launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
    assert launched.returncode == 0, launched.stderr
    run_dir = tmp_path / "runs" / "faults"

    # kill -9 one training process: the supervisor records it as failed by signal 9 (it does so within a
    # fraction of a second; the deadline is generous because training fills both cores).
    wait_for(lambda: last_step(run_dir, "dpo-r16") >= 3, 120, "dpo-r16 to log")
    pid = json.loads((run_dir / "cells" / "dpo-r16" / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status(run_dir, "dpo-r16").state == jobs.FAILED, 60, "failed by signal 9")
    assert status(run_dir, "dpo-r16").signal == 9

    # restart it while the grid runs on: the live supervisor queues it again.
    assert jobs.restart_cells(run_dir, ["dpo-r16"]) == ["dpo-r16"]
    assert status(run_dir, "dpo-r16").state in (jobs.QUEUED, jobs.RUNNING)

    # stop another after its first checkpoint: stopped, not failed.
    wait_for(lambda: last_step(run_dir, "dpo-r8") >= 25, 180, "dpo-r8 to pass its checkpoint")
    stopped = prefwatch("stop", str(run_dir), "dpo-r8")
    assert stopped.returncode == 0 and "dpo-r8" in stopped.stdout
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.STOPPED, 60, "stopped")

    # the other cells finish with complete logs.
    wait_for(
        lambda: all(status(run_dir, c).state in jobs.ENDED_STATES for c in ("dpo-r16", "simpo-r16", "simpo-r8")),
        240,
        "the rest",
    )
    for cell in ("dpo-r16", "simpo-r16", "simpo-r8"):
        assert status(run_dir, cell).state == jobs.FINISHED
        lines = (run_dir / "cells" / cell / "metrics.jsonl").read_text().splitlines()
        assert "train_runtime" in "".join(lines[-2:]) and last_step(run_dir, cell) == 60

    # a second launch into the same directory is refused and changes nothing.
    again = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
    assert again.returncode == 2 and "exists already" in again.stderr

    # resume: the stopped cell continues from its checkpoint and finishes.
    stopped_at = last_step(run_dir, "dpo-r8")
    resumed = prefwatch("launch", str(run_dir), "--resume", "--headless")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert status(run_dir, "dpo-r8").state == jobs.FINISHED
    out = (run_dir / "cells" / "dpo-r8" / "stdout.log").read_text()
    assert "checkpoint-20" in out or "checkpoint-40" in out
    source = open_path(run_dir)
    source.poll()
    resumed_cell = next(c for c in source.cells if c.id == "dpo-r8")
    assert resumed_cell.series.train.segments == 2 and stopped_at > 20
    steps = resumed_cell.series.train.steps
    assert list(steps) == sorted(steps) and steps[-1] == 60


def test_everything_killed_reads_lost_then_resumes(tmp_path: Path) -> None:
    """kill -9 of the supervisor and the job (a reboot, say): the cell reads lost, not running, and resumes."""
    grid = write_grid(tmp_path, "reboot", steps=30)
    text = grid.read_text().replace('objectives = ["dpo", "simpo"]', 'objectives = ["dpo"]')
    grid.write_text(text.replace("ranks = [16, 8]", "ranks = [8]"))
    assert prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs")).returncode == 0
    run_dir = tmp_path / "runs" / "reboot"
    wait_for(lambda: last_step(run_dir, "dpo-r8") >= 3, 120, "dpo-r8 to log")
    supervisor = json.loads((run_dir / "launch.lock").read_text())["pid"]
    job = json.loads((run_dir / "cells" / "dpo-r8" / "status.json").read_text())["pgid"]
    os.kill(supervisor, signal.SIGKILL)
    os.killpg(job, signal.SIGKILL)
    wait_for(lambda: status(run_dir, "dpo-r8").state == jobs.LOST, 60, "lost")
    shown = prefwatch("status", str(run_dir))
    assert "lost" in shown.stdout and "gone" in shown.stdout
    resumed = prefwatch("launch", str(run_dir), "--resume", "--headless")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert status(run_dir, "dpo-r8").state == jobs.FINISHED and last_step(run_dir, "dpo-r8") == 30
