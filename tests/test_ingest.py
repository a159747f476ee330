"""The tail reader and the series it feeds: every complete line once, in order; damage counted, never raised."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prefwatch.core.series import CellSeries, minmax_buckets
from prefwatch.ingest import columnar
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.tail import MAX_LINE_BYTES, TailReader


def line(step: int, **values: float) -> bytes:
    return (json.dumps({"step": step, "time": 1000.0 + step, **values}) + "\n").encode()


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = TailReader(path)
    whole = line(1, loss=0.5)
    with open(path, "wb") as f:
        f.write(whole[:10])
        f.flush()
        assert reader.poll().records == []
        f.write(whole[10:])
        f.flush()
        assert reader.poll().records == [{"step": 1, "time": 1001.0, "loss": 0.5}]
    assert reader.poll().records == []


def test_non_finite_values_are_records_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1, "loss": NaN, "grad_norm": Infinity}\n{"step": 2, "loss": -Infinity}\n')
    batch = TailReader(path).poll()
    assert not batch.rejected
    assert math.isnan(batch.records[0]["loss"]) and batch.records[1]["loss"] == -math.inf


def test_damage_is_counted_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    huge = b'{"step": 3, "blob": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n'
    path.write_bytes(line(1) + b"not json\n" + b"[1, 2]\n" + huge + line(4, loss="high") + line(5))
    series = CellSeries()
    batch = TailReader(path).poll()
    series.rejected.update(batch.rejected)
    series.add_all(batch.records)
    assert list(series.train.steps) == [1, 4, 5]
    assert series.rejected == {"not JSON": 1, "line over 1 MiB": 1, "not an object": 1, "wrong type": 1}


def test_oversized_partial_line_is_skipped_until_its_end(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    reader = TailReader(path)
    with open(path, "wb") as f:
        f.write(b'{"step": 1, "x": "' + b"y" * (MAX_LINE_BYTES + 1))
        f.flush()
        assert reader.poll().rejected == {"line over 1 MiB": 1}
        f.write(b"more of the same line" * 10 + b'"}\n' + line(2))
        f.flush()
        batch = reader.poll()
    assert [r["step"] for r in batch.records] == [2] and not batch.rejected


def test_truncation_and_rotation_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    reader = TailReader(path)
    path.write_bytes(line(1) + line(2))
    assert len(reader.poll().records) == 2
    path.write_bytes(line(7))  # shrank: truncated and rewritten
    batch = reader.poll()
    assert batch.restarted and [r["step"] for r in batch.records] == [7]
    replacement = tmp_path / "new.jsonl"
    replacement.write_bytes(line(1) + line(2) + line(3))
    os.replace(replacement, path)  # a new inode, larger than the old file
    batch = reader.poll()
    assert batch.restarted and [r["step"] for r in batch.records] == [1, 2, 3]
    path.unlink()
    reader.poll()
    assert reader.missing


def test_step_regression_starts_a_segment_without_zigzag() -> None:
    series = CellSeries()
    for step in [1, 2, 3, 4, 5, 3, 4, 5, 6]:
        series.add({"step": step, "loss": float(step)})
    assert list(series.train.steps) == [1, 2, 3, 4, 5, 6]
    assert series.train.segments == 2


def test_end_record_marks_finished_and_is_not_a_point() -> None:
    series = CellSeries()
    series.add({"step": 1, "loss": 0.6, "rewards/margins": 0.1})
    series.add({"step": 1, "eval_loss": 0.7, "eval_rewards/accuracies": 0.5})
    series.add({"step": 1, "train_runtime": 3.0, "train_loss": 0.6})
    assert series.finished and len(series.train) == 1 and len(series.eval) == 1
    assert series.eval.column("rewards/accuracies")[0] == 0.5
    assert np.isnan(series.train.column("rewards/accuracies")).all()


def test_minmax_buckets_keep_spikes() -> None:
    values = np.zeros(1_000_000)
    values[123_456] = 9.0
    values[777_777] = np.nan
    lows, highs = minmax_buckets(values, 100)
    assert len(highs) == 100 and np.nanmax(highs) == 9.0 and np.nanmin(lows) == 0.0


# Property: for any mix of valid lines and garbage, written split at any byte and read at any
# moment, every valid line is read exactly once and in order, and every invalid one is counted.
valid_line = st.integers(min_value=0, max_value=10_000).map(lambda s: ("ok", line(s, loss=s / 7)))
bad_line = st.sampled_from([b"garbage\n", b"{broken\n", b"\n", b"123\n"]).map(lambda b: ("bad", b))


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.one_of(valid_line, bad_line), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_every_valid_line_exactly_once(tmp_path_factory, lines, cuts) -> None:
    path = tmp_path_factory.mktemp("prop") / "m.jsonl"
    data = b"".join(raw for _, raw in lines)
    reader = TailReader(path)
    got, rejected = [], 0
    with open(path, "wb") as f:
        position = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            f.write(data[position:cut])
            f.flush()
            position = max(position, min(cut, len(data)))
            batch = reader.poll()
            got += batch.records
            rejected += sum(batch.rejected.values())
    expected = [json.loads(raw) for kind, raw in lines if kind == "ok"]
    not_objects = [r for r in got if not isinstance(r, dict)]
    assert [r for r in got if isinstance(r, dict)] == expected
    blank = sum(1 for kind, raw in lines if raw == b"\n")
    assert rejected + len(not_objects) == sum(kind == "bad" for kind, _ in lines) - blank


def test_concurrent_writer_process_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.touch()
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json,sys\n"
            "f=open(sys.argv[1],'a')\n"
            "for i in range(20000):\n"
            "    s=json.dumps({'step':i,'loss':i*0.5})+'\\n'\n"
            "    f.write(s[:7]); f.flush(); f.write(s[7:]); f.flush()\n",
            str(path),
        ]
    )
    reader, steps = TailReader(path), []
    while writer.poll() is None:
        steps += [r["step"] for r in reader.poll().records]
    steps += [r["step"] for r in reader.poll().records]
    assert steps == list(range(20000))


def test_trl_output_dir_reads_newest_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "simpo-r8-run"
    for step in (10, 20):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        history = [{"step": s, "loss": 1 / s, "rewards/margins": s / 10} for s in range(1, step + 1)]
        (ckpt / "trainer_state.json").write_text(json.dumps({"log_history": history, "max_steps": 40}))
    grid = open_path(run)
    grid.poll()
    cell = grid.cells[0]
    assert (cell.objective, cell.rank, cell.max_steps) == ("simpo", 8, 40)
    assert list(cell.series.train.steps) == list(range(1, 21))


def slow_series(text: str) -> CellSeries:
    series = CellSeries()
    for raw in text.splitlines():
        try:
            series.add(json.loads(raw))
        except ValueError:
            series.rejected["not JSON"] += 1
    return series


def assert_same_series(a: CellSeries, b: CellSeries) -> None:
    assert a.records == b.records and a.rejected == b.rejected and a.finished == b.finished
    for split in ("train", "eval"):
        x, y = a.split(split), b.split(split)
        np.testing.assert_array_equal(x.steps, y.steps)
        np.testing.assert_array_equal(x.times, y.times)
        names = [
            n for n in set(x.names) | set(y.names) if not (np.isnan(x.column(n)).all() and np.isnan(y.column(n)).all())
        ]
        for name in names:
            np.testing.assert_array_equal(x.column(name), y.column(name), err_msg=f"{split} {name}")


record_kinds = st.sampled_from(
    ["train"] * 10 + ["eval"] * 3 + ["nan", "newkey", "back", "garbage", "end", "null", "text", "bool", "bigint"]
)


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(record_kinds, min_size=5, max_size=80), cuts=st.lists(st.integers(0, 20_000), max_size=6))
def test_columnar_fast_path_equals_the_record_path(tmp_path_factory, kinds, cuts) -> None:
    # Small thresholds, so these small files take the column-wise path and its bisection too.
    saved = columnar._SMALL_BYTES, columnar._EXACT_BYTES
    columnar._SMALL_BYTES, columnar._EXACT_BYTES = 0, 100
    try:
        check_columnar_equals_records(tmp_path_factory, kinds, cuts)
    finally:
        columnar._SMALL_BYTES, columnar._EXACT_BYTES = saved


def check_columnar_equals_records(tmp_path_factory, kinds, cuts) -> None:  # noqa: ANN001
    lines, step = [], 0
    for kind in kinds:
        step += 1
        if kind == "train":
            lines.append(json.dumps({"loss": step / 3, "rewards/margins": step / 7, "step": step, "time": step * 1.5}))
        elif kind == "eval":
            lines.append(
                json.dumps({"eval_loss": 0.5, "eval_rewards/accuracies": 0.75, "epoch": 0.1, "step": step, "time": 2.0})
            )
        elif kind == "nan":
            lines.append(f'{{"loss": NaN, "step": {step}, "time": 1.0}}')
        elif kind == "newkey":
            lines.append(json.dumps({"loss": 1.0, f"extra_{step % 3}": 2.0, "step": step, "time": 3.0}))
        elif kind == "back":
            step = max(1, step - 5)
            lines.append(json.dumps({"loss": 0.1, "rewards/margins": 0.2, "step": step, "time": 4.0}))
        elif kind == "garbage":
            lines.append("garbage{")
        elif kind == "null":
            lines.append(json.dumps({"loss": None, "rewards/margins": 0.5, "step": step, "time": 5.0}))
        elif kind == "text":
            lines.append(json.dumps({"loss": "high", "step": step, "time": 5.0}))
        elif kind == "bool":
            lines.append(json.dumps({"loss": True, "step": step, "time": 5.0}))
        elif kind == "bigint":
            lines.append(json.dumps({"loss": 2**60 + 1, "step": step, "time": 5.0}))
        else:
            lines.append(json.dumps({"train_runtime": 1.0, "train_loss": 0.3, "step": step}))
    text = "".join(f"{record}\n" for record in lines)
    cell = tmp_path_factory.mktemp("cell")
    path = cell / "metrics.jsonl"
    data = text.encode()
    grid = None
    with open(path, "wb") as f:
        position = 0
        for cut in sorted(c for c in cuts if c < len(data)) + [len(data)]:
            f.write(data[position:cut])
            f.flush()
            position = cut
            grid = grid or open_path(cell)
            grid.poll()
    assert grid is not None
    assert_same_series(grid.cells[0].series, slow_series(text))


def test_columnar_path_takes_big_regular_blocks(tmp_path: Path) -> None:
    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    lines = [line(s, loss=s / 10, **{"rewards/margins": s / 100}) for s in range(1, 5001)]
    path = cell / "metrics.jsonl"
    path.write_bytes(b"".join(lines[:100]))
    grid = open_path(cell)
    grid.poll()
    source = grid.cells[0]
    fast_blocks = []
    decode = source.reader._columnar.decode
    source.reader._columnar.decode = lambda block: fast_blocks.append(decode(block)) or fast_blocks[-1]  # type: ignore[method-assign]
    with open(path, "ab") as f:
        f.write(b"".join(lines[100:]))
    grid.poll()
    assert fast_blocks and all(b is not None for b in fast_blocks)
    assert_same_series(source.series, slow_series(b"".join(lines).decode()))


def exact_lines_of(grid) -> list[int]:  # noqa: ANN001
    """Poll ``grid``, returning the line counts of the pieces that went record by record."""
    counted: list[int] = []
    original = columnar._exact

    def counting(series, block, decoder):  # noqa: ANN001
        counted.append(block.count(b"\n"))
        original(series, block, decoder)

    columnar._exact = counting
    try:
        grid.poll()
    finally:
        columnar._exact = original
    return counted


def test_odd_lines_inside_big_blocks_take_the_exact_path_only_around_them(tmp_path: Path) -> None:
    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    lines = [line(s, loss=s / 10, **{"rewards/margins": s / 100}) for s in range(1, 40001)]
    lines[12_345] = b'{"step": 12346, "time": 1.0, "loss": NaN}\n'
    lines[23_456] = b'{"step": 23457, "time": 1.0, "loss": null}\n'
    lines[30_000] = b'{"step": 30001, "train_runtime": 1.0, "train_loss": 0.2}\n'
    lines[35_000] = line(100, loss=0.5)  # a resumed run
    (cell / "metrics.jsonl").write_bytes(b"".join(lines))
    grid = open_path(cell)
    source = grid.cells[0]
    exact_lines = exact_lines_of(grid)
    assert_same_series(source.series, slow_series(b"".join(lines).decode()))
    assert source.series.train.segments == 2 and source.series.finished
    assert sum(exact_lines) < 2_000  # four odd lines, each in a small piece; the rest went column-wise


def test_peek_tail_previews_then_poll_reads_everything(tmp_path: Path) -> None:
    cell = tmp_path / "dpo-r8"
    cell.mkdir()
    lines = [line(s, loss=s / 10) for s in range(1, 20001)]
    (cell / "metrics.jsonl").write_bytes(b"".join(lines))
    source = open_path(cell).cells[0]
    assert source.peek_tail(max_bytes=4096)
    preview = source.series
    assert source.preview and 0 < len(preview.train) < 100 and preview.train.steps[-1] == 20000
    assert not preview.rejected  # the cut first line is skipped, not counted
    source.poll()
    assert not source.preview and list(source.series.train.steps) == list(range(1, 20001))
    assert not source.peek_tail()  # only before the first poll


# Property: the same, across truncations and rotations (the file replaced by a new one) in the middle
# of the write sequence: every valid line of every file generation is read exactly once, in order,
# and the reader says where a new generation starts. The reader is polled when the file is truncated
# or replaced (as the follower does on the change event): a file truncated and then regrown past
# the old offset between two polls cannot be told from an append, by size or inode.
write_op = st.tuples(
    st.just("write"),
    st.lists(st.one_of(valid_line, bad_line), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=1500), max_size=4),
)
change_op = st.sampled_from([("truncate",), ("rotate",), ("rotate-with-lines",)])


@settings(max_examples=50, deadline=None)
@given(ops=st.lists(st.one_of(write_op, write_op, change_op), max_size=12))
def test_every_valid_line_once_per_file_generation(tmp_path_factory, ops) -> None:
    folder = tmp_path_factory.mktemp("gen")
    path = folder / "m.jsonl"
    path.touch()
    reader = TailReader(path)
    expected: list[list] = [[]]
    got: list[list] = [[]]
    bad = rejected = 0

    def poll() -> None:
        nonlocal rejected
        batch = reader.poll()
        if batch.restarted:
            got.append([])
        got[-1].extend(r for r in batch.records if isinstance(r, dict))
        rejected += sum(batch.rejected.values()) + sum(not isinstance(r, dict) for r in batch.records)

    for op in ops:
        if op[0] == "write":
            _, lines, cuts = op
            data = b"".join(raw for _, raw in lines)
            expected[-1] += [json.loads(raw) for kind, raw in lines if kind == "ok"]
            bad += sum(kind == "bad" and raw != b"\n" for kind, raw in lines)
            with open(path, "ab") as f:
                position = 0
                for cut in sorted(c for c in set(cuts) if c < len(data)) + [len(data)]:
                    f.write(data[position:cut])
                    f.flush()
                    position = cut
                    poll()
            continue
        poll()  # the change event
        if op[0] == "truncate":
            os.truncate(path, 0)
            expected.append([])
        else:
            fresh = folder / "fresh.jsonl"
            first = [line(1_000_000 + len(expected), loss=0.5)] if op[0] == "rotate-with-lines" else []
            fresh.write_bytes(b"".join(first))
            os.replace(fresh, path)
            expected.append([json.loads(raw) for raw in first])
        poll()
    poll()
    assert [g for g in got if g] == [g for g in expected if g]
    assert rejected == bad


def test_factors_order_as_numbers_and_seed_tokens_are_read(tmp_path):
    for name in ("dpo-r16-seed1", "dpo-r32-seed10", "dpo-r4-seed2", "dpo-r8_seed_0", "simpo-r4-seed2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"loss": 0.5, "step": 1}\n')
    grid = open_path(tmp_path)
    assert grid.ranks == [4, 8, 16, 32]
    assert [c.id for c in grid.cells] == [
        "dpo-r4-seed2",
        "dpo-r8_seed_0",
        "dpo-r16-seed1",
        "dpo-r32-seed10",
        "simpo-r4-seed2",
    ]
    assert [c.seed for c in grid.cells] == [2, 0, 1, 10, 2]


def test_a_log_read_from_its_start_reserves_room_for_its_rows_once_and_never_beyond_its_size(tmp_path, monkeypatch):
    """The first block's rows and the file's size give the rows to make room for: a log read in many
    blocks ends with less room than doubling would leave; a first block of
    short lines followed by long ones reserves no more rows than the file could hold."""
    from prefwatch.ingest import tail

    monkeypatch.setattr(tail, "_CHUNK_BYTES", 4096)
    steady = tmp_path / "steady" / "dpo-r8"
    steady.mkdir(parents=True)
    (steady / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"loss": 0.5 + s / 1e4, "rewards/margins": s / 100, "step": s}) + "\n" for s in range(1, 3001)
        )
    )
    grid = open_path(tmp_path / "steady")
    grid.poll()
    train = grid.cells[0].series.train
    assert len(train) == 3000 and 3000 <= train._capacity < 4096  # doubling from 64 rows: 4096
    odd = tmp_path / "odd" / "dpo-r8"
    odd.mkdir(parents=True)
    short = "".join(json.dumps({"loss": 1, "step": s}) + "\n" for s in range(1, 200))
    padding = "x" * 5000
    long = "".join(json.dumps({"loss": 1, "step": s, "note": padding}) + "\n" for s in range(200, 400))
    (odd / "metrics.jsonl").write_text(short + long)
    grid = open_path(tmp_path / "odd")
    grid.poll()
    train = grid.cells[0].series.train
    size = (odd / "metrics.jsonl").stat().st_size
    assert len(train) == 399 and train._capacity <= max(size // 48, 1024)
