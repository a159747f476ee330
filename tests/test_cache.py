"""The columnar cache of finished logs: used only while the file is exactly as cached, never required.

Correctness, not timing (bench/bench_analysis.py measures the second opening against the first):
a hit gives the series a full read gives; an append, a truncation or a replacement (even to the
same size and modification time) is a miss; a damaged entry or a read-only cache folder is a
miss, never an error; the run directory is never written to.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from prefwatch.analysis.analyse import analyse
from prefwatch.ingest import cache
from prefwatch.ingest.discover import open_path


@pytest.fixture(autouse=True, params=["in memory", "into place"])
def small_entries(monkeypatch, tmp_path, request):
    """Entries for small logs too (the real threshold is 64 KiB; streamed from 1 MiB), in a cache folder
    of the test's own. Every test runs twice: entries read whole and parsed in memory (those up to
    ``SMALL_ENTRY``), and read column by column into their arrays (larger ones)."""
    monkeypatch.setattr(cache, "MIN_BYTES", 0)
    monkeypatch.setattr(cache, "STREAM_BYTES", 0)
    if request.param == "into place":
        monkeypatch.setattr(cache, "SMALL_ENTRY", 0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_log(path: Path, steps: int, end: bool = True, offset: float = 0.0) -> None:
    lines = [
        {
            "loss": 0.7 - 0.001 * s + offset,
            "rewards/margins": 0.01 * s,
            "grad_norm": float("nan") if s == 7 else 1.0,
            "step": s,
        }
        for s in range(1, steps + 1)
    ]
    lines.append({"eval_rewards/accuracies": 0.6, "step": steps})
    lines.append({"bad": "line"})  # a rejected line: its count must survive the cache
    if end:
        lines.append({"train_runtime": 3.0, "train_loss": 0.5, "step": steps})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def opened(folder: Path):
    grid = open_path(folder)
    grid.poll()
    return grid, grid.cells[0]


def same_series(a, b) -> None:
    for split in ("train", "eval"):
        x, y = a.split(split), b.split(split)
        assert x.names == y.names
        np.testing.assert_array_equal(x.steps, y.steps)
        for name in x.names:
            np.testing.assert_array_equal(x.column(name), y.column(name))
    assert (a.records, dict(a.rejected), a.end_record) == (b.records, dict(b.rejected), b.end_record)
    assert a.first_non_finite == b.first_non_finite


def test_a_finished_log_is_read_from_the_cache_the_second_time(tmp_path):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 50)
    _, first = opened(tmp_path / "runs")
    assert cache.entry_path(log).is_file()
    _, second = opened(tmp_path / "runs")
    assert second.reader.cached  # taken from the entry (or saved to it)...
    same_series(second.series, first.series)  # ...and equal to a full read
    grid_first, grid_second = opened(tmp_path / "runs")[0], opened(tmp_path / "runs")[0]
    assert analyse(grid_first, now=0).to_json() == analyse(grid_second, now=0).to_json()


def test_an_unfinished_log_is_not_cached(tmp_path):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 20, end=False)
    opened(tmp_path / "runs")
    assert not cache.entry_path(log).exists()


@pytest.fixture
def hits(monkeypatch):
    """Each cache lookup's outcome (True: a hit), in order."""
    outcomes: list[bool] = []
    real = cache.load

    def spy(log):
        result = real(log)
        outcomes.append(result is not None)
        return result

    monkeypatch.setattr(cache, "load", spy)
    return outcomes


def parse_without_cache(folder: Path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(cache, "load", lambda log: None)
        patch.setattr(cache, "save", lambda *args: False)
        return opened(folder)[1].series


def test_a_hit_is_counted_by_the_spy(tmp_path, hits):
    write_log(tmp_path / "runs" / "dpo-r8" / "metrics.jsonl", 30)
    opened(tmp_path / "runs")
    opened(tmp_path / "runs")
    assert hits == [False, True]


@pytest.mark.parametrize("change", ["append", "truncate", "replace_same_size_and_mtime"])
def test_a_changed_log_is_never_read_from_the_cache(tmp_path, monkeypatch, hits, change):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 40)
    opened(tmp_path / "runs")
    assert cache.entry_path(log).is_file()
    if change == "append":
        with open(log, "a") as f:
            f.write(json.dumps({"loss": 0.1, "step": 41}) + "\n")
    elif change == "truncate":
        write_log(log, 10)
    else:
        before = os.stat(log)
        replacement = log.with_name("new.jsonl")
        replacement.write_bytes(log.read_bytes().replace(b"rewards/margins", b"rewards/MARGINS"))  # same length
        assert replacement.stat().st_size == before.st_size
        os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(replacement, log)
    _, cell = opened(tmp_path / "runs")
    assert hits == [False, False]  # the second opening missed: the file changed
    same_series(cell.series, parse_without_cache(tmp_path / "runs", monkeypatch))


