"""TensorBoard event files: real TFRecord bytes (written here without TensorBoard, and by PyTorch's
SummaryWriter where it is installed), read growing, split at any byte, truncated and replaced."""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefwatch.core.series import CellSeries
from prefwatch.ingest.discover import open_path, parse_label
from prefwatch.ingest.readers import tensorboard as tb
from prefwatch.ingest.sources import SourceError

# --- a minimal event-file writer: TFRecord framing with masked CRC32C, Event protobufs by hand ---

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def simple_value(tag: str, value: float) -> bytes:
    return field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)


def tensor_value(tag: str, value: float, packed: bool = True, content: bool = False) -> bytes:
    """TensorFlow 2's layout: a scalar DT_FLOAT tensor, with plugin metadata after it."""
    tensor = b"\x08\x01" + field(2, b"")  # dtype DT_FLOAT, shape []
    if content:
        tensor += field(4, struct.pack("<f", value))
    elif packed:
        tensor += field(5, struct.pack("<f", value))
    else:
        tensor += b"\x2d" + struct.pack("<f", value)
    metadata = field(1, field(1, b"scalars"))
    return field(1, tag.encode()) + field(8, tensor) + field(9, metadata)


def text_value(tag: str, text: str) -> bytes:
    tensor = b"\x08\x07" + field(2, b"") + field(8, text.encode())  # DT_STRING, string_val
    return field(1, tag.encode()) + field(8, tensor) + field(9, field(1, field(1, b"text")))


def event(step: int, values: list[bytes], wall: float = 1.7e9) -> bytes:
    summary = b"".join(field(1, v) for v in values)
    return b"\x09" + struct.pack("<d", wall + step) + b"\x10" + varint(step) + field(5, summary)


def file_version_event() -> bytes:
    return b"\x09" + struct.pack("<d", 1.7e9) + field(3, b"brain.Event:2")


def record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def trl_log(step: int, loss: float, eval_every: int = 5) -> list[bytes]:
    """The events TRL's TensorBoardCallback writes for one log (one scalar per event)."""
    out = [
        event(step, [simple_value("train/loss", loss)]),
        event(step, [simple_value("train/rewards/chosen", step / 10)]),
        event(step, [simple_value("train/epoch", step / 100)]),
    ]
    if step % eval_every == 0:
        out += [
            event(step, [simple_value("eval/loss", loss + 0.1)]),
            event(step, [simple_value("eval/rewards/accuracies", 0.5)]),
            event(step, [simple_value("train/epoch", step / 100)]),
        ]
    return out


def event_bytes(steps: range) -> bytes:
    records = [file_version_event(), event(0, [text_value("args", '{"lr": 1e-5}')])]
    for step in steps:
        records += trl_log(step, 1 / step)
    return b"".join(record(r) for r in records)


def output_dir(tmp_path: Path, name: str = "dpo-r16-out") -> Path:
    logs = tmp_path / name / "runs" / "Nov27_10-00-00_host"
    logs.mkdir(parents=True)
    return logs


# --- tests ---


def test_trl_output_dir_with_event_files_is_a_cell(tmp_path: Path) -> None:
    logs = output_dir(tmp_path)
    (logs / "events.out.tfevents.1700000000.host.1.0").write_bytes(event_bytes(range(1, 21)))
    grid = open_path(tmp_path / "dpo-r16-out")
    grid.poll()
    cell = grid.cells[0]
    assert (cell.id, cell.objective, cell.rank) == ("dpo-r16-out", "dpo", 16)
    series = cell.series
    assert list(series.train.steps) == list(range(1, 21))
    np.testing.assert_allclose(series.train.column("loss"), [np.float32(1 / s) for s in range(1, 21)])
    assert list(series.eval.steps) == [5, 10, 15, 20]
    assert series.eval.column("rewards/accuracies").tolist() == [0.5] * 4
    assert not series.rejected and not series.finished
    assert logs in cell.watched_paths()


def test_tensorflow_tensor_layouts_and_end_record(tmp_path: Path) -> None:
    logs = output_dir(tmp_path, "simpo-r8")
    values = [tensor_value("train/loss", 0.5), tensor_value("train/grad_norm", 2.0, packed=False)]
    data = record(event(1, values)) + record(event(2, [tensor_value("train/loss", 0.25, content=True)]))
    data += record(event(2, [simple_value("train/train_runtime", 9.0), simple_value("train/train_loss", 0.3)]))
    (logs / "events.out.tfevents.1700000000.host").write_bytes(data)
    grid = open_path(tmp_path)  # a folder of output dirs
    grid.poll()
    series = grid.cells[0].series
    assert series.train.column("loss").tolist() == [0.5, 0.25]
    assert series.train.column("grad_norm")[0] == 2.0
    assert series.finished and series.end_record == {
        "step": 2,  # the summary's step: the last step trained
        "train/train_runtime": 9.0,
        "train/train_loss": pytest.approx(0.3),
    }


