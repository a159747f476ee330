"""Every command and documented exit status as a real process, the monitor in a real terminal (tmux),
`s` on a real training job, and the readers' less travelled paths through the CLI.

Exit statuses (prefwatch/cli.py): 0 ok, 1 a job or the tool failed, 2 bad input, 3 not decisive
(3 is also pinned, case by case, in tests/test_verdicts_pinned.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from crafted import Cell, live_process, write_grid
from helpers import last_step, prefwatch, status, wait_for

from prefwatch.ingest.discover import open_path
from prefwatch.run import jobs

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_runs" / "tiny-demo"
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def tiny_grid(tmp_path: Path, name: str, steps: int, cells: str = "dpo", model: str = "tiny") -> Path:
    """The example grid, shortened: one DPO cell at r=8 unless told (``cells`` = "both": 2x1)."""
    text = (ROOT / "examples" / "tiny-grid.toml").read_text()
    text = text.replace('name = "tiny-demo"', f'name = "{name}"').replace("max_steps = 100", f"max_steps = {steps}")
    text = text.replace("eval_every = 10", f"eval_every = {min(10, steps)}").replace("ranks = [16, 8]", "ranks = [8]")
    text = text.replace('name = "tiny"  ', f'name = "{model}"  ')
    if cells == "dpo":
        text = text.replace('objectives = ["dpo", "simpo"]', 'objectives = ["dpo"]')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


# ---- launch --------------------------------------------------------------------------------------


def test_launch_check_prints_the_cells_and_starts_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    checked = prefwatch("launch", str(ROOT / "examples" / "tiny-grid.toml"), "--check", "--out", str(out))
    assert checked.returncode == 0 and checked.stderr == ""
    path = ROOT / "examples" / "tiny-grid.toml"
    assert checked.stdout == f"{path}: ok, 4 cells: dpo-r16, dpo-r8, simpo-r16, simpo-r8\n"
    assert not out.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "examples" / "tiny-grid.toml").read_text().replace("eval_every = 10", "eval_every = 0"))
    refused = prefwatch("launch", str(bad), "--check")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(f"prefwatch: {bad}:") and "eval_every" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_headless_launch_with_a_failing_cell_exits_1(tmp_path: Path) -> None:
    """A model that does not exist: the job fails, the launcher waits, prints the report, exits 1."""
    grid = tiny_grid(tmp_path, "broken", steps=5, model="/nonexistent/model")
    done = prefwatch("launch", str(grid), "--headless", "--out", str(tmp_path / "runs"), timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "broken"
    assert status(run_dir, "dpo-r8").state == jobs.FAILED and status(run_dir, "dpo-r8").exit_code not in (None, 0)
    assert "0 of 1 cells finished" in done.stdout
    assert "failed (exit" in done.stdout  # the report's state column


# ---- stop ----------------------------------------------------------------------------------------


def test_stop_an_unknown_cell_is_bad_input_and_stops_nothing(tmp_path: Path) -> None:
    with live_process() as pid:
        run_dir = write_grid(tmp_path, "g", [Cell("dpo-r8", "dpo", 8, 60, state="running", pid=pid)])
        done = prefwatch("stop", str(run_dir), "nosuch")
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr == f"prefwatch: {run_dir}: no cell named 'nosuch' (cells: dpo-r8)\n"
        assert jobs.process_start_time(pid) is not None  # the real job was left alone
        assert status(run_dir, "dpo-r8").state == jobs.RUNNING


# ---- replay ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", ["0", "-2"])
def test_replay_speed_must_be_positive(speed: str) -> None:
    done = prefwatch("replay", str(SAMPLE), "--speed", speed)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"prefwatch: --speed: must be > 0, got {float(speed)}\n"


def test_replay_speed_must_be_a_number() -> None:
    done = prefwatch("replay", str(SAMPLE), "--speed", "fast")
    assert done.returncode == 2 and "invalid float value: 'fast'" in done.stderr


def test_replay_of_nothing_readable_is_bad_input(tmp_path: Path) -> None:
    done = prefwatch("replay", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith(f"prefwatch: {tmp_path}: no logs found")


@needs_tmux
def test_replay_opens_the_monitor_and_q_quits_with_0(terminal, tmp_path: Path) -> None:
    exited = tmp_path / "exit-status"
    terminal.start("replay", SAMPLE, size=(120, 40), command="replay --speed 60", status=exited)
    terminal.wait_for("replay", lambda s: "replay ▶ 60×" in s and "dpo-r16" in s and "simpo-r8" in s)
    terminal.keys("replay", "End")
    terminal.wait_for("replay", lambda s: s.count("finished") >= 4)
    terminal.keys("replay", "q")
    assert exit_status(exited) == 0


def exit_status(status: Path, timeout: float = 60.0) -> int:
    """The exit status a terminal's command wrote to ``status`` when it ended (Terminal.start)."""
    wait_for(lambda: status.exists() and status.read_text().strip() != "", timeout, "the command to exit")
    return int(status.read_text())


