"""Start-up: `prefwatch --help` against `python -c "import argparse"`, and the first frame of `attach`.

    python bench/bench_startup.py [RUNS]

- help: the commands run interleaved, RUNS times each; medians and their ratio to the floor (goal <= 3x).
- attach: `prefwatch attach` of a 4-cell folder holding 100k lines a cell, in tmux (160x48), from
  the command's start to the first screen that shows a cell's panel (tmux capture-pane, polled);
  median of 3. Goal <= 1 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from table import Row, format_rows  # noqa: E402

COMMANDS = {
    "python -c 'import argparse'": [sys.executable, "-c", "import argparse"],
    "prefwatch --help": [sys.executable, "-m", "prefwatch", "--help"],
    "prefwatch launch --help": [sys.executable, "-m", "prefwatch", "launch", "--help"],
    "prefwatch report --help": [sys.executable, "-m", "prefwatch", "report", "--help"],
    "prefwatch --version": [sys.executable, "-m", "prefwatch", "--version"],
}


def help_rows(runs: int) -> list[Row]:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    base = 1000 * statistics.median(times["python -c 'import argparse'"])
    return [
        Row(name, 1000 * statistics.median(values), "ms", base, 3.0, "floor: python + argparse")
        for name, values in times.items()
        if name.startswith("prefwatch")
    ]


def first_frame_seconds(grid: Path, marker: str, timeout: float = 30.0) -> float:
    """Seconds from starting `prefwatch attach` in tmux to a screen showing ``marker`` (a cell's panel)."""
    start = time.perf_counter()
    app = harness.start_app(harness.monitor_command(grid, headless=False), True, "startup")
    try:
        while time.perf_counter() - start < timeout:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", app.session or ""], capture_output=True, text=True
            ).stdout
            if marker in screen:
                return time.perf_counter() - start
            time.sleep(0.01)
        return float("inf")
    finally:
        app.stop()


def attach_rows(lines: int = 100_000) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        grid = harness.make_folder(Path(tmp), 4, "plain", writer_pid=None, lines=lines)
        # The panel shows the cell's step: a frame with data, not the empty screen.
        marker = f"step {lines}"
        seconds = [first_frame_seconds(grid, marker) for _ in range(3)]
    return [
        Row(f"attach first frame, 4 cells x {lines // 1000}k lines, tmux", statistics.median(seconds), "s", None, 1.0)
    ]


def run(runs: int = 10) -> list[Row]:
    return help_rows(runs) + attach_rows()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(harness.uptime())
    print(format_rows(run(runs)))
    print(harness.uptime())


if __name__ == "__main__":
    main()
