"""Trackers' stores against metrics.jsonl: the same points read from each, and the cost ratio.

    python bench/bench_ingest_trackers.py [POINTS]   (default 1,000,000; written once under /tmp)

One run of 20 TRL metrics per step (train rows; an eval row every 100 steps) is written five ways:
metrics.jsonl as PrefwatchCallback writes it, trackio's project database, MLflow's SQLite store
and its file store, and a W&B offline run. The SQLite schemas are the libraries' own (a run is
started with trackio / MLflow, then the rows are inserted in bulk the way they store them: one
JSON row per log for trackio, one row per point for MLflow); the W&B file is written by wandb
itself, offline. Each store is then opened and read whole by prefwatch, best and median of 3,
and compared with reading metrics.jsonl in the same process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from make_metrics import TRAIN_KEYS  # noqa: E402

from prefwatch.ingest.discover import open_path  # noqa: E402

KEYS = [*TRAIN_KEYS, "nll_loss", "log_odds_ratio"]  # 20 metrics a log
EVAL_EVERY = 100
T0 = 1.7e9


def rows(points: int) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) as TRL logs them: one dict per step, eval keys prefixed eval_."""
    steps = points // len(KEYS)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(steps, len(KEYS))).round(6)
    train = [dict(zip(KEYS, map(float, values[i]))) for i in range(steps)]
    evals = [
        {f"eval_{k}": float(v) for k, v in zip(KEYS[:10], values[i, :10])}
        for i in range(EVAL_EVERY - 1, steps, EVAL_EVERY)
    ]
    return train, evals


def logs(train: list[dict], evals: list[dict]):
    """(step, time, TRL log dict) in logging order."""
    for i, row in enumerate(train):
        step = i + 1
        yield step, T0 + step, row
        if step % EVAL_EVERY == 0:
            yield step, T0 + step + 0.5, evals[step // EVAL_EVERY - 1]


def rewrite(row: dict) -> dict:
    """transformers' rewrite_logs: eval_x -> eval/x, the rest train/x."""
    return {f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}": v for k, v in row.items()}


def write_jsonl(folder: Path, train, evals) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step, t, row in logs(train, evals):
            f.write(json.dumps({**row, "step": step, "time": t}) + "\n")
    return folder


def write_trackio(folder: Path, train, evals) -> Path:
    os.environ["TRACKIO_DIR"] = str(folder)
    import trackio

    trackio.init(project="bench", name="dpo-r16", config={"loss_type": ["sigmoid"], "precompute_ref_log_probs": True})
    trackio.log({"train/loss": 0.0, "train/global_step": 0})
    trackio.finish()
    db = folder / "bench.db"
    with sqlite3.connect(db) as c:
        (run_id,) = c.execute("SELECT run_id FROM configs").fetchone()
        c.execute("DELETE FROM metrics")
        c.executemany(
            "INSERT INTO metrics (run_id, timestamp, run_name, step, metrics) VALUES (?, ?, ?, ?, ?)",
            (
                (run_id, _iso(t), "dpo-r16", i, json.dumps({**rewrite(row), "train/global_step": step}))
                for i, (step, t, row) in enumerate(logs(train, evals))
            ),
        )
    return db


def _iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()


def write_mlflow_db(folder: Path, train, evals) -> Path:
    import mlflow

    folder.mkdir(parents=True)
    db = folder / "mlflow.db"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    with mlflow.start_run(run_name="dpo-r16") as run:
        run_id = run.info.run_id
    with sqlite3.connect(db) as c:
        c.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)",
            ((k, v, int(t * 1000), run_id, step) for step, t, row in logs(train, evals) for k, v in row.items()),
        )
    return db


def write_mlruns(folder: Path, train, evals) -> Path:
    run = folder / "0" / "0123456789abcdef"
    (run / "metrics").mkdir(parents=True)
    (folder / "0" / "meta.yaml").write_text("experiment_id: '0'\nname: Default\n")
    (run / "meta.yaml").write_text("run_id: 0123456789abcdef\nrun_name: dpo-r16\nstart_time: 0\nstatus: 3\n")
    files: dict[str, list[str]] = {}
    for step, t, row in logs(train, evals):
        for k, v in row.items():
            files.setdefault(k, []).append(f"{int(t * 1000)} {v!r} {step}\n")
    for key, lines in files.items():
        path = run / "metrics" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))
    return folder


def write_wandb(folder: Path, train, evals) -> Path:
    import wandb

    folder.mkdir(parents=True)
    run = wandb.init(project="bench", name="dpo-r16", mode="offline", dir=str(folder), settings={"silent": True})
    for step, _, row in logs(train, evals):
        run.log({**rewrite(row), "train/global_step": step})
    run.finish()
    return folder / "wandb"


def read(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    grid = open_path(path)
    grid.poll()
    elapsed = time.perf_counter() - start
    series = grid.cells[0].series
    points = sum(int(np.isfinite(s.column(n)).sum()) for s in (series.train, series.eval) for n in s.names)
    return elapsed, points


def main() -> None:
    points = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    out = Path(f"/tmp/prefwatch-bench/trackers-{points}")
    writers = {
        "metrics.jsonl": (write_jsonl, "jsonl"),
        "trackio": (write_trackio, "trackio"),
        "mlflow.db": (write_mlflow_db, "mlflow-db"),
        "mlruns": (write_mlruns, "mlruns"),
        "wandb": (write_wandb, "wandb"),
    }
    train = evals = None
    paths = {}
    for name, (writer, folder) in writers.items():
        marker = out / f"{folder}.path"
        if not marker.exists():
            if train is None:
                train, evals = rows(points)
            start = time.perf_counter()
            path = writer(out / folder, train, evals)
            marker.write_text(str(path))
            print(f"wrote {name} in {time.perf_counter() - start:.1f} s", flush=True)
        paths[name] = Path(marker.read_text())
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1, 5, 15 min)")
    results = {}
    for name, path in paths.items():
        times, counted = [], 0
        for _ in range(3):
            elapsed, counted = read(path)
            times.append(elapsed)
        results[name] = (min(times), statistics.median(times), counted)
    floor_best, floor_median, floor_points = results["metrics.jsonl"]
    for name, (best, median, counted) in results.items():
        print(
            f"{name:14s} {counted:>9,} points  best {best:6.3f} s  median {median:6.3f} s"
            f"  = {median / floor_median:5.1f}x metrics.jsonl (median), {best / floor_best:5.1f}x (best)"
            + ("" if counted == floor_points else f"  POINTS DIFFER from metrics.jsonl ({floor_points:,})")
        )


if __name__ == "__main__":
    main()