def test_a_damaged_entry_is_a_miss(tmp_path, hits):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    _, first = opened(tmp_path / "runs")
    cache.entry_path(log).write_bytes(b"not an npz file")
    _, again = opened(tmp_path / "runs")
    assert hits == [False, False]
    same_series(again.series, first.series)


def test_an_unwritable_cache_folder_is_a_miss_and_nothing_is_written_beside_the_logs(tmp_path, monkeypatch, hits):
    runs = tmp_path / "runs"
    log = runs / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache folder's parent is a file: no entry can be made (even as root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    _, cell = opened(runs)
    _, again = opened(runs)
    assert hits == [False, False]
    same_series(again.series, cell.series)
    assert sorted(p.name for p in log.parent.iterdir()) == ["metrics.jsonl"]  # the run directory is only read
    log.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)  # and a read-only one is fine
    try:
        assert opened(runs)[1].series.records == cell.series.records
    finally:
        log.parent.chmod(stat.S_IRWXU)


@pytest.fixture
def small_blocks(monkeypatch):
    """A log read in many small blocks and handed to the entry's writer in many chunks."""
    from prefwatch.ingest import tail

    monkeypatch.setattr(tail, "_CHUNK_BYTES", 512)
    monkeypatch.setattr(cache, "_CHUNK_ROWS", 7)


def no_leftovers() -> list[str]:
    return sorted(p.name for p in cache.cache_dir().glob(".entry-*"))


def test_an_entry_streamed_in_chunks_while_the_log_is_read_equals_a_full_read(
    tmp_path, monkeypatch, small_blocks, hits
):
    """Chunks of rows written on a thread while the log is read; a metric that first appears late
    (NaN before it in the chunks that lack it) and an evaluation row in between come back exact."""
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 120)
    lines = log.read_text().splitlines(keepends=True)
    late = json.dumps({"loss": 0.2, "logps/chosen": -5.0, "step": 121}) + "\n"
    log.write_text("".join(lines[:-1]) + late + lines[-1])  # before the end record
    streamed = []
    real = cache.Stream.begin

    def spy(path, size):
        stream = real(path, size)
        streamed.append(stream)
        return stream

    monkeypatch.setattr(cache.Stream, "begin", spy)
    _, first = opened(tmp_path / "runs")
    assert streamed and streamed[0] is not None and not streamed[0].abandoned
    assert cache.entry_path(log).read_bytes().count(b'"split": "train"') > 3  # many chunks, not one
    _, second = opened(tmp_path / "runs")
    assert hits == [False, True]
    same_series(second.series, parse_without_cache(tmp_path / "runs", monkeypatch))
    assert np.isnan(second.series.train.column("logps/chosen")[:-1]).all()
    assert no_leftovers() == []


def test_a_resume_while_streaming_abandons_the_stream_and_saves_the_whole_series(
    tmp_path, monkeypatch, small_blocks, hits
):
    """Rows handed to the writer must never change: a resumed run drops rows it replays, so the
    stream is dropped and the series is saved whole at the end."""
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 60)
    lines = log.read_text().splitlines(keepends=True)
    resumed = [json.dumps({"loss": 0.4, "rewards/margins": 2.0, "step": s}) + "\n" for s in range(40, 71)]
    log.write_text("".join(lines[:-1]) + "".join(resumed) + lines[-1])
    streams = []
    real = cache.Stream.begin
    monkeypatch.setattr(cache.Stream, "begin", lambda path, size: streams.append(real(path, size)) or streams[-1])
    _, first = opened(tmp_path / "runs")
    assert streams[0].abandoned and cache.entry_path(log).is_file()
    assert first.series.train.segments == 2
    _, second = opened(tmp_path / "runs")
    assert hits == [False, True]
    same_series(second.series, first.series)
    assert no_leftovers() == []


def test_a_log_still_being_written_starts_no_stream(tmp_path, monkeypatch, small_blocks):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 60, end=False)
    assert not cache.ends_finished(log)
    opened(tmp_path / "runs")
    assert not cache.cache_dir().exists() or list(cache.cache_dir().iterdir()) == []


@pytest.mark.parametrize("cut", [8, 100, -9, -1])
def test_an_entry_cut_short_is_a_miss(tmp_path, small_blocks, hits, cut):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 80)
    _, first = opened(tmp_path / "runs")
    entry = cache.entry_path(log)
    entry.write_bytes(entry.read_bytes()[:cut])
    _, again = opened(tmp_path / "runs")
    assert hits == [False, False]
    same_series(again.series, first.series)


