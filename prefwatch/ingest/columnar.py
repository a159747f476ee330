"""Decode blocks of log lines straight into numpy columns, without a dict per line.

A metrics file repeats the same few key sets line after line, so once the keys are known a typed
msgspec Struct decodes a block many times faster than dicts. The columns come out of the Structs
without a Python call per value: the Structs are encoded to MessagePack in one C call, where each
row has the same layout (every field a float64 after the same key), and numpy reads the columns out
of that buffer at fixed offsets.

Anything the fast path cannot take whole — a key not seen before, NaN tokens, a value of the wrong
type, an end-of-training record (its keys are never learned, so it is an unknown field), a resumed
run's step going back — makes a block fail; the block is then split in halves and each retried,
down to pieces of a few lines that go through the record-by-record path, which is exact. One odd
line in a 4 MiB block so costs about one more decode of the block, not a slow decode of all of it.
"""

from __future__ import annotations

import math
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
        self._offsets: np.ndarray = np.empty(0, dtype=np.int64)
        self._row_dtype: np.dtype[Any] = np.dtype(np.float64)

    @property
    def ready(self) -> bool:
        return self._decoder is not None

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
        # A missing key decodes as NaN; null or a string is a validation error (the exact path counts it).
        fields = [(f"f{i}", float, math.nan) for i in range(len(self.keys))]
        rename = {f"f{i}": key for i, key in enumerate(self.keys)}
        struct = msgspec.defstruct("LogLine", fields, rename=rename, forbid_unknown_fields=True, gc=False)
        self._decoder = msgspec.json.Decoder(struct)
        self._layout(struct)

    def _layout(self, struct: Any) -> None:
        """Where each field's 8 bytes sit in a row's MessagePack encoding (a map: key, 0xcb, float64)."""
        row = self._encoder.encode(struct())
        offsets, at = [], 1 if len(self.keys) < 16 else 3 if len(self.keys) < 1 << 16 else 5
        for key in self.keys:
            at += len(self._encoder.encode(key))
            if row[at] != 0xCB:  # pragma: no cover - a float is always encoded as float64
                self._row_bytes = 0
                return
            offsets.append(at + 1)
            at += 9
        self._row_bytes = len(row) if at == len(row) else 0
        self._offsets = np.array(offsets, dtype=np.int64)
        self._row_dtype = np.dtype(
            {
                "names": [f"v{i}" for i in range(len(offsets))],
                "formats": [">f8"] * len(offsets),
                "offsets": offsets,
                "itemsize": self._row_bytes or 8 * len(offsets),
            }
        )

    def decode(self, block: bytes) -> dict[str, np.ndarray] | None:
        """Columns by key (NaN where a line lacks the key), or None when the block needs the exact path."""
        if self._decoder is None:
            return None
        try:
            rows = self._decoder.decode_lines(block)
        except (msgspec.DecodeError, RecursionError):
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


def add_blocks(series: CellSeries, blocks: list[bytes], decoder: ColumnarDecoder) -> None:
    """Add blocks of lines to a series in file order: the columnar path where it can take a piece
    whole, else record by record (which counts what it rejects and teaches the decoder new keys)."""
    for block in blocks:
        _add(series, block, decoder)


def _add(series: CellSeries, block: bytes, decoder: ColumnarDecoder) -> None:
    if not block:
        return
    if not decoder.ready or len(block) <= _SMALL_BYTES:
        if len(block) <= _EXACT_BYTES:
            _exact(series, block, decoder)
            return
        # Learn the keys from the first lines, record by record; the rest of the block may go fast.
        head = _split_at_line(block, _EXACT_BYTES)
        _exact(series, block[:head], decoder)
        _add(series, block[head:], decoder)
        return
    columns = decoder.decode(block)
    if columns is not None and (not columns or series.add_columns(columns)):
        return
    middle = _split_at_line(block, len(block) // 2)
    if len(block) <= _EXACT_BYTES or middle >= len(block):
        _exact(series, block, decoder)
        return
    _add(series, block[:middle], decoder)
    _add(series, block[middle:], decoder)


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