@pytest.fixture
def terminal():
    from test_monitor_faults import Terminal

    made = Terminal()
    try:
        yield made
    finally:
        made.close()


@needs_tmux
def test_launch_opens_the_monitor_polling_and_quitting_leaves_the_job_running(tmp_path: Path, terminal) -> None:
    grid = tiny_grid(tmp_path, "watched", steps=400)
    run_dir = tmp_path / "runs" / "watched"
    exited = tmp_path / "exit-status"
    terminal.start("launch", grid, size=(120, 40), command=f"launch --poll --out {tmp_path / 'runs'}", status=exited)
    try:
        screen = terminal.wait_for("launch", lambda s: "dpo-r8" in s and "live (polling)" in s, timeout=120)
        assert "running" in screen or "queued" in screen
        wait_for(lambda: last_step(run_dir, "dpo-r8") >= 2, 300, "the job to log")
        terminal.wait_for("launch", lambda s: "running  step" in s, timeout=60)
        terminal.keys("launch", "q")
        assert exit_status(exited) == 0
        assert status(run_dir, "dpo-r8").state == jobs.RUNNING  # the monitor only watched
    finally:
        stopped = prefwatch("stop", str(run_dir), "--grace", "5")
        assert stopped.returncode == 0
    wait_for(lambda: status(run_dir, "dpo-r8").state in jobs.ENDED_STATES, 60, "the job to stop")


# ---- completion ------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (apt-get install zsh)")
def test_zsh_completion_parses_and_completes_commands_and_options(tmp_path: Path) -> None:
    done = prefwatch("completion", "zsh")
    assert done.returncode == 0 and done.stdout.startswith("#compdef prefwatch")
    script = tmp_path / "_prefwatch"
    script.write_text(done.stdout)
    assert subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True).returncode == 0
    # Load it as zsh would (compinit), then call the completer with compsys's builtins replaced by
    # functions that print what they are given: the candidates it offers.
    probe = f"""
        autoload -Uz compinit && compinit -u -d {tmp_path}/zcompdump
        source {script}
        print -r -- "registered: $_comps[prefwatch]"
        compadd() {{ print -r -- "compadd: $*" }}
        _arguments() {{ print -r -- "arguments: $*" }}
        words=(prefwatch ''); CURRENT=2; _prefwatch
        words=(prefwatch report ''); CURRENT=3; _prefwatch
        words=(prefwatch replay ''); CURRENT=3; _prefwatch
    """
    shown = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "registered: _prefwatch" in lines
    assert "compadd: -- launch attach replay report status stop init completion" in lines
    assert "arguments: *:file:_files --at --format --heldout-pairs --label --output --plot" in lines
    assert "arguments: *:file:_files --label --poll --speed" in lines


# ---- what the readers find, through the CLI --------------------------------------------------------


def report_json(path: Path, *args: str) -> dict:
    done = prefwatch("report", str(path), "--format", "json", *args)
    assert done.returncode in (0, 3), done.stderr
    return json.loads(done.stdout)


