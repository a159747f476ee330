"""TensorBoard event files: prefwatch's reader against TensorBoard's EventAccumulator, same points.

    python bench/bench_ingest_tensorboard.py [SCALARS]   (default 1,000,000; written once under /tmp)

The file is written by PyTorch's SummaryWriter the way TRL's TensorBoardCallback writes it (one
scalar per event, ``train/`` and ``eval/`` tags). EventAccumulator is told to keep every scalar
(its default keeps a 10,000-point sample per tag, which would not be the same work).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_metrics import write_events  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402


def main() -> None:
    scalars = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    out = Path(f"/tmp/prefwatch-bench/tb-{scalars}")
    logs = out / "runs" / "Nov27_bench"
    files = sorted(logs.glob("events.out.tfevents.*"))
    if not files:
        files = [write_events(logs, scalars)]
    size = sum(f.stat().st_size for f in files) / 1e6
    print(f"{files[0]}: {size:.0f} MB")
    for f in files:
        f.read_bytes()  # warm the page cache for both contenders alike

    runs = []
    for _ in range(3):
        start = time.perf_counter()
        grid = open_path(out)
        grid.poll()
        runs.append(time.perf_counter() - start)
    first, ours = runs[0], min(runs)
    series = grid.cells[0].series
    points = sum(int((~_isnan(s.column(n))).sum()) for s in (series.train, series.eval) for n in s.names)
    print(
        f"prefwatch: {points} points in {ours:.3f} s, best of 3 ({first:.3f} s the first time in this process);"
        f" {len(series.train)} train rows, {len(series.eval)} eval rows"
    )

    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        print("tensorboard is not installed: no EventAccumulator to compare with")
        return
    start = time.perf_counter()
    accumulator = EventAccumulator(str(logs), size_guidance={"scalars": 0})
    accumulator.Reload()
    theirs = time.perf_counter() - start
    their_points = sum(len(accumulator.Scalars(tag)) for tag in accumulator.Tags()["scalars"])
    print(f"EventAccumulator: {their_points} points in {theirs:.2f} s")
    print(f"prefwatch is {theirs / ours:.0f}x faster ({theirs / first:.0f}x on its first run)")
    load = os.getloadavg()
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


def _isnan(a):  # noqa: ANN001
    import numpy as np

    return np.isnan(a)


if __name__ == "__main__":
    main()
