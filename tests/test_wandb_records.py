"""W&B's .wandb records decoded by prefwatch itself, checked against the wandb package's own protobuf
classes: on runs the real wandb writes, on records built at random with those classes, and on hostile
bytes. wandb is needed here only to write and to decode for comparison; reading imports none of it."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc
import zlib
from importlib.util import find_spec
from pathlib import Path

import pytest
import tracker_writers as writers
from hypothesis import given, settings
from hypothesis import strategies as st

from prefwatch.ingest.discover import open_path
from prefwatch.ingest.readers import wandb as reader

pytestmark = pytest.mark.skipif(not find_spec("wandb"), reason="wandb (dev extra) writes the runs")


def _pb():
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def reference(data: bytes) -> tuple:
    """What the reader took from a record when it decoded it with the wandb package (its earlier way)."""
    record = _pb().Record()
    record.ParseFromString(data)
    kind = record.WhichOneof("record_type")

    def pairs(items):
        return [(i.key or "/".join(i.nested_key), i.value_json) for i in items]

    if kind == "history":
        return ("history", pairs(record.history.item))
    if kind in ("summary", "config"):
        return (kind, pairs(getattr(record, kind).update))
    if kind == "run":
        run = record.run
        start = run.start_time.seconds + run.start_time.nanos / 1e9
        return ("run", run.run_id, run.display_name, start, pairs(run.config.update))
    if kind == "exit":
        return ("exit", record.exit.exit_code)
    return (kind,)


NAMES = {reader._HISTORY: "history", reader._SUMMARY: "summary", reader._CONFIG: "config"}


def own(data: bytes) -> tuple:
    """The same, decoded by prefwatch's reader."""
    kind, spans = reader.record_type(data)
    if kind in NAMES:
        return (NAMES[kind], reader.items(data, spans))
    if kind == reader._RUN:
        info = reader.run_info(data, spans)
        return ("run", info.run_id, info.name, info.start, info.config)
    if kind == reader._EXIT:
        return ("exit", reader.exit_code(data, spans))
    return (_pb().Record.DESCRIPTOR.fields_by_number[kind].name,) if kind else (None,)


