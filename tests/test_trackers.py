"""Trackers' own stores, written by the real libraries during a real TRL training of the tiny model.

One training (DPO, 8 steps, evaluated every 4) logs with ``report_to=["trackio", "mlflow", "wandb"]``
(MLflow into a SQLite ``mlflow.db``, W&B offline) while prefwatch's callback writes metrics.jsonl; a
second, at the same time, logs SimPO to MLflow's file store (one process holds one MLflow store).
Every store is followed live while it grows and read again when finished, and must give the values
metrics.jsonl gives. All trackers run offline and local: nothing touches the network.

The same training process is the real process whose CPU and memory psutil reports (checked against
/proc) and whose job writes system.jsonl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from prefwatch.analysis.analyse import analyse
from prefwatch.core import metrics as m
from prefwatch.files import rundir
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.sources import GridSource, SourceError
from prefwatch.ingest.trackers import TrackerRun

pytestmark = pytest.mark.skipif(
    not all(find_spec(n) for n in ("torch", "trl", "peft", "trackio", "mlflow", "sqlalchemy", "wandb", "psutil")),
    reason="the training extras or the trackers (dev extra) are not installed",
)

TRAIN = {"max_steps": 8, "eval_every": 4, "save_every": 100, "log_every": 1}
COMPARED = (m.CHOSEN, m.REJECTED, m.MARGINS, m.ACCURACIES, m.LOSS)


def start(cell_dir: Path, cell: dict, env: dict[str, str]) -> subprocess.Popen:
    cell_dir.mkdir(parents=True)
    (cell_dir / rundir.CELL_FILE).write_text(json.dumps(cell))
    return subprocess.Popen(
        [sys.executable, "-m", "prefwatch.train", str(cell_dir / rundir.CELL_FILE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cell_dir.parent,
    )


class Follower:
    """Opens a store as soon as it holds a run, then polls it, remembering how far each poll got."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.grid: GridSource | None = None
        self.seen: list[int] = []  # train rows after each poll that changed something

    def poll(self) -> None:
        if self.grid is None:
            try:
                self.grid = open_path(self.path)
            except SourceError:
                return
        if self.grid.poll():
            self.seen.append(len(self.grid.cells[0].series.train))


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    from prefwatch.files.system import Recorder

    root = tmp_path_factory.mktemp("trackers")
    offline = {
        "PREFWATCH_CACHE": str(root / "cache"),
        "PREFWATCH_SYSTEM_INTERVAL": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root / "w"),
        "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(root / "trackio"),
        "DISABLE_MLFLOW_INTEGRATION": "FALSE",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    (root / "w").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_"))}
    a = root / "a" / "dpo-r8"
    b = root / "b" / "simpo-r4"
    one = start(
        a,
        {"objective": "dpo", "rank": 8, "train": {**TRAIN, "report_to": ["trackio", "mlflow", "wandb"]}},
        {**env, **offline},
    )
    file_store = {"MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    two = start(
        b,
        {"objective": "simpo", "rank": 4, "train": {**TRAIN, "report_to": ["mlflow"]}},
        {**env, **offline, **file_store},
    )
    stores = {
        "trackio": root / "trackio",
        "mlflow.db": root / "mlflow.db",
        "wandb": root / "w" / "wandb",
        "mlruns": root / "mlruns",
    }
    followers = {name: Follower(path) for name, path in stores.items()}
    recorder = Recorder(root / "probe.jsonl", pid=one.pid)
    probes = []
    deadline = time.monotonic() + 600
    while (one.poll() is None or two.poll() is None) and time.monotonic() < deadline:
        for follower in followers.values():
            follower.poll()
        if one.poll() is None and len(probes) < 3 and (a / rundir.METRICS_FILE).exists():
            probes.append(probe(recorder, one.pid))
        time.sleep(0.2)
    outputs = [p.communicate(timeout=60)[0] for p in (one, two)]
    for process, output in zip((one, two), outputs):
        assert process.returncode == 0, output[-4000:]
    for follower in followers.values():
        follower.poll()
    return {"a": a, "b": b, "stores": stores, "followers": followers, "probes": probes, "pid": one.pid, "root": root}


