"""Reducing a curve of a million points to the pixel columns of a 160-column chart.

    python bench/bench_chart.py

Prints the median of 5 runs of ``braille.column_spans`` and, as the floor measured in the same run,
numpy's own min and max over the same million values (the least any reduction must do), and their
ratio. (tests/test_tui_chart.py checks what is drawn; this measures how fast.)
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from prefwatch.tui import braille


def median_seconds(work, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    y = np.random.default_rng(0).normal(size=1_000_000)
    y[123_456] = 50.0
    x = np.arange(len(y), dtype=float)
    spans = median_seconds(lambda: braille.column_spans(x, y, 0, len(y) - 1, 160))
    floor = median_seconds(lambda: (np.nanmin(y), np.nanmax(y)))
    print(f"column_spans, 1M points -> 160 columns: {spans * 1e3:.1f} ms (median of 5)")
    print(f"floor, numpy min and max of the same points: {floor * 1e3:.1f} ms")
    print(f"ratio: {spans / floor:.1f}x the floor")


if __name__ == "__main__":
    main()