def records_of(path: Path) -> list[bytes]:
    return reader.Framing(path).read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Runs the real wandb wrote: nested and non-ASCII settings, a failed run, one ended early."""
    root = tmp_path_factory.mktemp("wandb-runs")
    config = {"learning_rate": 5e-6, "peft_config": {"r": 8, "alpha": 16}, "note": 'é ✓ "quoted"\n'}
    writers.write("wandb", root, "dpo-r8 ✓", config=config)
    writers.write("wandb", root, "simpo-r16", steps=9, exit_code=3, end=False)
    # Settings added after init (as transformers' WandbCallback adds TrainingArguments): config records.
    later = (
        "import sys, wandb\n"
        "run = wandb.init(project='p', name='orpo-r4', mode='offline', dir=sys.argv[1], config={'seed': 1})\n"
        "run.config.update({'trainer': {'beta': 0.1, 'lr': 1e-5}, 'loss_type': 'sigmoid'})\n"
        "for step in range(1, 6):\n"
        "    run.log({'train/loss': 1.0 / step, 'train/global_step': step, 'eval/loss': float('nan')})\n"
        "run.finish()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", later, str(root / "wandb-dir")],
        env=writers.env(root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return sorted((root / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_records_of_real_runs_decode_as_the_wandb_package_decodes_them(runs):
    kinds = set()
    for path in runs:
        records = records_of(path)
        assert len(records) > 20
        for data in records:
            want = reference(data)
            assert own(data) == want
            kinds.add(want[0])
    assert {"history", "summary", "config", "run", "exit"} <= kinds


def test_points_of_real_runs_are_those_the_package_decoding_gave(runs):
    """One poll of each run gives the points, end values and end mark that the package's decoding of
    its records gives (built the way the reader built them from it)."""
    from prefwatch.core import metrics
    from prefwatch.ingest.readers.store import Points

    for path in runs:
        batch = reader.WandbReader(path).poll()
        points, end, code = Points(), {}, None
        for data in records_of(path):
            decoded = reference(data)
            if decoded[0] == "history":
                row = {k: json.loads(v) for k, v in decoded[1]}
                step = row.get("train/global_step", row.get("_step"))
                points.add_row(row, int(step), float(row["_timestamp"]))
            elif decoded[0] == "summary":
                end.update({k: float(json.loads(v)) for k, v in decoded[1] if k in metrics.END_KEYS})
            elif decoded[0] == "exit":
                code = decoded[1]
        got, want = batch.scalars, points.scalars()
        assert len(got) >= 10
        assert got.tags == want.tags and got.rejected == want.rejected
        for column in ("tag_ids", "steps", "walls", "values"):
            assert getattr(got, column).tolist() == pytest.approx(getattr(want, column).tolist(), nan_ok=True)
        assert batch.end == (end or None)
        assert batch.ended is not None and batch.ended.exit_code == code


def test_reading_a_wandb_run_imports_no_wandb_module(runs):
    """A fresh interpreter reads a run (its rows, its end) with neither wandb nor protobuf imported."""
    script = (
        "import sys\n"
        "from prefwatch.ingest.discover import open_path\n"
        "grid = open_path(sys.argv[1]); grid.poll()\n"
        "from prefwatch.ingest.readers.wandb import WandbReader\n"
        "from pathlib import Path\nbatch = WandbReader(Path(sys.argv[1])).poll()\n"
        "print(len(grid.cells[0].series.split('train').steps), batch.ended.state.value)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'google')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(runs[0])], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    steps, finished, loaded = out.stdout.splitlines()[-2].split() + [out.stdout.splitlines()[-1]]
    assert int(steps) == 12 and finished == "finished"
    assert loaded == "[]"


texts = st.text(max_size=12)
jsons = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False), texts, st.booleans(), st.none()).map(
    json.dumps
)


@st.composite
def built_records(draw) -> bytes:
    """A Record of one of the read types, built with the package's classes (its fields set at random)."""
    pb = _pb()
    record = pb.Record(num=draw(st.integers(0, 2**40)), uuid=draw(texts))
    kind = draw(st.sampled_from(["history", "summary", "config", "run", "exit", "output", "stats"]))

    def fill(items):
        for _ in range(draw(st.integers(0, 4))):
            item = items.add()
            if draw(st.booleans()):
                item.key = draw(texts)
            else:
                item.nested_key.extend(draw(st.lists(texts, max_size=3)))
            item.value_json = draw(jsons)

    if kind == "history":
        fill(record.history.item)
        record.history.step.num = draw(st.integers(0, 2**40))
    elif kind in ("summary", "config"):
        fill(getattr(record, kind).update)
    elif kind == "run":
        record.run.run_id, record.run.display_name, record.run.project = draw(texts), draw(texts), draw(texts)
        record.run.start_time.seconds = draw(st.integers(-(2**40), 2**40))
        record.run.start_time.nanos = draw(st.integers(-999_999_999, 999_999_999))
        fill(record.run.config.update)
    elif kind == "exit":
        record.exit.exit_code = draw(st.integers(-(2**31), 2**31 - 1))
        record.exit.runtime = draw(st.integers(0, 2**31 - 1))
    elif kind == "output":
        record.output.line = draw(texts)
    else:
        record.stats.stats_type = 1
    record.control.local = draw(st.booleans())
    return record.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(built_records())
def test_random_records_decode_as_the_wandb_package_decodes_them(data):
    assert own(data) == reference(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), built_records(), st.integers(0, 200))