def trainer_state(steps: int, max_steps: int = 20, simpo: bool = False) -> dict:
    """DPO-shaped rewards (around 0), or SimPO's (β 2.0 × the mean log-probability, below 0)."""
    history: list[dict] = []
    base = -10.0 if simpo else 0.0
    for step in range(1, steps + 1):
        chosen, rejected = base + 0.05 * step, base - 0.05 * step
        history.append({"loss": 0.6, "rewards/margins": 0.1 * step, "rewards/chosen": chosen, "step": step})
        history[-1]["rewards/rejected"] = rejected
        if simpo:
            history[-1].update({"logps/chosen": chosen / 2.0, "logps/rejected": rejected / 2.0})
        if step % 10 == 0:
            history.append(
                {"eval_loss": 0.5, "eval_rewards/accuracies": 0.7, "eval_rewards/margins": 0.3, "step": step}
            )
    return {"log_history": history, "global_step": steps, "max_steps": max_steps}


def test_a_cpo_folder_is_read_as_simpo(tmp_path: Path) -> None:
    """TRL's CPOTrainer with loss_type="simpo" is SimPO: a folder named cpo-... is a SimPO cell."""
    folder = tmp_path / "runs" / "cpo-r4-beta2"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state(20, simpo=True)))
    (cell,) = report_json(tmp_path / "runs")["cells"]
    assert (cell["id"], cell["objective"], cell["rank"], cell["step"]) == ("cpo-r4-beta2", "simpo", 4, 20)
    assert cell["label"] == {"objective": "simpo", "source": "folder name", "note": None}


def test_trainer_state_at_the_output_dirs_root_beats_the_checkpoints(tmp_path: Path) -> None:
    """A finished TRL run saves trainer_state.json at its root: that one (20 steps) is read, not the
    older copy in checkpoint-10."""
    out = tmp_path / "dpo-r16-out"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text(json.dumps(trainer_state(10)))
    (out / "trainer_state.json").write_text(json.dumps(trainer_state(20)))
    (cell,) = report_json(out, "--heldout-pairs", "100")["cells"]
    assert (cell["objective"], cell["rank"], cell["step"], cell["max_steps"]) == ("dpo", 16, 20, 20)
    assert cell["state"] == "finished"  # global_step reached max_steps
    assert cell["review"]["evaluations"] == 2 and cell["review"]["heldout_pairs_won"] == 70


def test_a_new_checkpoint_is_read_when_it_appears(tmp_path: Path) -> None:
    out = tmp_path / "simpo-r8"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "trainer_state.json").write_text(json.dumps(trainer_state(10)))
    grid = open_path(out)
    grid.poll()
    (cell,) = grid.cells
    assert cell.series.last_step == 10 and not cell.series.finished
    (out / "checkpoint-20").mkdir()
    (out / "checkpoint-20" / "trainer_state.json").write_text(json.dumps(trainer_state(20)))
    assert grid.poll()
    assert cell.series.last_step == 20 and cell.series.finished
    assert list(cell.series.train.steps) == list(range(1, 21))  # the first ten not added twice
    assert not grid.poll()  # nothing new: nothing re-read


def test_rejected_lines_are_counted_by_reason_in_json(tmp_path: Path) -> None:
    """Each kind of bad line in a metrics log and an eval_pairs log, counted under its reason."""
    folder = tmp_path / "dpo-r8"
    folder.mkdir()
    good = [json.dumps({"loss": 0.5, "rewards/margins": 0.1, "step": s, "time": 1e9 + s}) for s in range(1, 11)]
    bad = [
        "{broken",  # not JSON
        "garbage",  # not JSON
        "[1, 2, 3]",  # not an object
        json.dumps({"loss": 0.5}),  # no step
        json.dumps(
            {"loss": "high", "rewards/margins": 0.2, "step": 11, "time": 1e9 + 11}
        ),  # wrong type (the rest is kept)
        json.dumps({"loss": 0.5, "step": 12, "padding": "x" * (1 << 20)}),  # line over 1 MiB
    ]
    (folder / "metrics.jsonl").write_text("\n".join(good + bad) + "\n")
    pairs = [
        json.dumps({"step": 10, "pair_ids": ["a", "b"], "chosen": [1.0, 0.0], "rejected": [0.0, 1.0]}),
        json.dumps({"step": 20, "chosen": [1.0], "rejected": [0.0, 1.0]}),  # shapes differ
        "not json either",
    ]
    (folder / "eval_pairs.jsonl").write_text("\n".join(pairs) + "\n")
    (cell,) = report_json(folder)["cells"]
    assert cell["ingest"]["rejected_by_reason"] == {
        "not JSON": 2,
        "not an object": 1,
        "no step": 1,
        "wrong type": 1,
        "line over 1 MiB": 1,
        "bad eval_pairs line": 2,
    }
    assert cell["ingest"]["rejected"] == 8
    assert cell["ingest"]["records"] == 11 and cell["step"] == 11
    assert cell["review"]["heldout_pairs_won"] == 1 and cell["review"]["heldout_pairs"] == 2


