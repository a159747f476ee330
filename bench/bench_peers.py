"""The peers' own readers on the same stores: trackio's SQLiteStorage, TensorBoard's EventAccumulator, W&B's `wandb leet`.

    python bench/bench_peers.py [--runs 3] [--steps 1000] [--seconds 20] [--only trackio|tensorboard|wandb]

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

- W&B: four offline runs written by the real wandb library (``wandb.init(mode="offline")``), each
  logging one TRL-shaped step a second (an evaluation every 10), in their own processes (not
  counted). The peer: W&B's terminal viewer, ``wandb leet <dir>/wandb`` (in recent wandb, 0.31 here: the
  CLI starts a Go program; the pane's whole process tree is counted); prefwatch: ``prefwatch attach
  <dir>/wandb``. Both in tmux at 160x48. Time to first frame: from the start to a screen that names
  one of the runs (each names a run once it has read it), the two apps started alternately
  ``--runs`` times, medians. CPU: both open at once on the same growing runs, over ``--seconds``,
  ``--runs`` times, medians. Goals: at most 0.25x the peer's CPU, and ahead to the first frame.
  Where tmux or ``wandb leet`` is missing, the rows are left out and the script says so.
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


WANDB_RUNS = ("dpo-r8", "dpo-r16", "simpo-r8", "simpo-r16")
WANDB_WRITER = """
import math, os, sys, time
os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
import wandb
root, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
run = wandb.init(project="peers", name=name, dir=root, mode="offline", config={"loss_type": "sigmoid", "beta": 0.1})
start, step = time.time(), 0
while time.time() - start < seconds:
    step += 1
    w = math.sin(step * 0.7)
    logs = {"train/loss": 0.69 - 0.001 * step, "train/grad_norm": 1 + 0.1 * w, "train/learning_rate": 5e-6,
            "train/rewards/chosen": 0.01 * step, "train/rewards/rejected": -0.01 * step,
            "train/rewards/accuracies": 0.7, "train/rewards/margins": 0.02 * step + 0.1 * w,
            "train/logps/chosen": -50 - w, "train/logps/rejected": -52 + w, "train/epoch": step / 1000,
            "train/global_step": step}
    if step % 10 == 0:
        logs.update({"eval/loss": 0.6, "eval/rewards/margins": 0.01 * step, "eval/rewards/accuracies": 0.6 + 0.05 * w,
                     "eval/rewards/chosen": 0.005 * step, "eval/rewards/rejected": -0.005 * step})
    run.log(logs, step=step)
    time.sleep(max(0.0, start + step - time.time()))
run.finish()
"""


def leet_command() -> list[str] | None:
    """``wandb leet`` of the wandb installed beside this Python, or None where it has no such command."""
    wandb = Path(sys.executable).parent / "wandb"
    if not wandb.exists() or shutil.which("tmux") is None:
        return None
    probe = subprocess.run([str(wandb), "leet", "--help"], capture_output=True, text=True)
    return [str(wandb), "leet"] if probe.returncode == 0 and "LEET" in probe.stdout else None


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every process below it (the CLI that starts a viewer, the viewer itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process tree now."""
    total = 0.0
    for member in tree_pids(pid):
        try:
            total += harness.cpu_seconds(member)
        except (OSError, ValueError, IndexError):
            continue
    return total


def wandb_rows(root: Path, seconds: float, runs: int) -> list[Row]:
    from bench_scale import first_screen

    leet = leet_command()
    if leet is None:
        print("  wandb leet: not measured (tmux, or a wandb with the leet command, is missing)", flush=True)
        return []
    folder = root / "wandb-runs"
    folder.mkdir()
    lasting = 120 + runs * (2 * seconds + 60)  # the writers outlive every measurement
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WANDB_WRITER, str(folder), name, str(lasting)], stderr=subprocess.DEVNULL
        )
        for name in WANDB_RUNS
    ]
    store = folder / "wandb"
    try:
        deadline = time.monotonic() + 120
        while len(list(store.glob("offline-run-*/run-*.wandb"))) < len(WANDB_RUNS):
            if time.monotonic() > deadline:
                raise RuntimeError("the W&B writers made no runs in 120 s")
            time.sleep(0.5)
        time.sleep(10)  # some history in every run
        # Each app names a run only once it has read it: leet in its run overview, prefwatch in a panel.
        peer, mine = [*leet, str(store)], harness.monitor_command(store, False)
        peer_frame, mine_frame, peer_cpu, mine_cpu = [], [], [], []
        for index in range(runs):
            for command, times, tag in ((peer, peer_frame, "wl"), (mine, mine_frame, "wm")):
                shown, app = first_screen(command, WANDB_RUNS, f"{tag}{index}", 120)
                app.stop()
                times.append(shown)
            _, viewer = first_screen(peer, WANDB_RUNS, f"wlc{index}", 120)
            _, monitor = first_screen(mine, WANDB_RUNS, f"wmc{index}", 120)
            try:
                time.sleep(5)  # both settled
                before = (tree_cpu(viewer.pid), tree_cpu(monitor.pid))
                start = time.monotonic()
                time.sleep(seconds)
                wall = time.monotonic() - start
                peer_cpu.append(100 * (tree_cpu(viewer.pid) - before[0]) / wall)
                mine_cpu.append(100 * (tree_cpu(monitor.pid) - before[1]) / wall)
            finally:
                viewer.stop()
                monitor.stop()
    finally:
        for writer in writers:
            writer.terminate()
        for writer in writers:
            writer.wait()
    print(f"  wandb leet: first frame {peer_frame}, CPU {peer_cpu} %; prefwatch {mine_frame}, {mine_cpu} %", flush=True)
    where = f"W&B, {len(WANDB_RUNS)} offline runs x 1 step/s, tmux"
    return [
        Row(
            f"{where}: CPU, prefwatch vs wandb leet",
            statistics.median(mine_cpu),
            "%",
            statistics.median(peer_cpu),
            0.25,
        ),
        Row(
            f"{where}: first frame, prefwatch vs wandb leet",
            statistics.median(mine_frame),
            "s",
            statistics.median(peer_frame),
            1.0,
        ),
    ]


def run(runs: int = 3, steps: int = 1000, only: str | None = None, seconds: float = 20.0) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="prefwatch-bench-") as tmp:
        if only in (None, "trackio"):
            rows += trackio_rows(Path(tmp), steps, runs)
        if only in (None, "tensorboard"):
            rows += tensorboard_rows(Path(tmp), steps, runs)
        if only in (None, "wandb"):
            rows += wandb_rows(Path(tmp), seconds, runs)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU measured over this long (W&B)")
    parser.add_argument("--only", choices=("trackio", "tensorboard", "wandb"))
    args = parser.parse_args()
    print(harness.uptime(), flush=True)
    rows = run(args.runs, args.steps, args.only, args.seconds)
    print(harness.uptime())
    print(format_rows(rows))


if __name__ == "__main__":
    main()
