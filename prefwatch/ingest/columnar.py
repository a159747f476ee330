"""Decode blocks of log lines straight into numpy columns, without a dict per line.

A metrics file repeats the same few key sets line after line, so once the keys are known a typed
msgspec Struct decodes a block many times faster than dicts, and the columns come out of the Structs
in one C-level pass each. Anything the fast path cannot take whole — a key not seen before, NaN
tokens, a value of the wrong type, an end-of-training record, a resumed run's step going back — makes
it return None, and the caller takes that block through the record-by-record path, which is exact.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from prefwatch import metrics
from prefwatch.ingest.tail import Batch, decode_lines
from prefwatch.series import CellSeries

_END_MARKERS = tuple(f'"{key}"'.encode() for key in metrics.END_KEYS)


class ColumnarDecoder:
    """Learns the keys of a log from records, then decodes blocks of lines into columns by key."""

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._getters: list[attrgetter[Any]] = []

    def learn(self, records: list[Any]) -> None:
        """Add the numeric keys of records decoded the slow way; the next block may then go fast."""
        seen = set(self.keys)
        new = [
            key
            for record in records
            if isinstance(record, dict)
            for key, value in record.items()
            if key not in seen and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if not new:
            return
        self.keys = tuple(dict.fromkeys([*self.keys, *new]))
        fields = [(f"f{i}", float | None, None) for i in range(len(self.keys))]
        rename = {f"f{i}": key for i, key in enumerate(self.keys)}
        struct = msgspec.defstruct("LogLine", fields, rename=rename, forbid_unknown_fields=True, gc=False)
        self._decoder = msgspec.json.Decoder(struct)
        self._getters = [attrgetter(f"f{i}") for i in range(len(self.keys))]

    def decode(self, block: bytes) -> dict[str, np.ndarray] | None:
        """Columns by key (NaN where a line lacks the key), or None when the block needs the exact path."""
        if self._decoder is None or any(marker in block for marker in _END_MARKERS):
            return None
        try:
            rows = self._decoder.decode_lines(block)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        n = len(rows)
        return {
            key: np.fromiter(map(getter, rows), dtype=float, count=n) for key, getter in zip(self.keys, self._getters)
        }


def add_blocks(series: CellSeries, blocks: list[bytes], decoder: ColumnarDecoder) -> None:
    """Add blocks of lines to a series in file order: the columnar path where it can take a block
    whole, else record by record (which counts what it rejects and teaches the decoder new keys)."""
    for block in blocks:
        columns = decoder.decode(block)
        if columns is not None and series.add_columns(columns):
            continue
        batch = Batch()
        decode_lines(block, batch)
        series.rejected.update(batch.rejected)
        series.add_all(batch.records)
        decoder.learn(batch.records)