def test_hostile_record_bytes_are_a_value_error_or_a_record(noise, data, cut):
    """Bytes cut short, or random: the decoder returns a record or raises ValueError, nothing else."""
    for candidate in (noise, data[:cut], data[:cut] + noise):
        try:
            own(candidate)
        except ValueError:
            pass


def framed(records: list[bytes]) -> bytes:
    """A .wandb file of ``records``, framed as W&B's writer frames them (LevelDB's log format)."""
    out = bytearray(reader._FILE_HEADER)
    for body in records:
        first = True
        while True:
            left = reader._BLOCK - len(out) % reader._BLOCK
            if left < reader._HEADER:
                out += bytes(left)
                continue
            piece, body = body[: left - reader._HEADER], body[left - reader._HEADER :]
            kind = (
                (reader._FULL if not body else reader._FIRST)
                if first
                else (reader._LAST if not body else reader._MIDDLE)
            )
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not body:
                break
    return bytes(out)


def hostile_records() -> list[bytes]:
    history = _pb().Record()
    item = history.history.item.add()
    item.key, item.value_json = "train/loss", "0.5"
    whole = history.SerializeToString()
    return [
        whole[:-3],  # cut short inside the item
        b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\x7f",  # history of a 2**63-byte length
        b"\x12\x05\x0a\x03\x82\x01\xff",  # value_json of a length past its item
        b"\x12\x04\x0a\x02\x0a\xff",  # a key that is not UTF-8
        b"\x12\x02\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x17",  # wire type 7
    ]


def test_hostile_records_in_a_real_run_are_counted_and_the_rest_read(runs, tmp_path):
    """A real run re-framed with hostile records between its own (each correctly framed): every one is
    counted as a bad record, the run's points are those of the run alone, memory stays small."""
    records = records_of(runs[0])
    bad = hostile_records()
    mixed = records[:5] + bad[:3] + records[5:20] + bad[3:] + records[20:]
    clean, hostile = tmp_path / "offline-run-a" / runs[0].name, tmp_path / "offline-run-b" / runs[0].name
    for path, content in ((clean, records), (hostile, mixed)):
        path.parent.mkdir()
        path.write_bytes(framed(content))
    reference_grid = open_path(clean)
    reference_grid.poll()
    tracemalloc.start()
    grid = open_path(hostile)
    grid.poll()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    series = grid.cells[0].series
    assert series.rejected["bad W&B record"] == len(bad)
    assert grid.cells[0].read_error is None
    assert len(series.split("train").steps) == 12
    for split in ("train", "eval"):
        assert series.split(split).steps.tolist() == reference_grid.cells[0].series.split(split).steps.tolist()
    assert peak < 16 << 20


def test_damaged_and_truncated_frames_are_counted_without_a_traceback(runs, tmp_path):
    """A bad CRC, a piece's length past its block, a piece without its first, a file cut inside its
    last record: three damaged records counted, the rest read, the cut one waited for."""
    records = records_of(runs[0])
    big = _pb().Record()
    big.output.line = "x" * 70_000  # over three blocks: FIRST, MIDDLE, LAST
    content = records[:6] + [big.SerializeToString()] + records[6:]
    data = bytearray(framed(content))
    data[reader._HEADER + 300] ^= 0x55  # block 1: a CRC no longer matches (the rest of block 1 is lost)
    struct.pack_into("<H", data, reader._BLOCK + 4, 0xFFFF)  # block 2's MIDDLE piece: a length of 65535
    path = tmp_path / "offline-run-x" / runs[0].name
    path.parent.mkdir()
    path.write_bytes(bytes(data[:-3]))  # block 3 holds the LAST piece (now alone), then the run's records
    grid = open_path(path)
    grid.poll()
    series = grid.cells[0].series
    assert series.rejected["damaged W&B record"] == 3
    assert grid.cells[0].read_error is None
    after = [d for d in records[6:-1] if reference(d)[0] == "history"]
    assert len(after) >= 10
    assert len(series.split("train").steps) == len(after)