def probe(recorder, pid: int) -> dict:
    """One psutil sample between two reads of /proc, and the CPU time /proc counts over a second."""
    rss_before = proc_rss(pid)
    recorder._process.cpu_percent()
    cpu_before, wall_before = proc_cpu_seconds(pid), time.monotonic()
    time.sleep(1.0)
    sample = recorder.sample()
    cpu_after, wall_after = proc_cpu_seconds(pid), time.monotonic()
    rss_after = proc_rss(pid)
    proc_percent = 100 * (cpu_after - cpu_before) / (wall_after - wall_before)
    return {"sample": sample, "rss": (rss_before, rss_after), "cpu": proc_percent}


def jsonl_series(cell_dir: Path):
    grid = open_path(cell_dir / rundir.METRICS_FILE)
    grid.poll()
    return grid.cells[0].series


def assert_same_series(store, reference) -> None:
    for split in ("train", "eval"):
        got, want = store.split(split), reference.split(split)
        assert got.steps.tolist() == want.steps.tolist(), split
        for name in COMPARED:
            np.testing.assert_allclose(got.column(name), want.column(name), rtol=1e-9, err_msg=f"{split} {name}")
    assert store.finished and reference.finished


@pytest.mark.parametrize("store", ["trackio", "mlflow.db", "wandb"])
def test_store_gives_the_values_of_metrics_jsonl(run, store):
    grid = open_path(run["stores"][store])
    grid.poll()
    (cell,) = grid.cells
    assert (cell.id, cell.objective, cell.rank, cell.max_steps) == ("dpo-r8", "dpo", 8, 8)
    assert_same_series(cell.series, jsonl_series(run["a"]))
    assert not cell.series.rejected and cell.read_error is None


def test_mlflow_file_store_gives_the_values_of_metrics_jsonl(run):
    for path in (run["stores"]["mlruns"], run["stores"]["mlruns"] / "0"):  # the store, or one experiment
        grid = open_path(path)
        grid.poll()
        (cell,) = grid.cells
        assert (cell.id, cell.objective, cell.rank) == ("simpo-r4", "simpo", 4)
        assert_same_series(cell.series, jsonl_series(run["b"]))


@pytest.mark.parametrize("store", ["trackio", "mlflow.db", "wandb", "mlruns"])
def test_store_followed_live_while_it_grows(run, store):
    """The reader opened the store while training wrote it, saw it part-way, and ended where a fresh read ends.

    W&B's core buffers its .wandb file (its first flush came ~12 s into a run here, then one every few
    seconds): an 8-step run may reach the file in one piece, so for W&B growth at every byte is
    tested on the real file below (test_wandb_store_read_at_any_byte_boundary)."""
    follower = run["followers"][store]
    assert follower.grid is not None
    final = 8
    if store != "wandb":
        assert any(0 < rows < final for rows in follower.seen), follower.seen
    assert follower.seen == sorted(follower.seen) and follower.seen[-1] == final
    fresh = open_path(run["stores"][store])
    fresh.poll()
    live = follower.grid.cells[0].series
    assert_same_series(live, fresh.cells[0].series)
    assert live.train.segments == 1


@pytest.mark.parametrize("store", ["trackio", "mlflow.db", "wandb", "mlruns"])
def test_report_on_a_store_matches_the_report_on_metrics_jsonl(run, store, tmp_path):
    """Same findings, review and verdict as prefwatch's own log of the same run (copied alone into a
    folder of the run's name, so both carry the same labels)."""
    cell_dir = run["b"] if store == "mlruns" else run["a"]
    own = tmp_path / cell_dir.name
    own.mkdir()
    shutil.copy(cell_dir / rundir.METRICS_FILE, own / rundir.METRICS_FILE)
    own_grid, store_grid = open_path(own), open_path(run["stores"][store])
    own_grid.poll()
    store_grid.poll()
    mine, theirs = analyse(own_grid).to_json(), analyse(store_grid).to_json()
    for key in ("objective", "rank", "state", "step", "review", "findings"):
        assert theirs["cells"][0][key] == mine["cells"][0][key], key
    assert theirs["verdict"] == mine["verdict"]


