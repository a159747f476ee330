"""A thousand cells: a folder of finished runs and a live grid, each figure beside a floor measured in the same run.

    python bench/bench_scale.py [--cells 1000] [--lines 300] [--seconds 10] [--runs 2] [--only finished|live]

The folder of finished runs (``--lines`` TRL-shaped lines a cell, an eval line every 10 steps, the
end-of-training record last):

- `report` on a reopen (the second `prefwatch report` of the folder, the terminal format), against
  a process that decodes the same logs with msgspec and nothing else; its peak memory;
- the monitor's first screen in tmux (160x48: the overview, every cell read) against the floor app's
  (bench/floor_app.py, one line a cell) on the same folder, started one after the other, median of
  ``--runs``; the monitor's memory once settled; and the monitor's complete screen (from 200
  cells its first screen shows each cell's figures, the findings and the verdict follow);
- both apps open on it, nothing written: CPU of each over ``--seconds``.

The live grid: a prefwatch run directory of ``--cells`` running cells (100 lines in each already),
a writer appending one line a cell every 10 s (the cells spread over the 10 s, as independent
jobs log): the monitor's first screen and memory, and its CPU against the floor app's while the
lines come, both following the same files at the same time.

Goals (issue 27): first screen <= 2 s, memory <= 250 MB, idle <= 1 % of a core, report <= 2 s on a
reopen. Seconds are absolute goals; each row's note gives its floor and the ratio. Taken on a busy
machine, absolute seconds say little: the load (uptime) is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from table import Row, format_rows  # noqa: E402

from prefwatch.view.model import PENDING_HEADLINE  # noqa: E402

LIVE_PREFILL = 100  # lines a live cell holds when the monitor opens (runs under way)
LIVE_RATE = 0.1  # lines a second a live cell logs
SETTLE = 5.0  # seconds after a first screen before memory and idle CPU are read
# The first screen of a large grid shows each cell's figures; its findings and verdict follow. No
# goal of its own: the row says what the first screen's figure leaves out.
COMPLETE_NOTE = "no goal: the first screen's figures, with the findings"
FLOOR_LINE = (
    '  {"'  # the floor app shows a cell's name, then its last line: a line read (its end is cut at 160 columns)
)

DECODE_FLOOR = """
import pathlib, sys, msgspec
decoder = msgspec.json.Decoder()
rows = 0
for path in sorted(pathlib.Path(sys.argv[1]).rglob("metrics.jsonl")):
    rows += len(decoder.decode_lines(path.read_bytes()))
print(rows)
"""


def timed_process(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command run to its end, its output thrown away."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 3):  # 3: a verdict that does not decide, the normal case here
        raise RuntimeError(f"{command}: exit {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def first_screen(
    command: list[str], marker: str | tuple[str, ...], name: str, timeout: float = 300.0
) -> tuple[float, harness.Running]:
    """Seconds from starting ``command`` in tmux (160x48) to a screen showing ``marker`` (or any of
    several); the app is left running."""
    markers = (marker,) if isinstance(marker, str) else marker
    start = time.perf_counter()
    app = harness.start_app(command, True, name)
    while time.perf_counter() - start < timeout:
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", app.session or ""], capture_output=True, text=True
        ).stdout
        if any(m in screen for m in markers):
            return time.perf_counter() - start, app
        time.sleep(0.02)
    app.stop()
    raise RuntimeError(f"{name}: no screen showing {marker!r} within {timeout:.0f} s")


def complete_screen(app: harness.Running, started: float, timeout: float = 300.0) -> float:
    """Seconds from ``started`` to a screen of the monitor's whose verdict is no longer pending (a
    grid of FIRST_VALUES_FROM cells or more is first drawn with its figures only)."""
    while time.perf_counter() - started < timeout:
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", app.session or ""], capture_output=True, text=True
        ).stdout
        if PENDING_HEADLINE not in screen:
            return time.perf_counter() - started
        time.sleep(0.02)
    raise RuntimeError(f"no complete screen within {timeout:.0f} s")


def first_screens(
    folder: Path, monitor_marker: str, floor_marker: str, runs: int, tag: str
) -> tuple[float, float, float]:
    """Median seconds to the first screen of the monitor and of the floor app, started alternately,
    and to the monitor's complete screen (its findings and verdict)."""
    mine, base, complete = [], [], []
    for run in range(runs):
        started = time.perf_counter()
        seconds, app = first_screen(harness.monitor_command(folder, False), monitor_marker, f"m{tag}{run}")
        try:
            complete.append(complete_screen(app, started))
        finally:
            app.stop()
        mine.append(seconds)
        seconds, app = first_screen(harness.floor_command(folder, False), floor_marker, f"f{tag}{run}")
        app.stop()
        base.append(seconds)
    return statistics.median(mine), statistics.median(base), statistics.median(complete)