def test_an_entry_whose_summary_promises_more_rows_than_it_holds_is_a_miss_without_allocating_them(tmp_path, hits):
    """A damaged summary saying a split has 10^12 rows: refused from the entry's size, never allocated."""
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    _, first = opened(tmp_path / "runs")
    entry = cache.entry_path(log)
    data = entry.read_bytes()
    at, _ = cache._TRAILER.unpack(data[-cache._TRAILER.size :])
    summary = json.loads(data[at + 8 : -cache._TRAILER.size])
    summary["train"]["rows"] = 10**12
    text = json.dumps(summary).encode()
    frame = cache._LENGTH.pack(len(text)) + text  # with its checksum right: the size check refuses it
    entry.write_bytes(data[:at] + frame + cache._TRAILER.pack(at, zlib.crc32(frame)))
    _, again = opened(tmp_path / "runs")
    assert hits == [False, False]
    same_series(again.series, first.series)


def test_what_no_reader_will_use_is_swept_from_the_cache_folder(tmp_path, monkeypatch):
    """A temporary entry whose writer ended long ago (a monitor quit mid-read) and an entry of the
    earlier format are removed when an entry is next written; a fresh temporary entry (another
    process writing now) and anything not named like ours are kept."""
    monkeypatch.setattr(cache, "_swept", False)
    folder = cache.cache_dir()
    folder.mkdir(parents=True)
    stale, fresh = folder / ".entry-old.tmp", folder / ".entry-now.tmp"
    old_format, other = folder / ("0" * 32 + ".npz"), folder / "notes.txt"
    for path in (stale, fresh, old_format, other):
        path.write_bytes(b"x")
    os.utime(stale, (0, 0))
    write_log(tmp_path / "runs" / "dpo-r8" / "metrics.jsonl", 30)
    opened(tmp_path / "runs")
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".entry")) == [".entry-now.tmp", "notes.txt"]


REAL = Path(__file__).resolve().parent / "real_logs" / "rlhf-recsys-outputs" / "trainer_state.json"