def test_non_finite_scalars_are_points(tmp_path: Path) -> None:
    data = b"".join(
        record(event(s, [simple_value("train/loss", v)])) for s, v in [(1, 0.5), (2, math.nan), (3, math.inf)]
    )
    scalars, used = tb.decode_records(data)
    series = CellSeries()
    tb.add_scalars(series, scalars)
    assert used == len(data) and len(series.train) == 3
    assert series.first_non_finite == {("train", "loss"): 2.0}


def exact(data: bytes) -> list[tuple[str, int, float, float]]:
    out = []
    for start in tb._frame_exact(data, Counter())[0].tolist():
        (length,) = struct.unpack_from("<Q", data, start)
        try:
            out += tb._parse_event(data, start + 12, start + 12 + length)
        except ValueError:
            pass
    return out


def points(scalars: tb.Scalars) -> list[tuple[str, int, float, float]]:
    return [
        (scalars.tags[t], s, w, v)
        for t, s, w, v in zip(
            scalars.tag_ids.tolist(), scalars.steps.tolist(), scalars.walls.tolist(), scalars.values.tolist()
        )
    ]


kinds = st.sampled_from(["simple", "simple", "simple", "two", "tensor", "text", "bigstep", "negstep", "long", "junk"])


def make_record(kind: str, i: int) -> bytes:
    if kind == "simple":
        return record(event(i, [simple_value(f"train/m{i % 3}", i / 3)]))
    if kind == "two":
        return record(event(i, [simple_value("train/a", 1.0), simple_value("eval/b", 2.0)]))
    if kind == "tensor":
        return record(event(i, [tensor_value("eval/loss", i / 7)]))
    if kind == "text":
        return record(event(i, [text_value("notes", "x" * i)]))
    if kind == "bigstep":
        return record(event(2**40 + i, [simple_value("train/loss", 1.0)]))
    if kind == "negstep":
        return record(event(-i - 1, [simple_value("train/loss", 1.0)]))
    if kind == "long":
        return record(event(i, [simple_value("train/" + "t" * 200, 1.0)]))
    # a record whose payload is not a protobuf: skipped and counted
    return record(b"\x09" + b"\xff" * 12)


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(kinds, max_size=40), cuts=st.lists(st.integers(0, 6000), max_size=8))
def test_split_at_any_byte_reads_every_point_once(tmp_path_factory, kinds, cuts) -> None:
    data = record(file_version_event()) + b"".join(make_record(k, i) for i, k in enumerate(kinds))
    path = tmp_path_factory.mktemp("tb") / "events.out.tfevents.1.h"
    reader = tb.EventFileReader(path)
    got, rejected = [], 0
    with open(path, "wb") as f:
        position = 0
        for cut in sorted(c for c in set(cuts) if c < len(data)) + [len(data)]:
            f.write(data[position:cut])
            f.flush()
            position = cut
            scalars, restarted = reader.poll()
            assert not restarted
            got += points(scalars)
            rejected += sum(scalars.rejected.values())
    assert got == exact(data)
    assert rejected == kinds.count("junk")
    # and the column-wise decoder agrees with the exact one on the whole file
    whole, used = tb.decode_records(data)
    assert used == len(data) and points(whole) == got


def test_truncation_and_replacement_restart(tmp_path: Path) -> None:
    logs = output_dir(tmp_path)
    path = logs / "events.out.tfevents.1700000000.host"
    path.write_bytes(event_bytes(range(1, 11)))
    grid = open_path(tmp_path / "dpo-r16-out")
    grid.poll()
    assert len(grid.cells[0].series.train) == 10
    path.write_bytes(event_bytes(range(1, 4)))  # shorter: truncated and rewritten
    assert grid.poll()
    assert list(grid.cells[0].series.train.steps) == [1, 2, 3]
    replacement = logs / "tmp"
    replacement.write_bytes(event_bytes(range(1, 31)))
    os.replace(replacement, path)
    grid.poll()
    assert list(grid.cells[0].series.train.steps) == list(range(1, 31))


def test_resumed_run_writes_a_new_file_and_starts_a_segment(tmp_path: Path) -> None:
    first = output_dir(tmp_path)
    second = first.parent / "Nov27_11-00-00_host"
    second.mkdir()
    (first / "events.out.tfevents.1700000000.host").write_bytes(event_bytes(range(1, 13)))
    grid = open_path(tmp_path / "dpo-r16-out")
    grid.poll()
    (second / "events.out.tfevents.1700003600.host").write_bytes(event_bytes(range(10, 21)))
    grid.poll()
    train = grid.cells[0].series.train
    assert list(train.steps) == list(range(1, 21)) and train.segments == 2


