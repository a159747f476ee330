"""The whole path for real: a grid file becomes four trained cells on the CPU, through the detached supervisor."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefwatch.analysis.analyse import analyse
from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parent.parent


def test_headless_launch_trains_every_cell(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefwatch",
            "launch",
            str(ROOT / "examples" / "tiny-grid.toml"),
            "--headless",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "tiny-demo"
    cells = sorted(p.name for p in (run_dir / "cells").iterdir())
    assert cells == ["dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"]
    for cell in cells:
        records = [json.loads(line) for line in (run_dir / "cells" / cell / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "rewards/margins" in r]
        evals = [r for r in records if "eval_rewards/margins" in r]
        assert len(train) >= 50 and len(evals) >= 2, cell
        assert "train_runtime" in records[-1]
        status = json.loads((run_dir / "cells" / cell / "status.json").read_text())
        assert status["state"] == "finished" and status["exit_code"] == 0
    assert "Verdict" in result.stdout
    grid = open_path(run_dir)
    grid.poll()
    analysis = analyse(grid)
    assert all(c.state == jobs.FINISHED for c in analysis.cells)
    assert all(c.diagnosis.review.heldout_pairs for c in analysis.cells)
    print(f"2x2 tiny grid, headless: {elapsed:.1f} s wall")


def test_detached_launch_from_a_relative_out_dir(tmp_path: Path) -> None:
    """The supervisor runs inside the run directory: a relative --out must still reach it."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefwatch",
            "launch",
            str(ROOT / "examples" / "tiny-grid.toml"),
            "--detach",
            "--out",
            "rel",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "rel" / "tiny-demo"
    assert jobs.supervisor_alive(run_dir)
    subprocess.run([sys.executable, "-m", "prefwatch", "stop", str(run_dir), "--grace", "2"], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and jobs.supervisor_alive(run_dir):
        time.sleep(0.1)
    states = {p.name: jobs.read_status(p).state for p in (run_dir / "cells").iterdir()}
    assert set(states.values()) == {jobs.STOPPED}, states


def test_a_supervisor_that_cannot_start_is_a_launch_error(tmp_path: Path) -> None:
    from prefwatch.files.grid import load_grid

    run_dir = jobs.create_run_dir(load_grid(ROOT / "examples" / "tiny-grid.toml"), tmp_path)
    (run_dir / "launch.lock").mkdir()  # the supervisor cannot take its lock
    with pytest.raises(
        jobs.LaunchError, match="the supervisor did not start: .*launch.lock: a folder where prefwatch writes"
    ):
        jobs.start_supervisor(run_dir)