def real_log(path: Path, repeats: int, resume_at: int | None = None) -> None:
    """A log of real rows (chandlerzuo/rlhf_recsys, LLaMA-Factory ORPO on TRL; tests/real_logs/PROVENANCE.md)
    made long enough to be cached: the run's 33 train rows laid end to end ``repeats`` times (steps
    shifted by the run's 336 steps each time), then its real end-of-training summary. With
    ``resume_at``, the last repeat is logged again from that step on, as a job resumed from a checkpoint."""
    history = json.loads(REAL.read_text())["log_history"]
    rows, summary = history[:-1], history[-1]
    lines = [dict(row, step=row["step"] + 336 * k) for k in range(repeats) for row in rows]
    if resume_at is not None:
        lines += [line for line in lines[-len(rows) :] if line["step"] >= resume_at]
    lines.append(dict(summary, step=summary["step"] + 336 * (repeats - 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.mark.parametrize("resumed", [False, True])
def test_a_real_log_large_enough_to_cache_comes_back_bit_for_bit(tmp_path, monkeypatch, hits, resumed):
    """Over 1 MiB (where the entry is written while the log is read) and at the real block size: a real TRL-era log's values (float32 numbers
    printed as doubles, learning rates to 1e-9) come back from the entry exactly, and the report
    from the entry is the report from the log. Resumed, the stream is dropped (its rows changed)
    and the entry is saved whole, with the same result."""
    monkeypatch.setattr(cache, "MIN_BYTES", 1 << 20)
    log = tmp_path / "runs" / "orpo-r16" / "metrics.jsonl"
    real_log(log, repeats=70, resume_at=336 * 69 + 100 if resumed else None)
    assert log.stat().st_size > 1 << 20
    streams = []
    real = cache.Stream.begin
    monkeypatch.setattr(cache.Stream, "begin", lambda path, size: streams.append(real(path, size)) or streams[-1])
    grid, first = opened(tmp_path / "runs")
    assert streams[0] is not None and streams[0].abandoned == resumed
    assert first.series.train.segments == (2 if resumed else 1) and first.series.finished
    again, second = opened(tmp_path / "runs")
    assert hits == [False, True]
    same_series(second.series, parse_without_cache(tmp_path / "runs", monkeypatch))
    assert analyse(grid, now=0).to_json() == analyse(again, now=0).to_json()


def test_a_named_pipe_in_place_of_an_entry_is_a_miss_not_a_wait(tmp_path, hits):
    """Opening a FIFO for reading waits for a writer: an entry that is not a regular file is a miss
    at once, and the next save replaces it with a real entry."""
    import threading

    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    entry = cache.entry_path(log)
    entry.parent.mkdir(parents=True)
    os.mkfifo(entry)
    done = threading.Thread(target=opened, args=(tmp_path / "runs",), daemon=True)
    done.start()
    done.join(timeout=30)
    if done.is_alive():  # the regression: release the reader before failing
        with open(entry, "wb"):
            pass
    assert not done.is_alive() and hits == [False]
    assert stat.S_ISREG(entry.stat().st_mode)
    opened(tmp_path / "runs")
    assert hits == [False, True]


# ---- Whose entries are trusted ----------------------------------------------------------------------


def accuracy_of(run: Path, cell: str, env: dict[str, str]) -> tuple[float, dict, str]:
    """A real ``prefwatch report --format json`` of ``run`` (the real 1 MiB threshold): the cell's
    held-out accuracy, the verdict, and what it said on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "prefwatch", "report", str(run), "--format", "json", "--heldout-pairs", "200"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode in (0, 3), done.stderr
    report = json.loads(done.stdout)
    cells = {c["id"]: c for c in report["cells"]}
    return cells[cell]["review"]["heldout_accuracy"], report["verdict"], done.stderr


def forge(log: Path, accuracy: float) -> None:
    """Rewrite ``log``'s entry with another held-out accuracy, as anyone with prefwatch can."""
    series, seen = cache.load(log)
    column = series.split("eval").column("rewards/accuracies")
    column[np.isfinite(column)] = accuracy
    assert cache.save(log, seen, series)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_another_user_made_is_not_used(tmp_path, monkeypatch):
    """A shared XDG_CACHE_HOME whose prefwatch/ folder another user made first (world-writable, as they
    would make it to share it): their forged entry read a held-out accuracy of 0.60 as 0.99 and
    turned the verdict. The folder is given to uid 4242 with chown (root can; a user added with
    useradd is the same owner to the kernel, without changing this machine's user database)."""
    runs = tmp_path / "runs"
    write_log(runs / "dpo-r8" / "metrics.jsonl", 14_000)  # 0.6 held out, past the real 1 MiB threshold
    write_log(runs / "dpo-r16" / "metrics.jsonl", 14_000)
    rewritten = (
        (runs / "dpo-r16" / "metrics.jsonl")
        .read_text()
        .replace('"eval_rewards/accuracies": 0.6', '"eval_rewards/accuracies": 0.8')
    )
    (runs / "dpo-r16" / "metrics.jsonl").write_text(rewritten)
    assert (runs / "dpo-r8" / "metrics.jsonl").stat().st_size > 1 << 20
    shared = tmp_path / "shared"
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    truth, verdict, _ = accuracy_of(runs, "dpo-r8", {"XDG_CACHE_HOME": str(tmp_path / "mine")})
    assert truth == pytest.approx(0.6) and verdict["rank"] == 16
    opened(runs)  # the other user's prefwatch reads the same logs: entries in the shared folder
    forge(runs / "dpo-r8" / "metrics.jsonl", 0.99)
    folder = shared / "prefwatch"
    for path in [folder, *folder.iterdir()]:
        os.chown(path, 4242, 4242)
    folder.chmod(0o777)

    read, verdict, said = accuracy_of(runs, "dpo-r8", {"XDG_CACHE_HOME": str(shared)})
    assert read == pytest.approx(0.6) and verdict["rank"] == 16  # the logs, not the forged entry
    assert said.count(f"prefwatch: not using the cache folder {folder}: it belongs to uid 4242") == 1
    assert all(p.stat().st_uid == 4242 for p in folder.iterdir())  # nothing of the user's went into it


def test_an_entry_whose_rows_were_changed_is_a_miss(tmp_path, hits):
    """Bound to its content: an entry in the user's own folder with one held-out accuracy rewritten in
    place (same size, a valid float) was read as it stood."""
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    _, first = opened(tmp_path / "runs")
    entry = cache.entry_path(log)
    data = entry.read_bytes()
    assert data.count(struct.pack("<d", 0.6)) == 1
    entry.write_bytes(data.replace(struct.pack("<d", 0.6), struct.pack("<d", 0.99)))
    _, again = opened(tmp_path / "runs")
    assert hits == [False, False]
    same_series(again.series, first.series)
    assert np.nanmax(again.series.split("eval").column("rewards/accuracies")) == pytest.approx(0.6)


def test_an_entry_someone_else_may_write_is_not_read(tmp_path, hits):
    log = tmp_path / "runs" / "dpo-r8" / "metrics.jsonl"
    write_log(log, 30)
    opened(tmp_path / "runs")
    cache.entry_path(log).chmod(0o666)
    opened(tmp_path / "runs")
    assert hits == [False, False]