def test_folder_a_script_ran_in_is_recognised(run):
    """The folder holding mlflow.db (the script's working directory) and the W&B folder's parent."""
    assert isinstance(open_path(run["root"]).cells[0].reader, TrackerRun)
    assert [c.id for c in open_path(run["root"] / "w").cells] == ["dpo-r8"]


def test_wandb_store_read_at_any_byte_boundary(run, tmp_path):
    """The .wandb file copied in uneven pieces, polled after each: the same rows in the end, none twice."""
    (source,) = run["stores"]["wandb"].glob("*run-*/run-*.wandb")
    data = source.read_bytes()
    target = tmp_path / "offline-run-x" / source.name
    target.parent.mkdir()
    target.write_bytes(b"")
    grid = open_path(target)
    cuts = sorted({1, 5, 7, 8, 100, 4095, *range(0, len(data), 997), len(data)})
    for start_at, end_at in zip(cuts, cuts[1:]):
        with open(target, "ab") as f:
            f.write(data[start_at:end_at])
        grid.poll()
    assert_same_series(grid.cells[0].series, _polled(open_path(source)).cells[0].series)
    assert not grid.cells[0].series.rejected


def _polled(grid: GridSource) -> GridSource:
    grid.poll()
    return grid


def test_wandb_damaged_record_is_counted_not_fatal(run, tmp_path):
    (source,) = run["stores"]["wandb"].glob("*run-*/run-*.wandb")
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target = tmp_path / "offline-run-x" / source.name
    target.parent.mkdir()
    target.write_bytes(bytes(data))
    grid = _polled(open_path(target))
    assert grid.cells[0].series.rejected["damaged W&B record"] >= 1
    assert grid.cells[0].read_error is None


def test_wandb_store_is_read_without_the_wandb_package(run, monkeypatch, capsys):
    """prefwatch decodes the .wandb records itself: with wandb not importable the report is the same."""
    from prefwatch.cli import main

    code = main(["report", str(run["stores"]["wandb"])])
    with_package = capsys.readouterr().out
    assert code != 2 and "dpo r=8" in with_package  # a verdict, not bad input
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "wandb.proto", None)
    assert main(["report", str(run["stores"]["wandb"])]) == code
    assert capsys.readouterr().out == with_package


def test_sqlite_store_is_never_written(run):
    """Read-only: reading leaves the database byte for byte as it was, and a writer can commit while a reader is open."""
    import sqlite3

    db = run["stores"]["mlflow.db"]
    before = db.read_bytes()
    grid = _polled(open_path(db))
    assert db.read_bytes() == before
    writer = sqlite3.connect(db, timeout=5)
    writer.execute("UPDATE runs SET name = name")
    writer.commit()
    writer.close()
    assert grid.poll() is False


# ---- the system line: the training process, as psutil sees it and /proc says -------------------


def test_psutil_figures_agree_with_proc(run):
    probes = run["probes"]
    assert probes, "the training ended before it could be probed"
    for p in probes:
        sample = p["sample"]
        low, high = min(p["rss"]), max(p["rss"])
        assert 0.9 * low <= sample.rss <= 1.1 * high
        assert abs(sample.cpu - p["cpu"]) <= 15.0, (sample.cpu, p["cpu"])
        assert sample.pid == run["pid"]


def test_job_records_system_jsonl_and_sources_read_it(run):
    grid = _polled(open_path(run["a"]))
    samples = grid.cells[0].system.samples
    assert len(samples) >= 2 and {s.pid for s in samples} == {run["pid"]}
    assert all(50 << 20 < s.rss < 8 << 30 for s in samples)
    assert all(0.0 <= s.cpu <= 100.0 * (os.cpu_count() or 1) for s in samples)
    times = [s.time for s in samples]
    assert times == sorted(times)
    if find_spec("pynvml") is None or not _has_gpu():
        assert all(s.gpus == () for s in samples)  # no GPU here: nothing about GPUs, and no error


def _has_gpu() -> bool:
    from prefwatch.files.system import load_nvml

    return load_nvml() is not None


