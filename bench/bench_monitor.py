"""Measure the monitor's latency from a line appended to the frame that shows it, at 1 and 10 lines/s.

    python bench/bench_monitor.py [--seconds 20] [--size 160x48]

The app runs with a driver that renders every frame to ANSI and throws it away (Textual's headless
driver skips the ANSI step, which would flatter the figures). Log lines are written by a separate
process, so its CPU is not counted. CPU is this process's CPU time (all threads: the follower's
reading and analysis, and the UI) over wall time, in percent of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from harness import NullTerminal  # noqa: E402
from table import Row, format_rows  # noqa: E402

from prefwatch.analysis.analyse import analyse
from prefwatch.core.series import SplitSeries
from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path
from prefwatch.tui.app import MonitorApp
from prefwatch.tui.updates import GridUpdated
from prefwatch.view.feed import Update

CELLS = [("dpo", 16), ("dpo", 8), ("simpo", 16), ("simpo", 8)]


class TimedApp(MonitorApp):
    """Notes when each cell's newest step reached the screen, and the CPU spent reading off the UI thread."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown: list[tuple[float, dict[str, float]]] = []
        self.reading_cpu = 0.0
        self.measure_from = float("inf")
        refresh = self.feed.refresh

        def timed_refresh() -> None:
            start = time.thread_time()
            refresh()
            if time.time() >= self.measure_from:
                self.reading_cpu += time.thread_time() - start

        self.feed.refresh = timed_refresh  # type: ignore[method-assign]

    def on_grid_updated(self, message: GridUpdated) -> None:
        super().on_grid_updated(message)
        if self.view is not None:
            latest = {c.id: c.curves["margin"].steps[-1] if len(c.curves["margin"]) else 0 for c in self.view.cells}
            # Stamped when the frame showing the view has been written, not when the view arrived.
            self.call_after_refresh(lambda: self.shown.append((time.time(), latest)))


async def run_live(grid: Path, seconds: float, size: tuple[int, int], writer: subprocess.Popen) -> TimedApp:
    app = TimedApp(open_path(grid), mode="live")
    app.driver_class = NullTerminal

    async def measure() -> None:
        await asyncio.sleep(2.0)  # start-up: first read, first frames
        cpu0, wall0, frames0 = time.process_time(), time.perf_counter(), NullTerminal.frames
        app.measure_from = time.time()
        refreshes0 = app.refreshes
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        app.result = {  # type: ignore[attr-defined]
            "cpu_percent": 100 * cpu / wall,
            "reading_percent": 100 * app.reading_cpu / wall,
            "frames_per_second": (NullTerminal.frames - frames0) / wall,
            "views_per_second": (app.refreshes - refreshes0) / wall,
        }
        app.exit(0)

    task = asyncio.ensure_future(measure())
    await app.run_async(size=size)
    await task
    writer.wait()
    return app


def latencies(app: TimedApp, grid: Path) -> list[float]:
    """Seconds from a line's write time (its "time" field) to the first view that showed it."""
    result = []
    for path in sorted(grid.rglob(rundir.METRICS_FILE)):
        cell_dir = path.parent
        written = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                written[record["step"]] = record["time"]
        for step, at in written.items():
            if at < app.measure_from:
                continue  # written before the monitor was up
            shown = next((t for t, latest in app.shown if latest.get(cell_dir.name, 0) >= step), None)
            if shown is not None:
                result.append(shown - at)
    return result


def fill(split: SplitSeries, steps: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Load a split with numpy arrays directly: a benchmark shortcut past a million appends."""
    n = len(steps)
    split._capacity = n  # noqa: SLF001
    split._length = n  # noqa: SLF001
    split._steps = steps.astype(float)  # noqa: SLF001
    split._times = np.arange(n, dtype=float)  # noqa: SLF001
    split._columns = {k: v.astype(float) for k, v in columns.items()}  # noqa: SLF001


async def frame_time_million(root: Path, size: tuple[int, int], points: int = 1_000_000) -> dict[str, float]:
    grid = harness.make_folder(root, 4, "rundir", writer_pid=None)
    source = open_path(grid)
    rng = np.random.default_rng(0)
    steps = np.arange(1, points + 1, dtype=float)
    for cell in source.cells:
        walk = np.cumsum(rng.normal(size=points)) / 100
        fill(
            cell.series.train,
            steps,
            {
                "rewards/chosen": walk,
                "rewards/rejected": -walk,
                "rewards/margins": 2 * walk,
                "rewards/accuracies": np.full(points, 0.7),
                "loss": np.full(points, 0.5),
            },
        )
        fill(cell.series.eval, steps, {"rewards/margins": walk, "rewards/accuracies": np.full(points, 0.6)})
        cell.series.records = 2 * points
    start = time.perf_counter()
    analysis = analyse(source)
    analyse_seconds = time.perf_counter() - start
    app = MonitorApp(source, mode="replay")
    app.driver_class = NullTerminal
    app.source.poll = lambda: False  # type: ignore[method-assign]  # the data is in memory already
    frames: list[float] = []

    async def measure() -> None:
        while app.view is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        for _ in range(5):
            # A new view in which every cell changed: all 20 panel charts redraw.
            for cell in source.cells:
                cell.series.records += 1
            from prefwatch.view.model import grid_view

            view = grid_view(analysis)
            start = time.perf_counter()
            app.on_grid_updated(GridUpdated(Update(view, "replay")))
            while NullTerminal.last_write < start:
                await asyncio.sleep(0.0005)
            frames.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)
        app.exit(0)

    task = asyncio.ensure_future(measure())
    await app.run_async(size=size)
    await task
    return {"analyse_seconds": analyse_seconds, "frame_seconds": statistics.median(frames), "frame_max": max(frames)}


def latency_rows(seconds: float, size: tuple[int, int]) -> list[Row]:
    """Append -> screen latency at 1 and 10 lines/s a cell (4 cells, a plain folder: what users attach to most)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        for rate in (1.0, 10.0):
            root = Path(tmp) / f"rate{rate:g}"
            root.mkdir()
            grid = harness.make_folder(root, 4, "plain", writer_pid=None, lines=0)
            writer = harness.start_writer(grid, rate, seconds + 3)
            app = asyncio.run(run_live(grid, seconds, size, writer))
            lags = sorted(latencies(app, grid))
            p50, p99 = statistics.median(lags), lags[min(len(lags) - 1, int(0.99 * len(lags)))]
            label = f"latency 4 cells x {rate:g} line/s"
            note = f"{len(lags)} lines, CPU {app.result['cpu_percent']:.1f} %"  # type: ignore[attr-defined]
            if rate == 1.0:
                rows.append(Row(f"{label} p50", 1000 * p50, "ms", None, 25.0, note))
            rows.append(Row(f"{label} p99", 1000 * p99, "ms", None, 100.0 if rate == 1.0 else 250.0, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="160x48")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    print(harness.uptime())
    print(format_rows(latency_rows(args.seconds, size)))  # type: ignore[arg-type]
    print(harness.uptime())


if __name__ == "__main__":
    main()