def test_growing_file_row_split_across_polls(tmp_path: Path) -> None:
    logs = output_dir(tmp_path)
    path = logs / "events.out.tfevents.1700000000.host"
    records = [record(r) for r in trl_log(1, 0.9) + trl_log(2, 0.8)]
    path.touch()  # SummaryWriter creates the file (with its file_version record) at once
    grid = open_path(tmp_path / "dpo-r16-out")
    with open(path, "wb") as f:
        for r in records:
            f.write(r[:7])
            f.flush()
            grid.poll()
            f.write(r[7:])
            f.flush()
            grid.poll()
    train = grid.cells[0].series.train
    assert list(train.steps) == [1, 2]
    assert train.column("loss").tolist() == pytest.approx([0.9, 0.8])
    assert train.column("epoch").tolist() == pytest.approx([0.01, 0.02])


def test_pytorch_summary_writer_files(tmp_path: Path) -> None:
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    logs = tmp_path / "orpo-r8" / "runs" / "Nov27_host"
    writer = tensorboard.SummaryWriter(str(logs))
    writer.add_text("args", "{}")
    for step in range(1, 51):
        writer.add_scalar("train/loss", 1 / step, step)
        writer.add_scalar("train/log_odds_ratio", -step / 10, step)
        if step % 10 == 0:
            writer.add_scalar("eval/rewards/margins", step / 100, step)
    writer.close()
    grid = open_path(tmp_path / "orpo-r8")
    grid.poll()
    series = grid.cells[0].series
    assert (grid.cells[0].objective, grid.cells[0].rank) == ("orpo", 8)
    assert list(series.train.steps) == list(range(1, 51))
    np.testing.assert_allclose(series.train.column("log_odds_ratio"), [-s / 10 for s in range(1, 51)], rtol=1e-6)
    assert list(series.eval.steps) == [10, 20, 30, 40, 50]


def test_labels_for_single_and_folder_paths(tmp_path: Path) -> None:
    for name in ("run-a", "run-b"):
        (output_dir(tmp_path, name) / "events.out.tfevents.1700000000.host").write_bytes(event_bytes(range(1, 3)))
    grid = open_path(tmp_path, labels=dict([parse_label("run-a=dpo:16"), parse_label("run-b=simpo:8")]))
    assert [(c.id, c.objective, c.rank) for c in grid.cells] == [("run-a", "dpo", 16), ("run-b", "simpo", 8)]
    single = open_path(tmp_path / "run-b", labels={"run-b": ("orpo", None)})
    assert (single.cells[0].objective, single.cells[0].rank) == ("orpo", None)
    with pytest.raises(SourceError, match="no such cell"):
        open_path(tmp_path, labels={"run-c": ("dpo", 8)})


def test_parse_label() -> None:
    assert parse_label("run-a=dpo:16") == ("run-a", ("dpo", 16))
    assert parse_label("x=SimPO") == ("x", ("simpo", None))
    assert parse_label("x=:8") == ("x", (None, 8))
    for bad in ("run-a", "=dpo:16", "x=ppo:8", "x=dpo:0", "x=dpo:r8", "x=:"):
        with pytest.raises(SourceError):
            parse_label(bad)


def test_transformers_tensorboard_callback_output_dir(tmp_path: Path) -> None:
    """The event files of transformers' own TensorBoardCallback (what report_to="tensorboard" adds),
    driven with DPO-shaped logs: found under output_dir/runs/<date>_<host>/ and read."""
    pytest.importorskip("tensorboard")
    integration = pytest.importorskip("transformers.integrations.integration_utils")
    from types import SimpleNamespace

    out = tmp_path / "dpo-r16-run"
    args = SimpleNamespace(output_dir=str(out), to_json_string=lambda: "{}")
    state = SimpleNamespace(is_world_process_zero=True, is_hyper_param_search=False, global_step=0)
    callback = integration.TensorBoardCallback()
    callback.on_train_begin(args, state, None)
    for step in range(1, 31):
        state.global_step = step
        logs = {"loss": 1 / step, "rewards/chosen": step / 10, "rewards/margins": step / 5, "epoch": step / 30}
        callback.on_log(args, state, None, logs=logs)
        if step % 10 == 0:
            callback.on_log(args, state, None, logs={"eval_loss": 0.5, "eval_rewards/accuracies": step / 40})
    callback.on_log(args, state, None, logs={"train_runtime": 12.0, "train_loss": 0.4, "epoch": 1.0})
    callback.on_train_end(args, state, None)
    assert list(out.glob("runs/*/events.out.tfevents.*"))
    grid = open_path(out)
    grid.poll()
    cell = grid.cells[0]
    assert (cell.objective, cell.rank) == ("dpo", 16)
    series = cell.series
    assert list(series.train.steps) == list(range(1, 31)) and list(series.eval.steps) == [10, 20, 30]
    np.testing.assert_allclose(series.train.column("rewards/margins"), [s / 5 for s in range(1, 31)], rtol=1e-6)
    np.testing.assert_allclose(series.eval.column("rewards/accuracies"), [0.25, 0.5, 0.75])
    assert series.finished and series.end_record is not None and "train/train_runtime" in series.end_record
