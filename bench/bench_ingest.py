"""Replay of a large metrics.jsonl to data ready for display, against the alternatives, in one run.

    python bench/bench_ingest.py [LINES]     (default 1,000,000; the file is written once under /tmp)

Prints wall times, ratios to the msgspec floor (a single-core decode_lines into a typed Struct, the
fastest way to merely parse the file), resident bytes per stored value and the parse's memory peak.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from make_metrics import TRAIN_KEYS, write  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402


def floor(path: Path) -> float:
    keys = [*TRAIN_KEYS, "step", "time"]
    fields = [(f"f{i}", float | None, None) for i in range(len(keys))]
    struct = msgspec.defstruct("Rec", fields, rename={f"f{i}": k for i, k in enumerate(keys)})
    decoder = msgspec.json.Decoder(struct)
    start = time.perf_counter()
    with open(path, "rb") as f:
        rest = b""
        while chunk := f.read(1 << 22):
            data = rest + chunk
            end = data.rfind(b"\n")
            decoder.decode_lines(data[: end + 1])
            rest = data[end + 1 :]
    return time.perf_counter() - start


def prefwatch_replay(path: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    grid = open_path(path)
    grid.poll()
    elapsed = time.perf_counter() - start
    series = grid.cells[0].series
    values = sum(int((~_isnan(series.train.column(n))).sum()) for n in series.train.names)
    return elapsed, series.train.nbytes() + series.eval.nbytes(), values


def _isnan(a):  # noqa: ANN001
    import numpy as np

    return np.isnan(a)


def orjson_lines(path: Path) -> float | None:
    try:
        import orjson
    except ImportError:
        return None
    start = time.perf_counter()
    with open(path, "rb") as f:
        for raw in f:
            orjson.loads(raw)
    return time.perf_counter() - start


def json_lines(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        for raw in f:
            json.loads(raw)
    return time.perf_counter() - start


def first_view(path: Path) -> tuple[float, int]:
    """Time to the tail of the file ready to draw (CellSource.peek_tail), and the rows it holds."""
    start = time.perf_counter()
    cell = open_path(path).cells[0]
    cell.peek_tail()
    elapsed = time.perf_counter() - start
    return elapsed, len(cell.series.train)


def pandas_lines(path: Path) -> float | None:
    try:
        import pandas
    except ImportError:
        return None
    start = time.perf_counter()
    pandas.read_json(path, lines=True)
    return time.perf_counter() - start


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    path = Path(f"/tmp/prefwatch-bench/metrics-{lines}.jsonl")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, lines)
    size = path.stat().st_size / 1e6
    print(f"{path}: {lines} lines, {size:.0f} MB")
    path.read_bytes()  # warm the page cache for every contender alike
    t_floor = floor(path)
    t_ours, nbytes, values = prefwatch_replay(path)
    gc.collect()
    tracemalloc.start()
    prefwatch_replay(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t_view, view_rows = first_view(path)
    t_orjson = orjson_lines(path)
    t_json = json_lines(path)
    t_pandas = pandas_lines(path)
    print(f"msgspec floor (Struct, 1 core)   {t_floor:6.2f} s   1.00x")
    print(f"prefwatch replay to columns       {t_ours:6.2f} s   {t_ours / t_floor:.2f}x floor")
    if t_orjson is not None:
        print(f"orjson per line (parse only)      {t_orjson:6.2f} s   {t_orjson / t_floor:.2f}x floor")
    print(f"json per line (parse only)        {t_json:6.2f} s   {t_json / t_floor:.2f}x floor")
    if t_pandas is not None:
        print(f"pandas read_json(lines=True)      {t_pandas:6.2f} s   {t_pandas / t_floor:.2f}x floor")
        print(f"prefwatch is {t_pandas / t_ours:.1f}x faster than pandas")
    print(f"stored: {values} values, {nbytes / values:.1f} bytes per value (capacity included)")
    print(f"parse peak (tracemalloc): {peak / 1e6:.0f} MB = {peak / nbytes:.2f}x the stored arrays")
    print(f"first view (peek_tail, last 256 KiB): {t_view * 1000:.1f} ms, {view_rows} rows")
    load = os.getloadavg()
    print(f"machine load (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
