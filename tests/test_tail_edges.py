"""The tail reader at its edges: what a fresh, a vanished and an unreadable file say, lines of exactly
and just over the 1 MiB limit, several oversized lines counted one by one, and JSON nested too deep."""

from __future__ import annotations

import json
from pathlib import Path

from prefwatch.ingest.tail import MAX_LINE_BYTES, TailReader


def line_of(size: int) -> bytes:
    """A JSON object line of exactly ``size`` bytes, newline excluded."""
    head = b'{"step": 1, "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_a_fresh_reader_says_nothing_is_wrong(tmp_path: Path) -> None:
    reader = TailReader(tmp_path / "metrics.jsonl")
    assert (reader.missing, reader.error, reader.started) == (False, None, False)
    assert reader.poll().records == [] and reader.missing is False  # not there yet is not "deleted"
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    assert reader.poll().records == [{"step": 1}] and (reader.missing, reader.error) == (False, None)
    path.unlink()
    reader.poll()
    assert reader.missing is True
    path.write_text('{"step": 1}\n{"step": 2}\n')
    assert [r["step"] for r in reader.poll().records] == [1, 2] and reader.missing is False


def test_an_unreadable_path_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "metrics.jsonl"
    folder.mkdir()
    reader = TailReader(folder)
    reader.poll()
    assert reader.error == f"{folder}: Is a directory"


def test_the_line_limit_is_inclusive_and_each_oversized_line_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    small = json.dumps({"step": 2}).encode()
    path.write_bytes(
        b"\n".join([line_of(MAX_LINE_BYTES), small, line_of(MAX_LINE_BYTES + 1), line_of(MAX_LINE_BYTES + 5), small])
        + b"\n"
    )
    batch = TailReader(path).poll()
    assert batch.rejected == {"line over 1 MiB": 2}
    assert [r["step"] for r in batch.records] == [1, 2, 2]


def test_an_oversized_partial_line_is_counted_once_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n' + b"y" * (MAX_LINE_BYTES + 10))  # no newline yet
    reader = TailReader(path)
    first = reader.poll()
    assert [r["step"] for r in first.records] == [1] and first.rejected == {"line over 1 MiB": 1}
    with open(path, "ab") as f:
        f.write(b"y" * 100 + b'\n{"step": 2}\n')  # the end of the oversized line, then a good one
    second = reader.poll()
    assert [r["step"] for r in second.records] == [2] and not second.rejected


def test_json_nested_too_deep_is_a_counted_rejection(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + b'{"step": 3}\n')
    batch = TailReader(path).poll()
    assert batch.rejected == {"nested too deep": 1}
    assert batch.records == [{"step": 3}]
