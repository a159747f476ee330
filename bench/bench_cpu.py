"""CPU of the monitor against the floor app, both following the same growing files at the same time.

    python bench/bench_cpu.py [--seconds 10] [--quick]

Loads: 4 cells x 1 line/s, 4 cells x 10 lines/s, 64 cells x 1 line/s, each on a prefwatch run
directory and on a plain folder of metrics.jsonl files, in a real terminal (tmux, 160x48) and
headless (frames rendered to ANSI, thrown away). CPU is the app process's utime + stime from
/proc over the measured seconds, in percent of one core. Also: a finished grid on screen (nothing
changes; goal < 0.3 % of a core) and the monitor's memory at 64 cells. Data under the system temp dir.
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

WARMUP = 4.0  # seconds from start to measuring: imports, first read, first frames
PREFILL = 300  # lines a cell holds before the writer starts (a run under way)
# A finished grid is measured once both apps have settled: 4 s after the start, the first read of
# 4 x 2000 lines and the first frames still show in a 10 s window (both apps read 0.3-0.4 % of a
# core there; from 10 s on, 0.23-0.31 %, the monitor no more than the floor).
SETTLE = 10.0


def load_goal(rate: float) -> float:
    return 1.5 if rate <= 1 else 1.0


def follow(
    root: Path, cells: int, rate: float, layout: str, terminal: bool, seconds: float
) -> tuple[float, float, float]:
    """(monitor %, floor %, monitor RSS MB) while a writer appends ``rate`` lines/s to each of ``cells`` cells."""
    grid = harness.make_folder(root, cells, layout, writer_pid=_self_pid(), lines=PREFILL)
    writer = harness.start_writer(grid, rate, WARMUP + seconds + 5, first_step=PREFILL)
    tag = f"{layout}{cells}x{rate:g}{'t' if terminal else 'h'}"
    monitor = harness.start_app(harness.monitor_command(grid, not terminal), terminal, f"m{tag}")
    floor = harness.start_app(harness.floor_command(grid, not terminal), terminal, f"f{tag}")
    try:
        time.sleep(WARMUP)
        mine, base = harness.measure_cpu([monitor.pid, floor.pid], seconds)
        memory = harness.rss_mb(monitor.pid)
    finally:
        monitor.stop()
        floor.stop()
        writer.terminate()
        writer.wait()
        shutil.rmtree(grid, ignore_errors=True)
    return mine, base, memory


def finished(root: Path, seconds: float, terminal: bool) -> tuple[float, float]:
    """(monitor %, floor %) on a finished 4-cell grid: nothing changes, nothing should be spent."""
    grid = harness.make_folder(root, 4, "rundir", writer_pid=None, lines=2000)
    monitor = harness.start_app(harness.monitor_command(grid, not terminal), terminal, "mdone")
    floor = harness.start_app(harness.floor_command(grid, not terminal), terminal, "fdone")
    try:
        time.sleep(SETTLE)
        mine, base = harness.measure_cpu([monitor.pid, floor.pid], seconds)
    finally:
        monitor.stop()
        floor.stop()
        shutil.rmtree(grid, ignore_errors=True)
    return mine, base


def _self_pid() -> int:
    import os

    return os.getpid()  # alive while measuring: the "job" a run directory's status.json names


def run(seconds: float = 10.0, quick: bool = False) -> list[Row]:
    rows = []
    loads = [(4, 1.0), (4, 10.0), (64, 1.0)]
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        root = Path(tmp)
        for terminal in (True, False) if not quick else (True,):
            where = "tmux 160x48" if terminal else "headless"
            for cells, rate in loads:
                for layout in ("rundir", "plain"):
                    if not terminal and layout == "rundir" and cells != 4:
                        continue  # headless: the plain folder at every load, the run directory at 4 cells
                    mine, base, memory = follow(root, cells, rate, layout, terminal, seconds)
                    name = f"CPU {cells} cells x {rate:g} line/s, {layout}, {where}"
                    rows.append(Row(name, mine, "%", base, load_goal(rate)))
                    print(f"  {name}: monitor {mine:.2f} %  floor {base:.2f} %  rss {memory:.0f} MB", flush=True)
                    if cells == 64 and terminal and layout == "plain":
                        rows.append(Row(f"memory {cells} cells, {layout}", memory, "MB", None, 200.0))
        mine, base = finished(root, seconds, True)
        rows.append(Row("CPU finished 4-cell grid on screen, tmux", mine, "%", None, 0.3, f"floor {base:.2f} %"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="tmux only")
    args = parser.parse_args()
    print(harness.uptime())
    print(format_rows(run(args.seconds, args.quick)))
    print(harness.uptime())


if __name__ == "__main__":
    main()
