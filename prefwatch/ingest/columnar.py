"""Decode blocks of log lines straight into numpy columns, without a dict per line.

A metrics file repeats the same few key sets line after line, so once the keys are known a typed
msgspec Struct decodes a block many times faster than dicts. The columns come out of the Structs
without a Python call per value: the Structs are encoded to MessagePack in one C call, where each
row has the same layout (every field a float64 after the same key), and numpy reads the columns out
of that buffer at fixed offsets.

Anything the fast path cannot take — a key not seen before, NaN tokens, a value of the wrong type,
an end-of-training record (its keys are never learned, so it is an unknown field), a resumed run's
step going back — makes a block fail. msgspec's error says where (the byte of a malformed token, or
the index of the value that failed validation): the lines before it go column-wise, that one line
goes through the record-by-record path, which is exact, and the rest of the block is tried again.
Where the error does not say, or the lines before it fail too, the block is split in halves and each
retried, down to pieces of a few lines that go record by record. A finished log's end-of-training
record so costs one more decode of its last block and one line decoded the exact way.

The keys are learned from the distinct key sets of the first lines (decoded once as plain objects),
not by adding those lines record by record: a folder of a thousand short logs was a third record
by record before.
"""

from __future__ import annotations

import functools
import math
import re
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from prefwatch.core import metrics
from prefwatch.core.series import CellSeries
from prefwatch.ingest.tail import Batch, decode_lines

# Pieces at most this long go record by record (after a failed fast decode, or to learn the keys).
_EXACT_BYTES = 16 << 10
# A live log brings a line or two per poll: for so little, records cost less than building columns.
_SMALL_BYTES = 4 << 10
# The keys are learned from the key sets of this much of a log's first block (an eval line every few
# hundred train lines is learned when it comes: its line alone goes the exact way).
_LEARN_BYTES = 16 << 10
_plain = msgspec.json.Decoder()
_AT_VALUE = re.compile(r"at `\$\[(\d+)\]")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
# The most keys a decoder learns: a cell keeps at most MAX_NAMES names per split (train and eval keys
# differ), plus the index keys. A Struct of thousands of fields would be rebuilt at every new key.
MAX_KEYS = 2 * metrics.MAX_NAMES + len(metrics.INDEX_KEYS)


class ColumnarDecoder:
    """Learns the keys of a log from records, then decodes blocks of lines into columns by key."""

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._row_bytes = 0
        self._row_dtype: np.dtype[Any] = np.dtype(np.float64)
        # The line (start, end offsets) msgspec named in the last failed decode(), when it named one.
        self.failed_line: tuple[int, int] | None = None

    @property
    def ready(self) -> bool:
        return self._decoder is not None

    def learn_block(self, block: bytes) -> bool:
        """Learn the keys of the first lines of ``block`` from one record of each distinct key set;
        False when they cannot be decoded as plain JSON (NaN tokens...): the caller learns the exact way."""
        head = block[: _split_at_line(block, _LEARN_BYTES)]
        try:
            records = _plain.decode_lines(head)
        except (msgspec.DecodeError, RecursionError):
            return False
        shapes: dict[tuple[str, ...], dict[str, Any]] = {}
        for record in records:
            if type(record) is dict:
                shapes.setdefault(tuple(record), record)
        self.learn(list(shapes.values()))
        return self.ready

    def learn(self, records: list[Any]) -> None:
        """Add the numeric keys of records decoded the slow way; the next block may then go fast."""
        seen = set(self.keys)
        new = [
            key
            for record in records
            if isinstance(record, dict) and not metrics.is_end_record(record)
            for key, value in record.items()
            if key not in seen
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (key in metrics.INDEX_KEYS or metrics.valid_name(key))
        ]
        # Keys past the cap are never learned: lines holding them take the exact path, which counts them.
        new = list(dict.fromkeys(new))[: max(0, MAX_KEYS - len(self.keys))]
        if not new:
            return
        self.keys = (*self.keys, *new)
        self._decoder, self._row_bytes, self._row_dtype = _layout(self.keys)

    def decode(self, block: bytes) -> dict[str, np.ndarray] | None:
        """Columns by key (NaN where a line lacks the key), or None when the block needs the exact path."""
        if self._decoder is None:
            return None
        self.failed_line = None
        try:
            rows = self._decoder.decode_lines(block)
        except (msgspec.DecodeError, RecursionError) as exc:
            self.failed_line = _line_named(str(exc), block)
            return None
        n = len(rows)
        width = self._row_bytes
        if not n:
            return {}
        if width:
            packed = self._encoder.encode(rows)
            header = len(packed) - n * width
            # The array's header is 1, 3 or 5 bytes; any other size means a row of another layout.
            if header == (1 if n < 16 else 3 if n < 1 << 16 else 5):
                table: Any = np.frombuffer(packed, dtype=self._row_dtype, offset=header, count=n)
                return {key: table[f"v{i}"].astype(np.float64) for i, key in enumerate(self.keys)}
        return {  # pragma: no cover - the layout check above always holds for float fields
            key: np.fromiter(map(attrgetter(f"f{i}"), rows), dtype=float, count=n) for i, key in enumerate(self.keys)
        }