def test_mlflow_sqlite_nan_and_keys_that_appear_later(tmp_path):
    """Real MLflow writes (its client, in this process): NaN (stored as is_nan) and a key first logged
    after the reader opened the store."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run("0", run_name="simpo-r16").info.run_id

    def log(step: int, **values: float) -> None:
        metrics = [Metric(key.replace("__", "/"), v, 1_700_000_000_000 + step, step) for key, v in values.items()]
        client.log_batch(run_id, metrics=metrics)

    log(1, loss=0.5, rewards__chosen=1.0)
    grid = _polled(open_path(tmp_path / "mlflow.db"))
    log(2, loss=float("nan"), rewards__chosen=1.5)
    log(2, eval_rewards__chosen=2.0)
    assert grid.poll()
    series = grid.cells[0].series
    claim = grid.cells[0].claim  # what the run's name says (these few made-up values show no objective of their own)
    assert claim is not None and (claim.objective, grid.cells[0].rank) == ("simpo", 16)
    assert series.train.column("loss")[0] == 0.5 and np.isnan(series.train.column("loss")[1])
    assert series.train.column(m.CHOSEN).tolist() == [1.0, 1.5]
    assert series.eval.column(m.CHOSEN).tolist() == [2.0] and series.eval.steps.tolist() == [2]
    assert series.first_non_finite[("train", "loss")] == 2


def test_wandb_file_read_in_bounded_pieces(run, monkeypatch):
    """A large .wandb file is read a piece at a time in one poll (memory stays bounded): 4 KiB pieces here."""
    from prefwatch.ingest.readers import wandb as wandb_reader

    monkeypatch.setattr(wandb_reader.Framing.read, "__defaults__", (4096,))
    (source,) = run["stores"]["wandb"].glob("*run-*/run-*.wandb")
    assert source.stat().st_size > 3 * 4096
    grid = _polled(open_path(source))
    assert_same_series(grid.cells[0].series, jsonl_series(run["a"]))
    assert not grid.cells[0].series.rejected


def test_store_that_cannot_be_read_yet_is_a_one_line_error(tmp_path):
    """A trackio database whose writer has made its tables but not yet its run columns (trackio adds
    columns as it migrates), or that another trackio wrote: a SourceError naming the file and the
    columns it lacks, never a traceback."""
    import sqlite3

    db = tmp_path / "proj.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE configs (id INTEGER PRIMARY KEY, config TEXT)")
        c.execute("CREATE TABLE metrics (id INTEGER PRIMARY KEY, metrics TEXT)")
    with pytest.raises(
        SourceError, match=r"proj.db: schema drift \(SQLite: no column metrics.run_name.*this reader knows trackio"
    ):
        open_path(db)


def test_each_store_gives_the_runs_factors_and_where_each_was_read(run):
    """The settings TRL's callbacks log with the run (TrainingArguments, the trainer's config, PEFT's
    config) are the run's factors, each said to come from its tracker's config; the rank from the logged
    PEFT config or the run's name; never "given" (issue 24)."""
    from prefwatch.files.settings import CellSettings

    origins = {"trackio": "trackio config", "mlflow.db": "MLflow params", "wandb": "W&B config"}
    origins["mlruns"] = "MLflow params"
    learning_rate = CellSettings().train.learning_rate
    for name, path in run["stores"].items():
        analysis = analyse(_polled(open_path(path)))
        assert analysis.cells, name
        for cell in analysis.cells:
            factors, objective = cell.factors, cell.source.objective
            assert objective in ("dpo", "simpo"), (name, cell.source.id)
            lr, beta = factors.values["lr"], factors.values["beta"]
            assert (lr.value, str(lr.origin), lr.detail) == (learning_rate, origins[name], "learning_rate")
            assert (beta.value, str(beta.origin)) == (CellSettings(objective=objective).params().beta, origins[name])
            rank = 8 if objective == "dpo" else 4
            assert (cell.source.rank, factors.get("rank")) == (rank, rank)
            claim = cell.source.claim
            assert claim is not None and claim.rank_source in (origins[name], "run name"), (name, claim)
            assert "given" not in (claim.objective_source, claim.rank_source)
