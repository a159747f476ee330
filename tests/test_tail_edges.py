"""The tail reader at its edges: what a fresh, a vanished and an unreadable file say, lines of exactly
and just over the 1 MiB limit, several oversized lines counted one by one, JSON nested too deep, reading
in bounded chunks, when an unchanged file is opened again, and resuming after a cache entry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prefwatch.core.clock import FakeClock
from prefwatch.ingest import tail
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
    assert reader.error == f"{folder}: not a regular file: a folder"


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


def test_a_reader_inside_an_oversized_line_offers_no_cache_key(tmp_path: Path) -> None:
    """Mid-way through a line too long to keep, the file is not read into complete lines: a cache
    entry keyed there would, read back, take the rest of that line for a new line (one more rejection)."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n' + b"y" * (MAX_LINE_BYTES + 10))
    reader = TailReader(path)
    reader.poll()
    assert reader.identity is None
    with open(path, "ab") as f:
        f.write(b'y\n{"step": 2}\n')
    reader.poll()
    assert reader.identity is not None


def test_json_nested_too_deep_is_a_counted_rejection(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + b'{"step": 3}\n')
    batch = TailReader(path).poll()
    assert batch.rejected == {"nested too deep": 1}
    assert batch.records == [{"step": 3}]


def steps_of(batch: tail.Batch) -> list[int]:
    return [r["step"] for r in batch.records]


def test_an_oversized_first_line_of_a_large_block_is_rejected(tmp_path: Path) -> None:
    # The block's longest line decides between the fast decoder and the line-by-line one; the first
    # line counts as much as any other (its length is measured from the block's start).
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line_of(MAX_LINE_BYTES + 1) + b'\n{"step": 2}\n')
    batch = TailReader(path).poll()
    assert batch.rejected == {"line over 1 MiB": 1} and steps_of(batch) == [2]


def test_a_pending_line_of_exactly_the_limit_is_kept_until_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line_of(MAX_LINE_BYTES))  # no newline yet
    reader = TailReader(path)
    first = reader.poll()
    assert first.records == [] and not first.rejected
    with open(path, "ab") as f:
        f.write(b"\n")
    second = reader.poll()
    assert steps_of(second) == [1] and not second.rejected


def test_an_oversized_line_read_over_several_polls_is_skipped_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"y" * (MAX_LINE_BYTES + 10))
    reader = TailReader(path)
    assert reader.poll().rejected == {"line over 1 MiB": 1}
    with open(path, "ab") as f:
        f.write(b"y" * 1000)  # still the same line, still no newline
    middle = reader.poll()
    assert middle.records == [] and not middle.rejected
    with open(path, "ab") as f:
        f.write(b'y"}\n{"step": 2}\n')
    assert steps_of(reader.poll()) == [2]
    with open(path, "ab") as f:
        f.write(b'{"step": 3}\n')  # skipping ended with the oversized line: nothing more is dropped
    after = reader.poll()
    assert steps_of(after) == [3] and not after.rejected


def test_an_oversized_line_whose_rest_is_only_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"y" * (MAX_LINE_BYTES + 10))
    reader = TailReader(path)
    reader.poll()
    with open(path, "ab") as f:
        f.write(b'\n{"step": 2}\n')  # the next poll starts exactly at the oversized line's newline
    batch = reader.poll()
    assert steps_of(batch) == [2] and not batch.rejected
    with open(path, "ab") as f:
        f.write(b'{"step": 3}\n')
    assert steps_of(reader.poll()) == [3]


def pad_to(data: bytearray, end: int) -> int:
    """Append small lines until ``data`` is ``end`` bytes long; how many lines were appended."""
    count = 0
    while end - len(data) > 2000:
        data += line_of(999) + b"\n"
        count += 1
    data += line_of(end - len(data) - 1) + b"\n"
    return count + 1


def test_a_large_file_is_read_in_bounded_chunks_and_each_oversized_line_counted(tmp_path: Path) -> None:
    # Two oversized lines each straddle a chunk boundary with more than the limit before it, so both
    # are rejected while pending (in one poll), and no block handed on holds more than a chunk and a line.
    chunk = tail._CHUNK_BYTES
    data = bytearray()
    good = pad_to(data, chunk - 3 * MAX_LINE_BYTES // 2)
    data += line_of(2 * MAX_LINE_BYTES) + b"\n"
    good += pad_to(data, 2 * chunk - 3 * MAX_LINE_BYTES // 2)
    data += line_of(2 * MAX_LINE_BYTES) + b'\n{"step": 2}\n'
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(bytes(data))
    batch = TailReader(path).poll()
    assert batch.rejected == {"line over 1 MiB": 2}
    assert len(batch.records) == good + 1 and batch.records[-1] == {"step": 2}
    blocks: list[bytes] = []
    streamed = TailReader(path).poll(on_block=blocks.append)
    assert streamed.rejected == {"line over 1 MiB": 2} and len(blocks) == 3
    assert max(map(len, blocks)) <= chunk + MAX_LINE_BYTES


@pytest.fixture
def clock() -> FakeClock:
    """The reader's clock, moved by the test."""
    return FakeClock(monotonic=100.0)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each path the reader opens, in order."""
    opened: list[str] = []

    real = tail.safe.open_read

    def counting_open(path):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real(path)

    monkeypatch.setattr(tail.safe, "open_read", counting_open)
    return opened


def test_an_unchanged_file_is_opened_again_only_after_the_reopen_interval(
    tmp_path: Path, clock: FakeClock, opens: list[str]
) -> None:
    # Within REOPEN_SECONDS a stat that matches the last read saves the open; after it the file is
    # opened anyway (network file systems refresh cached attributes on open).
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    reader = TailReader(path, clock)
    assert steps_of(reader.poll()) == [1] and len(opens) == 1
    clock.advance(tail.REOPEN_SECONDS)  # exactly the interval: still only a stat
    assert reader.poll().records == [] and len(opens) == 1
    clock.advance(0.01)
    assert reader.poll().records == [] and len(opens) == 2
    with open(path, "a") as f:
        f.write('{"step": 2}\n')
    clock.advance(0.01)  # changed size: opened at once
    assert steps_of(reader.poll()) == [2] and len(opens) == 3


def test_a_replacement_of_the_same_size_and_time_is_noticed_at_once(
    tmp_path: Path, clock: FakeClock, opens: list[str]
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    reader = TailReader(path, clock)
    assert steps_of(reader.poll()) == [1]
    other = tmp_path / "new.jsonl"
    other.write_text('{"step": 7}\n')
    stamp = path.stat().st_mtime_ns
    os.utime(other, ns=(stamp, stamp))
    os.replace(other, path)  # another inode, same size and modification time
    clock.advance(0.01)
    batch = reader.poll()
    assert batch.restarted and steps_of(batch) == [7]


def test_a_reader_resumed_at_a_cache_identity_reads_only_what_came_after(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    first = TailReader(path)
    first.poll()
    identity = first.identity
    assert identity is not None and identity[2] == path.stat().st_size
    resumed = TailReader(path)
    resumed.resume_at(identity)
    assert resumed.started and resumed.identity == identity
    assert resumed.poll().records == []
    with open(path, "a") as f:
        f.write('{"step": 3}\n')
    batch = resumed.poll()
    assert steps_of(batch) == [3] and not batch.restarted and not batch.rejected