# ---- the monitor on real and crafted jobs ---------------------------------------------------------


def test_the_monitor_and_the_report_call_a_silent_running_job_stalled(tmp_path: Path) -> None:
    """A live job whose log is silent for ten minutes (it usually logs every second): stalled, in the
    report and on the monitor's panel, with the finding's message."""
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.widgets.cell_panel import CellPanel

    with live_process() as pid:
        cells = [
            Cell("dpo-r8", "dpo", 8, 60, state="running", pid=pid, last_time=time.time() - 600),
            Cell("dpo-r16", "dpo", 16, 60),
        ]
        run_dir = write_grid(tmp_path, "quiet", cells)
        silent = next(c for c in report_json(run_dir)["cells"] if c["id"] == "dpo-r8")
        assert silent["state"] == "stalled"
        (finding,) = [f for f in silent["findings"] if f["kind"] == "stalled"]
        assert finding["severity"] == "warn" and finding["message"].startswith("no new log line for 6")

        async def watch() -> None:
            app = MonitorApp(open_path(run_dir), mode="live")
            async with app.run_test(size=(120, 40)) as pilot:
                deadline = time.monotonic() + 60
                while app.view is None or len(app.screen.query(CellPanel)) < 2:
                    assert time.monotonic() < deadline
                    await pilot.pause(0.05)
                await pilot.pause()
                assert app.view.cell("dpo-r8").state == "stalled"
                assert app.view.cell("dpo-r16").state == "finished"
                panel = next(p for p in app.screen.query(CellPanel) if p.cell_id == "dpo-r8")
                assert panel.has_class("-warn")
                assert "stalled" in panel.status.plain
                assert "no new log line" in panel.reason.plain

        asyncio.run(watch())


def test_s_in_the_monitor_stops_a_real_training_job(tmp_path: Path) -> None:
    from prefwatch.tui.app import MonitorApp
    from prefwatch.tui.screens.confirm import ConfirmScreen
    from prefwatch.tui.widgets.cell_panel import CellPanel

    grid = tiny_grid(tmp_path, "stoppable", steps=400)
    launched = prefwatch("launch", str(grid), "--detach", "--out", str(tmp_path / "runs"))
    assert launched.returncode == 0, launched.stderr
    run_dir = tmp_path / "runs" / "stoppable"
    try:
        wait_for(lambda: last_step(run_dir, "dpo-r8") >= 2, 300, "the job to log")
        job = status(run_dir, "dpo-r8").record.pid

        async def stop() -> None:
            app = MonitorApp(open_path(run_dir), mode="live")
            async with app.run_test(size=(120, 40)) as pilot:
                deadline = time.monotonic() + 60
                while not isinstance(app.screen.focused, CellPanel) or app.view.cell("dpo-r8").state != "running":
                    assert time.monotonic() < deadline, "the monitor never showed the running job"
                    await pilot.pause(0.05)
                await pilot.press("s")
                while not isinstance(app.screen, ConfirmScreen):
                    assert time.monotonic() < deadline
                    await pilot.pause(0.05)
                await pilot.press("y")
                deadline = time.monotonic() + 120
                while app.view.cell("dpo-r8").state != "stopped":
                    assert time.monotonic() < deadline, "the monitor never showed the job stopped"
                    await pilot.pause(0.1)

        asyncio.run(stop())
        assert status(run_dir, "dpo-r8").state == jobs.STOPPED
        assert jobs.process_start_time(job) is None  # the training process is gone
        assert last_step(run_dir, "dpo-r8") < 400
    finally:
        prefwatch("stop", str(run_dir), "--grace", "5")
