"""Acting on what it sees, with real grids on the embedded tiny model: alerts reach a webhook with no
monitor open, the stop policy ends a diverged cell, each cell keeps its best adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import prefwatch, status, wait_for
from webhook_receiver import SECRET_PATH, Receiver

from prefwatch.act import alerts
from prefwatch.files import rundir
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parents[1]


def eval_accuracies(cell_dir: Path) -> list[tuple[int, float]]:
    out = []
    for line in (cell_dir / rundir.EVAL_PAIRS_FILE).read_text().splitlines():
        record = json.loads(line)
        out.append((record["step"], float(np.mean(np.array(record["chosen"]) > np.array(record["rejected"])))))
    return out


def test_the_detached_tiny_grid_alerts_a_webhook_and_keeps_each_cells_best_adapter(tmp_path):
    """The issue's "done means": launch --detach with [alerts] webhook, no monitor, everything arrives."""
    receiver = Receiver()
    try:
        grid = tmp_path / "tiny-grid.toml"
        example = (ROOT / "examples" / "tiny-grid.toml").read_text()
        grid.write_text(example + f'\n[alerts]\nwebhook = "{receiver.url}"\nmin_interval = 2\n')
        launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
        assert launched.returncode == 0, launched.stderr
        run_dir = tmp_path / "runs" / "tiny-demo"
        wait_for(lambda: any("Verdict:" in t for t in receiver.texts()), 900, "the verdict at the webhook")
        texts = "\n".join(receiver.texts())
        cells = [p.name for p in rundir.cell_dirs(run_dir)]
        for cell in cells:
            assert f"{cell}: finished" in texts
            assert status(run_dir, cell).state == "finished"
        assert "overoptimization @ step" in texts  # the tiny demo peaks early: a finding to hear about
        report = prefwatch("report", str(run_dir))
        headline = json.loads(prefwatch("report", str(run_dir), "--format", "json").stdout)["verdict"]
        decisive = "decisive" if headline["decisive"] else "not decisive"
        assert f"Verdict: {headline['objective']} r={headline['rank']} ({decisive})" in texts
        # What was sent is on record, each alert once; the secret path is nowhere in the logs.
        sent = alerts.read_sent(run_dir)
        assert len({a.key for a in sent}) == len(sent)
        assert sum(a.kind == "verdict" for a in sent) == 1
        supervisor_log = (run_dir / "supervisor.log").read_text()
        assert "alerts go to webhook 127.0.0.1" in supervisor_log and SECRET_PATH not in supervisor_log
        # Each cell kept the adapter of its best held-out evaluation: the first at the top accuracy.
        markdown = prefwatch("report", str(run_dir), "--format", "md").stdout
        for cell in cells:
            cell_dir = run_dir / "cells" / cell
            best = json.loads((cell_dir / "best" / "best.json").read_text())
            accuracies = eval_accuracies(cell_dir)
            top = max(a for _, a in accuracies)
            assert best["step"] == next(s for s, a in accuracies if a == top)
            assert best["heldout_accuracy"] == pytest.approx(top)
            config = json.loads((cell_dir / "best" / "adapter_config.json").read_text())
            assert config["r"] == json.loads((cell_dir / "cell.json").read_text())["rank"]
            assert (cell_dir / "best" / "adapter_model.safetensors").stat().st_size > 0
            line = f"{cell}: best: step {best['step']}, held-out accuracy {top:.2f} (cells/{cell}/best/)"
            assert line in report.stdout.replace("\n", " ") or line in markdown
            assert line in markdown
        peaked_early = [
            c for c in cells if json.loads((run_dir / "cells" / c / "best" / "best.json").read_text())["step"] < 100
        ]
        assert peaked_early, "the tiny demo's held-out accuracy peaks before the end"
        assert not list(run_dir.glob("cells/*/.best.*"))  # no staging folder left behind
    finally:
        receiver.close()


DIVERGING = """
name = "{name}"
[train]
max_steps = 300
learning_rate = 2.0
eval_every = 50
save_every = 300
[grid]
objectives = ["dpo"]
ranks = [8]
[resources]
devices = "cpu"
[policy]
stop_on = {stop_on}
"""