@functools.lru_cache(maxsize=64)
def _layout(keys: tuple[str, ...]) -> tuple[msgspec.json.Decoder[Any], int, np.dtype[Any]]:
    """The decoder of lines holding ``keys``, and where each field's 8 bytes sit in a row's MessagePack
    encoding (a map: key, 0xcb, float64): (decoder, row bytes (0: no fixed layout), row dtype).

    Kept per key set: the cells of a grid log the same keys, and making a Struct type costs more than
    decoding a short log (a folder of a thousand logs made a thousand identical ones)."""
    # A missing key decodes as NaN; null or a string is a validation error (the exact path counts it).
    fields = [(f"f{i}", float, math.nan) for i in range(len(keys))]
    rename = {f"f{i}": key for i, key in enumerate(keys)}
    struct = msgspec.defstruct("LogLine", fields, rename=rename, forbid_unknown_fields=True, gc=False)
    decoder = msgspec.json.Decoder(struct)
    encoder = msgspec.msgpack.Encoder()
    row = encoder.encode(struct())
    offsets, at = [], 1 if len(keys) < 16 else 3 if len(keys) < 1 << 16 else 5
    for key in keys:
        at += len(encoder.encode(key))
        if row[at] != 0xCB:  # pragma: no cover - a float is always encoded as float64
            return decoder, 0, np.dtype(np.float64)
        offsets.append(at + 1)
        at += 9
    row_bytes = len(row) if at == len(row) else 0
    dtype = np.dtype(
        {
            "names": [f"v{i}" for i in range(len(offsets))],
            "formats": [">f8"] * len(offsets),
            "offsets": offsets,
            "itemsize": row_bytes or 8 * len(offsets),
        }
    )
    return decoder, row_bytes, dtype


def add_blocks(series: CellSeries, blocks: list[bytes], decoder: ColumnarDecoder) -> None:
    """Add blocks of lines to a series in file order: the columnar path where it can take a piece
    whole, else record by record (which counts what it rejects and teaches the decoder new keys)."""
    for block in blocks:
        _add(series, block, decoder)


def _add(series: CellSeries, block: bytes, decoder: ColumnarDecoder, locate: bool = True) -> None:
    while block:
        if len(block) <= _SMALL_BYTES or not decoder.ready and not decoder.learn_block(block):
            if len(block) <= _EXACT_BYTES:
                _exact(series, block, decoder)
                return
            # Learn the keys from the first lines, record by record; the rest of the block may go fast.
            head = _split_at_line(block, _EXACT_BYTES)
            _exact(series, block[:head], decoder)
            block = block[head:]
            continue
        columns = decoder.decode(block)
        if columns is not None and (not columns or series.add_columns(columns)):
            return
        line = decoder.failed_line if columns is None and locate else None
        if line is not None:
            # The lines before the one msgspec named decoded; that one goes the exact way (which
            # counts what it rejects and learns a new key), then the rest is tried again.
            start, end = line
            _add(series, block[:start], decoder, locate=False)
            _exact(series, block[start:end], decoder)
            block = block[end:]
            continue
        middle = _split_at_line(block, len(block) // 2)
        if len(block) <= _EXACT_BYTES or middle >= len(block):
            _exact(series, block, decoder)
            return
        _add(series, block[:middle], decoder, locate)
        block = block[middle:]


def _line_named(error: str, block: bytes) -> tuple[int, int] | None:
    """(start, end) of the line a decode error of ``block`` points at, or None when it names none.

    A malformed token is named by its byte; a value that failed validation by its index among the
    block's values (blank lines hold none). Only a hint: every piece is decoded either way, so a
    wrong line costs time (the lines before it fail again and are halved), never a value.
    """
    found = _AT_BYTE.search(error)
    if found is not None:
        at = min(int(found.group(1)), len(block) - 1)
        start = block.rfind(b"\n", 0, at) + 1
    else:
        found = _AT_VALUE.search(error)
        if found is None:
            return None
        ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
        starts = np.concatenate(([0], ends[:-1] + 1))
        filled = ends > starts
        index = int(found.group(1))
        if index >= int(np.count_nonzero(filled)):
            return None
        start = int(starts[filled][index])
    end = _split_at_line(block, start + 1)
    return (start, end) if end > start else None


def _split_at_line(block: bytes, at: int) -> int:
    """The offset just past the first newline at or after ``at`` (the whole block if none)."""
    newline = block.find(b"\n", min(at, len(block)) - 1 if at else 0)
    return len(block) if newline < 0 else newline + 1


def _exact(series: CellSeries, block: bytes, decoder: ColumnarDecoder) -> None:
    batch = Batch()
    decode_lines(block, batch)
    series.rejected.update(batch.rejected)
    series.add_all(batch.records)
    decoder.learn(batch.records)
