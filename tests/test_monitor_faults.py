"""Faults with the real thing: the real monitor (``python -m prefwatch attach``) in a real terminal (tmux).

The grid is "running" without training: each cell's status.json names a ``sleep`` process started in a
session of its own (as the supervisor starts jobs), and the test appends the cells' metric lines itself.
Every wait is for a condition on the screen or the process table, with a generous deadline; nothing
asserts on timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefwatch.files import rundir
from prefwatch.run import jobs

pytest.importorskip("textual")

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

CELLS = [("dpo", 16), ("dpo", 8), ("simpo", 16), ("simpo", 8)]
MAX_STEPS = 40
TIMEOUT = 30.0  # seconds for a monitor to start and draw on a loaded 2-core machine


# ---- a running grid of stand-in jobs -------------------------------------------------------------


def record(step: int, objective: str, **override: float) -> dict:
    scale = 1.0 if objective == "dpo" else 2.0
    # SimPO's rewards are β (2.0) × the mean log-probability, below 0 from the first step; DPO's start near 0.
    base = 0.0 if objective == "dpo" else -10.0
    chosen, rejected = base + scale * 0.02 * step, base - scale * 0.015 * step
    logps = {} if objective == "dpo" else {"logps/chosen": chosen / scale, "logps/rejected": rejected / scale}
    line = {
        "loss": 0.6,
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": 0.7,
        **logps,
        "step": step,
        "time": time.time(),
    }
    line.update(override)
    return line


def append(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


class Grid:
    """A run directory whose cells are "running": live stand-in processes, logs the test appends to."""

    def __init__(self, root: Path, steps: int = 20) -> None:
        self.path = root / "fault-grid"
        self.jobs: dict[str, subprocess.Popen] = {}
        for index, (objective, rank) in enumerate(CELLS):
            cell_id = f"{objective}-r{rank}"
            cell_dir = self.path / rundir.CELLS_DIR / cell_id
            cell_dir.mkdir(parents=True)
            settings = {"id": cell_id, "index": index, "objective": objective, "rank": rank, "seed": None}
            settings["train"] = {"max_steps": MAX_STEPS, "eval_every": 10}
            rundir.write_json_atomic(cell_dir / rundir.CELL_FILE, settings)
            job = subprocess.Popen(["sleep", "300"], start_new_session=True)
            self.jobs[cell_id] = job
            status = {
                "state": jobs.RUNNING,
                "pid": job.pid,
                "pgid": job.pid,
                "pid_start": jobs.process_start_time(job.pid),
                "host": socket.gethostname(),
                "start_time": time.time(),
            }
            rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)
            append(cell_dir / rundir.METRICS_FILE, [record(s, objective) for s in range(1, steps + 1)])
            (cell_dir / rundir.STDOUT_FILE).write_text("started\n")

    def cell(self, cell_id: str) -> Path:
        return self.path / rundir.CELLS_DIR / cell_id

    def metrics(self, cell_id: str) -> Path:
        return self.cell(cell_id) / rundir.METRICS_FILE

    def all_running(self) -> bool:
        return all(
            job.poll() is None and jobs.read_status(self.cell(cell_id)).state == jobs.RUNNING
            for cell_id, job in self.jobs.items()
        )

    def stop(self) -> None:
        for job in self.jobs.values():
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(5)


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[Grid]:
    made = Grid(tmp_path)
    try:
        yield made
    finally:
        made.stop()


# ---- the monitor in a real terminal ----------------------------------------------------------------


class Terminal:
    """One tmux server of its own (not the user's), one window per monitor."""

    def __init__(self) -> None:
        self.socket = f"prefwatch-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        return done.stdout

    def start(
        self,
        name: str,
        run_dir: Path,
        size: tuple[int, int] = (80, 24),
        command: str = "attach",
        status: Path | None = None,
    ) -> int:
        """Start ``prefwatch <command> run_dir`` in a detached 80×24 terminal; returns the pane's pid:
        the monitor's, or with ``status`` the shell's that writes the monitor's exit status there
        when it ends (tmux sometimes marks a pane dead without its status)."""
        monitor = f"{sys.executable} -m prefwatch {command} {run_dir}"
        monitor = f"{monitor}; echo $? > {status}" if status is not None else f"exec {monitor}"
        width, height = size
        env = ["-e", "TERM=xterm-256color", "-e", "COLORTERM=truecolor"]
        self.tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), *env, monitor)
        self.tmux("set-option", "-t", name, "remain-on-exit", "on")
        return int(self.tmux("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0])

    def screen(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", name)

    def keys(self, name: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", name, *keys)

    def wait_for(self, name: str, condition: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(name)
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"screen of {name} never showed what was expected:\n{text}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")
        folder = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}"
        (folder / self.socket).unlink(missing_ok=True)  # tmux leaves its socket file behind


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    made = Terminal()
    try:
        yield made
    finally:
        made.close()


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jobs.process_start_time(pid) is None:
            return True
        time.sleep(0.05)
    return False


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def panel_lines(screen: str) -> list[str]:
    """The grid part of a screen (above the summary strip), which two monitors of one grid draw alike."""
    lines = screen.splitlines()
    return lines[: len(lines) - 4]


def same_screens(terminal: Terminal) -> None:
    """Both monitors draw the same panels (waiting out a frame one of them has not drawn yet)."""
    terminal.wait_for("one", lambda text: panel_lines(text) == panel_lines(terminal.screen("two")))


def shows_all_steps(step: int) -> Callable[[str], bool]:
    return lambda text: text.count(f"running  step {step}/{MAX_STEPS}") == len(CELLS)


# ---- tests -------------------------------------------------------------------------------------------


def test_sighup_leaves_every_job_running_and_a_new_attach_shows_all_history(grid, terminal):
    monitor = terminal.start("first", grid.path)
    terminal.wait_for("first", shows_all_steps(20))
    os.kill(monitor, signal.SIGHUP)  # what the terminal does when the SSH connection drops
    assert gone(monitor), "the monitor did not end on SIGHUP"
    assert grid.all_running()
    # Training goes on while no monitor watches.
    for objective, rank in CELLS:
        append(grid.metrics(f"{objective}-r{rank}"), [record(s, objective) for s in range(21, 31)])
    terminal.start("second", grid.path)
    text = terminal.wait_for("second", shows_all_steps(30))
    assert "4 running" in text
    assert grid.all_running()


def test_two_monitors_on_one_grid_show_the_same_and_write_nothing(grid, terminal):
    before = tree_state(grid.path)
    first = terminal.start("one", grid.path)
    second = terminal.start("two", grid.path)
    terminal.wait_for("one", shows_all_steps(20))
    terminal.wait_for("two", shows_all_steps(20))
    same_screens(terminal)
    for objective, rank in CELLS:  # both follow the same appends
        append(grid.metrics(f"{objective}-r{rank}"), [record(21, objective)])
    after_append = tree_state(grid.path)
    terminal.wait_for("one", shows_all_steps(21))
    terminal.wait_for("two", shows_all_steps(21))
    same_screens(terminal)
    for name in ("one", "two"):
        terminal.keys(name, "q")
    assert gone(first) and gone(second)
    after = tree_state(grid.path)
    assert after == after_append  # nothing written, created or touched by either monitor
    assert set(after) == set(before)
    assert grid.all_running()


def test_an_appended_line_reaches_the_real_screen(grid, terminal):
    terminal.start("live", grid.path)
    terminal.wait_for("live", shows_all_steps(20))
    append(grid.metrics("dpo-r16"), [record(21, "dpo", **{"rewards/margins": 7.25})])
    text = terminal.wait_for("live", lambda t: "+7.250" in t and f"step 21/{MAX_STEPS}" in t)
    assert text.count(f"step 20/{MAX_STEPS}") == 3  # the other cells did not move
    terminal.keys("live", "q")


def test_an_unreadable_log_shows_in_its_panel_and_the_rest_goes_on(grid, terminal):
    terminal.start("faults", grid.path)
    terminal.wait_for("faults", shows_all_steps(20))
    # One cell's log replaced by a folder, another's grows a line of broken bytes.
    broken = grid.metrics("dpo-r8")
    broken.unlink()
    broken.mkdir()
    with open(grid.metrics("simpo-r16"), "ab") as f:
        f.write(b"\xff\xfe\x00garbage{\n")
    terminal.wait_for("faults", lambda t: "not a regular file" in t and "1 bad line" in t)
    # The monitor goes on: a healthy cell still updates.
    append(grid.metrics("simpo-r8"), [record(21, "simpo", **{"rewards/margins": 9.5})])
    terminal.wait_for("faults", lambda t: "+9.500" in t and f"step 21/{MAX_STEPS}" in t)
    # And the broken one recovers when its log is a file again.
    broken.rmdir()
    append(broken, [record(s, "dpo") for s in range(1, 24)])
    terminal.wait_for("faults", lambda t: "not a regular file" not in t and f"step 23/{MAX_STEPS}" in t)
    terminal.keys("faults", "q")
