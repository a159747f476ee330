"""Following live logs: append-to-series latency and the reader's CPU, with events and with polling.

    python bench/bench_follow.py [SECONDS]     (default 8 s per measurement)

Latency: a writer process appends one line at a time (its "time" field is the wall clock just before
the write); the reader — prefwatch's Follower (watchdog events, or polling) calling CellSource.poll()
— notes, for every row that lands in the series, how long after its write it got there.
CPU: four files grow at 10 lines/s each; the reader's own CPU time over the run, as % of one core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from prefwatch.ingest.discover import open_path
from prefwatch.ingest.watch import Follower

WRITER = r"""
import json, sys, time
paths, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
files = [open(p, "a") for p in paths]
start = time.time()
step = 0
while time.time() - start < seconds:
    step += 1
    for f in files:
        now = time.time()
        f.write(json.dumps({"step": step, "time": now, "loss": 0.5, "rewards/margins": step / 100}) + "\n")
        f.flush()
    time.sleep(max(0.0, start + step / rate - time.time()))
"""


def follow(
    cells: int, rate: float, seconds: float, poll: bool, interval: float | None, read: bool = True
) -> tuple[np.ndarray, float]:
    """Latencies in seconds of every row read, and the reader's CPU as a fraction of one core.
    With ``read=False`` the follower's callback reads nothing: the cost of noticing changes alone."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "grid"
        paths = []
        for i in range(cells):
            cell = root / f"dpo-r{8 * (i + 1)}"
            cell.mkdir(parents=True)
            (cell / "metrics.jsonl").touch()
            paths.append(cell / "metrics.jsonl")
        grid = open_path(root)
        grid.poll()
        latencies: list[float] = []
        seen = [0] * cells
        lock = threading.Lock()

        def on_change() -> None:
            if not read:
                return
            with lock:
                grid.poll()
                now = time.time()
                for i, cell in enumerate(grid.cells):
                    times = cell.series.train.times
                    latencies.extend((now - times[seen[i] :]).tolist())
                    seen[i] = len(times)

        follower = Follower([c.directory for c in grid.cells], on_change, poll=poll, interval=interval)
        follower.start()
        mode = follower.mode
        time.sleep(0.3)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, ",".join(map(str, paths)), str(rate), str(seconds)], check=True
        )
        time.sleep(max(0.2, 2 * (interval or 0)))
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        follower.stop()
        assert writer.returncode == 0
        expected = cells * int(rate * seconds)
        if read and abs(len(latencies) - expected) > cells * 2:
            print(f"  note: {len(latencies)} rows read, about {expected} written")
        if poll != (mode == "polling"):
            print(f"  note: follower mode is {mode}")
        return np.array(latencies), cpu


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
    load = os.getloadavg()
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    for label, poll, interval, target in [
        ("watchdog events", False, None, "p50 <= 5 ms, p99 <= 20 ms"),
        ("polling every 50 ms", True, 0.05, "p99 <= 60 ms"),
    ]:
        lat, _ = follow(1, 20.0, seconds, poll, interval)
        p50, p99, worst = (float(np.percentile(lat, q)) * 1000 for q in (50, 99, 100))
        print(
            f"append-to-series, {label:20s}: p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  max {worst:5.1f} ms  ({len(lat)} lines; target {target})"
        )
    for label, poll, interval in [("watchdog events", False, None), ("polling every 50 ms", True, 0.05)]:
        _, cpu = follow(4, 10.0, seconds, poll, interval)
        _, bare = follow(4, 10.0, seconds, poll, interval, read=False)
        print(
            f"reader CPU, 4 files at 10 lines/s, {label:20s}: {cpu * 100:.2f} % of a core (target <= 1 %);"
            f" the follower alone, reading nothing: {bare * 100:.2f} %"
        )


if __name__ == "__main__":
    main()
