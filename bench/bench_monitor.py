"""Measure the monitor: CPU while four cells log at 10 lines/s, latency at 1 line/s, frame time at 1M points.

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
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from textual.drivers.headless_driver import HeadlessDriver

from prefwatch import jobs, rundir
from prefwatch.analysis import analyse
from prefwatch.ingest.sources import open_path
from prefwatch.series import SplitSeries
from prefwatch.tui.app import MonitorApp

CELLS = [("dpo", 16), ("dpo", 8), ("simpo", 16), ("simpo", 8)]


class NullTerminal(HeadlessDriver):
    """Renders frames like a real terminal driver, writes them nowhere, and notes when they were written."""

    frames = 0
    bytes = 0
    last_write = 0.0

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        NullTerminal.frames += 1
        NullTerminal.bytes += len(data)
        NullTerminal.last_write = time.perf_counter()

    def flush(self) -> None:
        pass


def make_grid(root: Path, writer_pid: int | None, max_steps: int = 100_000) -> Path:
    grid = root / "bench-grid"
    for index, (objective, rank) in enumerate(CELLS):
        cell_dir = grid / rundir.CELLS_DIR / f"{objective}-r{rank}"
        cell_dir.mkdir(parents=True)
        rundir.write_json_atomic(
            cell_dir / rundir.CELL_FILE,
            {"index": index, "objective": objective, "rank": rank, "train": {"max_steps": max_steps}},
        )
        status: dict = {"state": jobs.RUNNING if writer_pid else jobs.FINISHED, "host": None}
        if writer_pid:
            status.update(pid=writer_pid, pid_start=jobs.process_start_time(writer_pid))
        rundir.write_json_atomic(cell_dir / rundir.STATUS_FILE, status)
        (cell_dir / rundir.METRICS_FILE).write_text("")
    return grid


WRITER = textwrap.dedent(
    """
    import json, math, sys, time
    files, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
    step, start = 0, time.time()
    while time.time() - start < seconds:
        step += 1
        for path in files:
            now = time.time()
            record = {"loss": 0.6, "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step,
                      "rewards/margins": 0.02 * step + 0.1 * math.sin(step), "rewards/accuracies": 0.7,
                      "step": step, "time": now}
            lines = json.dumps(record) + "\\n"
            if step % 10 == 0:
                lines += json.dumps({"eval_rewards/margins": 0.01 * step, "eval_rewards/accuracies": 0.6,
                                     "step": step, "time": now}) + "\\n"
            with open(path, "a") as f:
                f.write(lines)
        time.sleep(max(0.0, start + step / rate - time.time()))
    """
)


def start_writer(grid: Path, rate: float, seconds: float) -> subprocess.Popen:
    files = [str(p / rundir.METRICS_FILE) for p in sorted((grid / rundir.CELLS_DIR).iterdir())]
    return subprocess.Popen([sys.executable, "-c", WRITER, ",".join(files), str(rate), str(seconds)])


class TimedApp(MonitorApp):
    """Notes when each cell's newest step reached the screen, and the CPU spent reading off the UI thread."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shown: list[tuple[float, dict[str, float]]] = []
        self.reading_cpu = 0.0
        self.measure_from = float("inf")

    def _read_and_post(self) -> None:
        start = time.thread_time()
        super()._read_and_post()
        if time.time() >= self.measure_from:
            self.reading_cpu += time.thread_time() - start

    def on_view_ready(self, message) -> None:
        super().on_view_ready(message)
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
    for cell_dir in sorted((grid / rundir.CELLS_DIR).iterdir()):
        written = {}
        for line in (cell_dir / rundir.METRICS_FILE).read_text().splitlines():
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
    grid = make_grid(root, writer_pid=None, max_steps=points)
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
            from prefwatch.tui.model import grid_view

            view = grid_view(analysis)
            start = time.perf_counter()
            app._mailbox = view  # noqa: SLF001
            app.on_view_ready(None)  # type: ignore[arg-type]
            while NullTerminal.last_write < start:
                await asyncio.sleep(0.0005)
            frames.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)
        app.exit(0)

    task = asyncio.ensure_future(measure())
    await app.run_async(size=size)
    await task
    return {"analyse_seconds": analyse_seconds, "frame_seconds": statistics.median(frames), "frame_max": max(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="160x48")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"monitor benchmark, {size[0]}x{size[1]}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")

    with tempfile.TemporaryDirectory() as tmp:
        for rate, label in ((10.0, "stress: 4 cells x 10 lines/s"), (1.0, "realistic: 4 cells x 1 line/s")):
            root = Path(tmp) / f"rate{rate:g}"
            root.mkdir()
            grid = make_grid(root, writer_pid=os.getpid())
            writer = start_writer(grid, rate, args.seconds + 3)
            app = asyncio.run(run_live(grid, args.seconds, size, writer))
            result = app.result  # type: ignore[attr-defined]
            lags = sorted(latencies(app, grid))
            print(
                f"{label:32}  CPU {result['cpu_percent']:5.1f} % of a core "
                f"(reading+analysis {result['reading_percent']:4.1f} %)   "
                f"{result['frames_per_second']:4.1f} frames/s   {result['views_per_second']:4.1f} views/s   "
                f"latency p50 {1000 * statistics.median(lags):4.0f} ms  p95 {1000 * lags[int(0.95 * len(lags))]:4.0f} ms"
                f"  p99 {1000 * lags[min(len(lags) - 1, int(0.99 * len(lags)))]:4.0f} ms  ({len(lags)} lines)"
            )
        root = Path(tmp) / "million"
        root.mkdir()
        million = asyncio.run(frame_time_million(root, size))
        print(
            f"{'1M points per series, 4 cells':32}  analyse() {1000 * million['analyse_seconds']:6.1f} ms   "
            f"frame (20 charts redrawn) median {1000 * million['frame_seconds']:5.1f} ms  max {1000 * million['frame_max']:5.1f} ms"
        )


if __name__ == "__main__":
    main()