def test_the_policy_stops_a_diverged_cell_and_says_why(tmp_path):
    grid = tmp_path / "diverge.toml"
    grid.write_text(DIVERGING.format(name="diverge", stop_on='["non_finite"]'))
    launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path))
    assert launched.returncode == 0, launched.stderr
    run_dir = tmp_path / "diverge"
    wait_for(lambda: status(run_dir, "dpo-r8").state == "stopped", 600, "the policy to stop the diverged cell")
    cell = status(run_dir, "dpo-r8")
    assert cell.describe() == "stopped (non_finite)" and cell.record.stop_reason == "non_finite"
    steps = [json.loads(line)["step"] for line in (run_dir / "cells/dpo-r8/metrics.jsonl").read_text().splitlines()]
    assert max(steps) < 150, f"stopped at step {max(steps)} of 300"
    shown = prefwatch("status", str(run_dir)).stdout  # 80 columns: the state may wrap in its column
    assert "stopped (non_finite)" in shown or ("stopped" in shown and "(non_finite)" in shown)
    assert "stopped (non_finite)" in prefwatch("report", str(run_dir), "--format", "md").stdout
    assert "policy: stopping dpo-r8 (non_finite)" in (run_dir / "supervisor.log").read_text()


def test_attach_headless_sends_a_grids_alerts_once(tmp_path):
    """A grid with no follower of ours (as under Slurm): attach --headless sends; a second one repeats nothing."""
    receiver = Receiver()
    try:
        run = tmp_path / "tiny-demo"
        shutil.copytree(ROOT / "sample_runs" / "tiny-demo", run)
        with open(run / "grid.toml", "a") as f:
            f.write(f'\n[alerts]\nwebhook = "{receiver.url}"\nmin_interval = 0\n')
        first = prefwatch("attach", str(run), "--headless", timeout=120)
        assert first.returncode == 0, first.stderr
        texts = "\n".join(receiver.texts())
        for cell in ("dpo-r16", "dpo-r8", "simpo-r16", "simpo-r8"):
            assert f"{cell}: finished" in texts and f"{cell}: overoptimization @ step" in texts
        assert texts.count("Verdict: dpo r=8 (decisive)") == 1
        assert "alert: tiny-demo ended. Verdict: dpo r=8 (decisive)" in first.stdout
        assert SECRET_PATH not in first.stdout + first.stderr
        posts = len(receiver.bodies)
        second = prefwatch("attach", str(run), "--headless", timeout=120)
        assert second.returncode == 0 and len(receiver.bodies) == posts
    finally:
        receiver.close()


OVEROPTIMISING = """
name = "peak"
[train]
max_steps = 300
eval_every = 10
save_every = 300
[grid]
objectives = ["simpo"]
ranks = [8]
[resources]
devices = "cpu"
[policy]
stop_on = ["non_finite", "overoptimization"]
patience = 3
"""


def test_the_policy_stops_a_cell_past_its_held_out_peak_and_keeps_the_peak_adapter(tmp_path):
    grid = tmp_path / "peak.toml"
    grid.write_text(OVEROPTIMISING)
    assert prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path)).returncode == 0
    run_dir = tmp_path / "peak"
    wait_for(lambda: status(run_dir, "simpo-r8").state in jobs.ENDED_STATES, 900, "the cell to end")
    assert status(run_dir, "simpo-r8").describe() == "stopped (overoptimization)"
    cell_dir = run_dir / "cells" / "simpo-r8"
    accuracies = eval_accuracies(cell_dir)
    best = json.loads((cell_dir / "best" / "best.json").read_text())
    top = max(a for _, a in accuracies)
    assert best["step"] == next(s for s, a in accuracies if a == top) < 300
    evaluations_after = [s for s, _ in accuracies if s > best["step"]]
    assert len(evaluations_after) >= 3  # patience: three evaluations that did not beat it, then the stop
    assert max(s for s, _ in accuracies) < 300
    report = prefwatch("report", str(run_dir), "--format", "md").stdout
    assert f"simpo-r8: best: step {best['step']}, held-out accuracy {top:.2f} (cells/simpo-r8/best/)" in report
    assert "stopped (overoptimization)" in report
