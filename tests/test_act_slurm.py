"""Under Slurm there is no supervisor of ours: ``attach --headless`` follows the grid, applies its policy
(scancel through the normal stop) and sends its alerts. A real one-node cluster (test_slurm's fixture)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import status, wait_for
from test_slurm import cluster, prefwatch, slurm_grid  # noqa: F401 (cluster: the module's fixture)
from webhook_receiver import SECRET_PATH, Receiver


def test_attach_headless_stops_a_diverged_slurm_cell_and_alerts(cluster, tmp_path: Path) -> None:  # noqa: F811
    receiver = Receiver()
    follower = None
    try:
        grid = slurm_grid(tmp_path, "sldiv", 300, objectives='["dpo"]')
        text = grid.read_text().replace("max_steps = 300\n", "max_steps = 300\nlearning_rate = 2.0\n")
        grid.write_text(text + f'[alerts]\nwebhook = "{receiver.url}"\nmin_interval = 0\n')
        launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
        assert launched.returncode == 0, launched.stderr
        run_dir = tmp_path / "runs" / "sldiv"
        follower = subprocess.Popen(
            [sys.executable, "-m", "prefwatch", "attach", str(run_dir), "--headless"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for(lambda: status(run_dir, "dpo-r8").state == "stopped", 300, "the policy to stop the Slurm cell")
        assert status(run_dir, "dpo-r8").describe() == "stopped (non_finite)"
        output, _ = follower.communicate(timeout=120)
        assert follower.returncode == 0, output
        texts = "\n".join(receiver.texts())
        assert "dpo-r8: non_finite @ step" in texts and "dpo-r8: stopped (non_finite)" in texts
        assert "sldiv ended. Verdict:" in texts
        assert "policy: stopping dpo-r8 (non_finite)" in output and SECRET_PATH not in output
        steps = [line for line in (run_dir / "cells/dpo-r8/metrics.jsonl").read_text().splitlines()]
        assert len(steps) < 200  # stopped long before its 300 steps
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        receiver.close()
