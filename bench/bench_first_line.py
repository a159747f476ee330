"""From a run's first line: cells that start empty, what a user watches right after `launch`.

    python bench/bench_first_line.py [--seconds 20] [--first 60] [--only tmux|headless]

4 cells of a plain folder, each metrics.jsonl empty when the apps start; a writer then appends one
TRL-shaped line a second to each (an eval line after every 10th step). The monitor and the floor
app (bench/floor_app.py) follow the same files at the same time, in a real terminal (tmux 160x48)
and headless (frames rendered to ANSI, thrown away). Two windows, each on fresh files:

- the first ``--first`` seconds of the run, from the writer's first line (the apps are up and
  settled on the empty files before it starts): the start of a run measured on its own;
- ``--seconds`` after a warm-up of 4 s from the first line (the run under way, as bench_cpu
  measures it, but from empty logs instead of 300 lines).

CPU is each process's run time over the window in percent of one core (bench/harness.py). Goal
(issue 27): the monitor at most 1.5x the floor app.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from table import Row, format_rows  # noqa: E402

CELLS = 4
RATE = 1.0
UP = 4.0  # seconds for both apps to start and draw the empty grid before the first line
WARMUP = 4.0  # seconds from the first line to the measured window of the steady row


def measure(root: Path, terminal: bool, delay: float, seconds: float, tag: str) -> tuple[float, float]:
    """(monitor %, floor %) over ``seconds``, starting ``delay`` seconds after the first line."""
    (root / tag).mkdir()
    folder = harness.make_folder(root / tag, CELLS, "plain", writer_pid=None, lines=0)
    monitor = harness.start_app(harness.monitor_command(folder, not terminal), terminal, f"m{tag}")
    floor = harness.start_app(harness.floor_command(folder, not terminal), terminal, f"f{tag}")
    writer = None
    try:
        time.sleep(UP)
        writer = harness.start_writer(folder, RATE, delay + seconds + 5)
        time.sleep(delay)
        mine, base = harness.measure_cpu([monitor.pid, floor.pid], seconds)
    finally:
        monitor.stop()
        floor.stop()
        if writer is not None:
            writer.terminate()
            writer.wait()
        shutil.rmtree(folder, ignore_errors=True)
    return mine, base


def run(seconds: float = 20.0, first: float = 60.0, only: str | None = None) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        for terminal in (True, False):
            where = "tmux 160x48" if terminal else "headless"
            if only not in (None, "tmux" if terminal else "headless"):
                continue
            for label, delay, window in ((f"first {first:g} s", 0.0, first), ("from empty", WARMUP, seconds)):
                tag = f"{'t' if terminal else 'h'}{int(delay)}"
                mine, base = measure(Path(tmp), terminal, delay, window, tag)
                name = f"CPU {CELLS} cells x {RATE:g} line/s, {label}, {where}"
                print(f"  {name}: monitor {mine:.2f} %  floor {base:.2f} %  ({mine / base:.2f}x)", flush=True)
                rows.append(Row(name, mine, "%", base, 1.5))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--first", type=float, default=60.0)
    parser.add_argument("--only", choices=("tmux", "headless"))
    args = parser.parse_args()
    print(harness.uptime(), flush=True)
    rows = run(args.seconds, args.first, args.only)
    print(harness.uptime())
    print(format_rows(rows))


if __name__ == "__main__":
    main()
