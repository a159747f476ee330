"""`make bench`: every benchmark, one table of figure, floor (measured in the same run), ratio and goal.

    python bench/run_all.py [--seconds 10] [--lines 1000000]

Takes about fifteen minutes on a quiet 2-core machine (five without the rows of issue 27: a run's
first line, a thousand cells, the peers' readers). The machine's load (uptime) is printed before
and after: figures taken on a busy machine are noisy, ratios against a floor measured alongside less so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_analysis  # noqa: E402
import bench_completions  # noqa: E402
import bench_cpu  # noqa: E402
import bench_first_line  # noqa: E402
import bench_monitor  # noqa: E402
import bench_peers  # noqa: E402
import bench_scale  # noqa: E402
import bench_startup  # noqa: E402
import harness  # noqa: E402
from table import format_rows  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per CPU load")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the large log")
    args = parser.parse_args()
    before = harness.uptime()
    print(before, flush=True)
    rows = bench_cpu.run(args.seconds)
    rows += bench_monitor.latency_rows(2 * args.seconds, (160, 48))
    rows += bench_analysis.run(args.lines)
    rows += bench_startup.run()
    rows += bench_completions.run()
    rows += bench_first_line.run(2 * args.seconds)
    rows += bench_scale.run(seconds=args.seconds)
    rows += bench_peers.run(seconds=2 * args.seconds)
    print()
    print(f"load before: {before}")
    print(f"load after:  {harness.uptime()}")
    print(format_rows(rows))
    missed = [r.name for r in rows if not r.met]
    print(f"{len(rows) - len(missed)} of {len(rows)} goals met" + (f"; missed: {'; '.join(missed)}" if missed else ""))


if __name__ == "__main__":
    main()
