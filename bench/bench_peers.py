"""The peers' own readers on the same stores: trackio's SQLiteStorage and TensorBoard's EventAccumulator.

    python bench/bench_peers.py [--runs 3] [--steps 1000] [--only trackio|tensorboard]

- trackio: one project of 50 runs (``--steps`` TRL-shaped logs each, 20 metrics, an eval row every
  100 steps), written with trackio's own ``SQLiteStorage.bulk_log``. The peer: a process that reads
  every run with ``SQLiteStorage.get_logs`` (what its dashboard calls); prefwatch: a process that
  opens the project's .db and reads every run (``open_path(db).poll()``).
- TensorBoard: 16 runs' event files written by torch's SummaryWriter as TRL's TensorBoardCallback
  logs (``train/`` and ``eval/`` tags). The peer: ``EventAccumulator(run, size_guidance={scalars: 0})``
  ``.Reload()`` and every scalar read, for each run; prefwatch: ``open_path(folder).poll()``.

Each side is a fresh process (imports included: what a user waits for), run alternately ``--runs``
times; the figures are CPU seconds (user + system, from wait4) and wall seconds to the data in
memory, medians. Goal (issue 27): prefwatch at most 0.25x the peer's CPU, and ahead on time.
Neither peer's screen is measured here (trackio's is a web app; TensorBoard's a web server).
`wandb leet` is not measured by this script (see docs).
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
from make_metrics import TRAIN_KEYS  # noqa: E402
from table import Row, format_rows  # noqa: E402

TRACKIO_RUNS = 50
TB_RUNS = 16
KEYS = [*TRAIN_KEYS, "nll_loss", "log_odds_ratio"]  # 20 metrics a log, as bench_ingest_trackers

TRACKIO_PEER = """
import sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
rows = sum(len(SQLiteStorage.get_logs(project, run)) for run in SQLiteStorage.get_runs(project))
print(rows)
"""

TB_PEER = """
import pathlib, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
points = 0
for run in sorted(p for p in pathlib.Path(sys.argv[1]).iterdir() if p.is_dir()):
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    for tag in accumulator.Tags()["scalars"]:
        points += len(accumulator.Scalars(tag))
print(points)
"""

PREFWATCH = """
import sys
from prefwatch.ingest.discover import open_path
grid = open_path(sys.argv[1])
grid.poll()
print(sum(c.series.records for c in grid.cells))
"""


def run_process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, its output) of a process run to its end."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[:3]}: exit {os.waitstatus_to_exitcode(status)}")
    return usage.ru_utime + usage.ru_stime, wall, output.strip()


def compare(name: str, peer: list[str], mine: list[str], runs: int, env: dict[str, str] | None = None) -> list[Row]:
    peer_cpu, peer_wall, mine_cpu, mine_wall = [], [], [], []
    for _ in range(runs):
        cpu, wall, peer_out = run_process(peer, env)
        peer_cpu.append(cpu)
        peer_wall.append(wall)
        cpu, wall, mine_out = run_process(mine, env)
        mine_cpu.append(cpu)
        mine_wall.append(wall)
    print(f"  {name}: peer read {peer_out} rows/points, prefwatch {mine_out} records", flush=True)
    p_cpu, p_wall = statistics.median(peer_cpu), statistics.median(peer_wall)
    m_cpu, m_wall = statistics.median(mine_cpu), statistics.median(mine_wall)
    print(f"  {name}: CPU {m_cpu:.2f} s vs {p_cpu:.2f} s; wall {m_wall:.2f} s vs {p_wall:.2f} s", flush=True)
    return [
        Row(f"{name}: CPU to read, prefwatch vs the peer", m_cpu, "s", p_cpu, 0.25),
        Row(f"{name}: time to the data, prefwatch vs the peer", m_wall, "s", p_wall, 1.0),
    ]


def trackio_rows(root: Path, steps: int, runs: int) -> list[Row]:
    import datetime
    import math

    env = {**os.environ, "TRACKIO_DIR": str(root / "trackio")}
    os.environ["TRACKIO_DIR"] = env["TRACKIO_DIR"]
    from trackio.sqlite_storage import SQLiteStorage

    project = "peers"
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    for index in range(TRACKIO_RUNS):
        name = f"{('dpo', 'simpo')[index % 2]}-r{(4, 8, 16, 32, 64)[index // 2 % 5]}-seed{index // 10}"
        logs, at, times = [], [], []
        for step in range(1, steps + 1):
            logs.append({f"train/{k}": math.sin(step * 0.01 + i + index) for i, k in enumerate(KEYS)})
            at.append(step)
            times.append((start + datetime.timedelta(seconds=step)).isoformat())
            if step % 100 == 0:
                logs.append({f"eval/{k}": math.cos(step * 0.01 + i) for i, k in enumerate(KEYS[:10])})
                at.append(step)
                times.append((start + datetime.timedelta(seconds=step + 0.5)).isoformat())
        SQLiteStorage.bulk_log(project, name, logs, at, times, config={"loss_type": ["sigmoid"]})
    db = SQLiteStorage.get_project_db_path(project)
    peer = [sys.executable, "-c", TRACKIO_PEER, project]
    mine = [sys.executable, "-c", PREFWATCH, str(db)]
    return compare(f"trackio, {TRACKIO_RUNS} runs x {steps} steps", peer, mine, runs, env)


def tensorboard_rows(root: Path, steps: int, runs: int) -> list[Row]:
    from make_metrics import write_events

    folder = root / "tensorboard"
    for index in range(TB_RUNS):
        write_events(folder / f"run-{index}", steps * 18, seed=index)
    peer = [sys.executable, "-c", TB_PEER, str(folder)]
    mine = [sys.executable, "-c", PREFWATCH, str(folder)]
    return compare(f"TensorBoard, {TB_RUNS} runs x {steps} steps", peer, mine, runs)


def run(runs: int = 3, steps: int = 1000, only: str | None = None) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        if only in (None, "trackio"):
            rows += trackio_rows(Path(tmp), steps, runs)
        if only in (None, "tensorboard"):
            rows += tensorboard_rows(Path(tmp), steps, runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--only", choices=("trackio", "tensorboard"))
    args = parser.parse_args()
    print(harness.uptime(), flush=True)
    rows = run(args.runs, args.steps, args.only)
    print(harness.uptime())
    print(format_rows(rows))


if __name__ == "__main__":
    main()