def finished_rows(root: Path, cells: int, lines: int, seconds: float, runs: int) -> list[Row]:
    folder = harness.make_folder(root, cells, "plain", writer_pid=None, lines=lines, finished=True)
    report = [sys.executable, "-m", "prefwatch", "report", str(folder)]
    floor = [sys.executable, "-c", DECODE_FLOOR, str(folder)]
    timed_process(floor)  # the files in the page cache for both
    opened, _ = timed_process(report)
    reopen, reopen_mb = zip(*(timed_process(report) for _ in range(runs)))
    decode = [timed_process(floor)[0] for _ in range(runs)]
    report_s, decode_s = statistics.median(reopen), statistics.median(decode)
    print(f"  report: first {opened:.2f} s, reopen {report_s:.2f} s, {max(reopen_mb):.0f} MB; floor {decode_s:.2f} s")
    shown, floor_shown, complete = first_screens(folder, f"({cells} finished)", "train_runtime", runs, "done")
    print(f"  first screen: monitor {shown:.2f} s (complete {complete:.2f} s), floor app {floor_shown:.2f} s")
    _, monitor = first_screen(harness.monitor_command(folder, False), f"({cells} finished)", "mdone")
    _, floor_app = first_screen(harness.floor_command(folder, False), "train_runtime", "fdone")
    try:
        time.sleep(SETTLE)
        memory, floor_memory = harness.rss_mb(monitor.pid), harness.rss_mb(floor_app.pid)
        idle, floor_idle = harness.measure_cpu([monitor.pid, floor_app.pid], seconds)
    finally:
        monitor.stop()
        floor_app.stop()
    print(
        f"  idle: monitor {idle:.2f} %, floor app {floor_idle:.2f} %; rss {memory:.0f} MB, floor {floor_memory:.0f} MB"
    )
    shutil.rmtree(folder, ignore_errors=True)
    where = f"{cells} finished cells x {lines} lines"
    return [
        Row(f"report on a reopen, {where}", report_s, "s", None, 2.0, _vs(decode_s, report_s, "s, msgspec decode")),
        Row(f"report peak memory, {where}", max(reopen_mb), "MB", None, 250.0),
        Row(f"first screen, {where}, tmux", shown, "s", None, 2.0, _vs(floor_shown, shown, "s, floor app")),
        Row(f"complete screen (findings, verdict), {where}", complete, "s", note=COMPLETE_NOTE),
        Row(f"memory on screen, {where}", memory, "MB", None, 250.0, f"floor app {floor_memory:.0f} MB"),
        Row(f"CPU idle, {where}, tmux", idle, "%", None, 1.0, f"floor app {floor_idle:.2f} %"),
    ]


def live_rows(root: Path, cells: int, seconds: float, runs: int) -> list[Row]:
    folder = harness.make_folder(root, cells, "rundir", writer_pid=os.getpid(), lines=LIVE_PREFILL)
    # Long enough for the first screens, the settling and the measurement.
    writer = harness.start_writer(folder, LIVE_RATE, 3600, first_step=LIVE_PREFILL, stagger=True)
    try:
        marker = f"({cells} running)"
        shown, floor_shown, complete = first_screens(folder, marker, FLOOR_LINE, runs, "live")
        print(f"  live first screen: monitor {shown:.2f} s (complete {complete:.2f} s), floor app {floor_shown:.2f} s")
        _, monitor = first_screen(harness.monitor_command(folder, False), marker, "mlive")
        _, floor_app = first_screen(harness.floor_command(folder, False), FLOOR_LINE, "flive")
        try:
            time.sleep(SETTLE)
            mine, base = harness.measure_cpu([monitor.pid, floor_app.pid], seconds)
            memory, floor_memory = harness.rss_mb(monitor.pid), harness.rss_mb(floor_app.pid)
        finally:
            monitor.stop()
            floor_app.stop()
    finally:
        writer.terminate()
        writer.wait()
    print(f"  live CPU: monitor {mine:.2f} %, floor app {base:.2f} %; rss {memory:.0f} MB, floor {floor_memory:.0f} MB")
    shutil.rmtree(folder, ignore_errors=True)
    where = f"{cells} live cells x 1 line/10 s"
    return [
        Row(f"first screen, {where}, tmux", shown, "s", None, 2.0, _vs(floor_shown, shown, "s, floor app")),
        Row(f"complete screen (findings, verdict), {where}", complete, "s", note=COMPLETE_NOTE),
        Row(f"memory, {where}", memory, "MB", None, 250.0, f"floor app {floor_memory:.0f} MB"),
        Row(f"CPU {where}, tmux", mine, "%", base, 1.5),
    ]


def _vs(floor: float, figure: float, what: str) -> str:
    return f"floor {floor:.2f} {what}: {figure / floor:.1f}x" if floor > 0 else f"floor 0 {what}"


def run(
    cells: int = 1000, lines: int = 300, seconds: float = 10.0, runs: int = 2, only: str | None = None
) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        if only in (None, "finished"):
            rows += finished_rows(Path(tmp), cells, lines, seconds, runs)
        if only in (None, "live"):
            rows += live_rows(Path(tmp), cells, seconds, runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=("finished", "live"))
    args = parser.parse_args()
    print(harness.uptime(), flush=True)
    rows = run(args.cells, args.lines, args.seconds, args.runs, args.only)
    print(harness.uptime())
    print(format_rows(rows))


if __name__ == "__main__":
    main()
