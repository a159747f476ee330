"""Analysis at a million lines: a refresh after one appended line, a full report, and a second report.

    python bench/bench_analysis.py [--lines 1000000]

- refresh: a live monitor's refresh (read the new line, update findings and verdict, build the
  view) after one line is appended to a cell holding ``--lines`` lines; median of 20. Goal <= 30 ms.
- report: ``prefwatch report --format json`` on a folder with one ``--lines``-line log, in a fresh
  process, against the floor: a fresh process that reads the file and decodes every line with
  msgspec (``Decoder.decode_lines``). Goal <= 1.2x.
- reopen: the same report a second time (the columnar cache is warm), against the first. Goal <= 0.25x.

Data under the system temp dir (about 250 MB for a million lines); the cache goes to a temporary
XDG_CACHE_HOME.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from table import Row, format_rows  # noqa: E402

FLOOR = """
import sys, msgspec
with open(sys.argv[1], "rb") as f:
    records = msgspec.json.Decoder().decode_lines(f.read())
print(len(records))
"""


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start


def refresh_ms(grid: Path, exact: bool, repeats: int = 20) -> float:
    """Median milliseconds of one live refresh after one appended line (the first read excluded):
    as the monitor does it (values at once, findings within findings_age), or ``exact`` (findings
    too, every time: the incremental analysis with findings_age 0)."""
    from prefwatch.ingest.discover import open_path
    from prefwatch.view.feed import IncrementalViews

    incremental = IncrementalViews(open_path(grid), heartbeat=float("inf"))
    if exact:
        incremental.analysis.findings_age = 0.0
    incremental.view()
    path = next(grid.rglob("metrics.jsonl"))
    step = sum(1 for _ in open(path, "rb"))
    times = []
    for index in range(repeats):
        with open(path, "a") as f:
            f.write(harness.record_text(step + index + 1, time.time()))
        time.sleep(0.3)  # past the reader's reopen interval, as a live refresh would be
        start = time.perf_counter()
        view = incremental.view()
        times.append(time.perf_counter() - start)
        assert view is not None
    return 1000 * statistics.median(times)


def run(lines: int = 1_000_000) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        root = Path(tmp)
        grid = harness.make_folder(root, 1, "plain", writer_pid=None, lines=lines, finished=True)
        log = next(grid.rglob("metrics.jsonl"))
        env = dict(os.environ, XDG_CACHE_HOME=str(root / "cache"))
        report = [sys.executable, "-m", "prefwatch", "report", str(grid), "--format", "json"]
        floor = [sys.executable, "-c", FLOOR, str(log)]
        timed(floor, env)  # the file into the page cache, for both
        floors, firsts, seconds = [], [], []
        for _ in range(3):
            subprocess.run(["rm", "-rf", str(root / "cache")], check=True)
            floors.append(timed(floor, env))
            firsts.append(timed(report, env))
            seconds.append(timed(report, env))
        first, base, second = (statistics.median(v) for v in (firsts, floors, seconds))
        label = f"{lines // 1000}k lines"
        rows.append(Row(f"report, {label}, first", 1000 * first, "ms", 1000 * base, 1.2, "floor: msgspec decode"))
        rows.append(Row(f"report, {label}, second (reopen)", 1000 * second, "ms", 1000 * first, 0.25, "floor: first"))
        # A finished log does not grow: the refreshes are measured on a live copy without the end record.
        live = harness.make_folder(root / "live", 1, "plain", writer_pid=None, lines=lines)
        rows.append(Row(f"refresh after 1 appended line, {label}, monitor", refresh_ms(live, False), "ms", None, 30.0))
        rows.append(Row(f"refresh after 1 line, {label}, findings exact", refresh_ms(live, True), "ms", None, 30.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    print(harness.uptime())
    print(format_rows(run(args.lines)))
    print(harness.uptime())


if __name__ == "__main__":
    main()
