"""prefwatch's own metrics.jsonl (what the callback writes; any JSON-lines log of Trainer records).

Followed by byte offset (``prefwatch.ingest.tail``), decoded block by block into columns
(``prefwatch.ingest.columnar``); a finished log of 64 KiB or more goes to the columnar cache as it
is read, and its next opening is a load (``prefwatch.ingest.cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.series import CellSeries
from prefwatch.files import rundir, safe
from prefwatch.ingest import allocator, cache
from prefwatch.ingest.columnar import ColumnarDecoder, add_blocks
from prefwatch.ingest.readers.protocol import Batch, CompletionsReader
from prefwatch.ingest.tail import TailReader

_MIN_LINE_BYTES = 48  # a metrics line with a step, a time and one value is longer than this


class MetricsLog:
    """One metrics.jsonl, read from its start and followed."""

    @staticmethod
    def detect(path: Path) -> bool:
        """A folder holding metrics.jsonl (a file of JSON lines may have any name: see formats)."""
        return path.is_dir() and (path / rundir.METRICS_FILE).is_file()

    @classmethod
    def open(cls, path: Path, clock: Clock = SYSTEM) -> MetricsLog:
        """The log ``path`` names, or the metrics.jsonl of the folder ``path`` (a launched cell's
        log may not be written yet)."""
        return cls(path / rundir.METRICS_FILE if path.is_dir() else path, clock)

    def __init__(self, path: Path, clock: Clock = SYSTEM) -> None:
        self._path = path
        self.series = CellSeries()
        self.cached = False  # the series came from, or went to, the columnar cache
        self._tail = TailReader(path, clock)
        self._columnar = ColumnarDecoder()
        self._preview = False  # the series holds only the tail of the log (preview), not all of it

    @property
    def path(self) -> Path:
        return self._path

    def watched(self) -> list[Path]:
        return []

    def completions(self) -> CompletionsReader | None:
        return None

    def written_at(self) -> float | None:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return None

    def _error(self) -> str | None:
        if self._tail.error:
            return self._tail.error
        return f"{self._path}: deleted" if self._tail.missing else None

    def poll(self) -> Batch:
        reader = self._tail
        # Read from its start, the log's size tells how many rows to make room for (see _reserve).
        size = 0 if reader.started else (cache.identity(self._path) or (0, 0, 0, 0))[2]
        if size >= cache.MIN_BYTES:
            allocator.prepare_large_read()
        if not reader.started and self._from_cache():
            return Batch(self.series, changed=True)
        blocks = 0
        # After preview() the series holds only the end of the log: the whole log is read into a
        # new series, which replaces the preview when it is complete (the monitor never sees a gap).
        series = CellSeries() if self._preview else self.series
        # A large finished log read from its start has its cache entry written while it is read.
        stream = None if reader.started or self.cached else cache.Stream.begin(self._path, size)

        def take(block: bytes) -> None:
            nonlocal blocks
            blocks += 1
            add_blocks(series, [block], self._columnar)
            if blocks == 1 and size > 2 * len(block):
                _reserve(series, size / len(block), size // _MIN_LINE_BYTES)
            if stream is not None:
                stream.add(series)

        def restart() -> None:
            nonlocal series
            series = CellSeries()
            if stream is not None:
                stream.abandon()

        try:
            batch = reader.poll(on_block=take, on_restart=restart)
        except BaseException:
            if stream is not None:
                stream.abandon()
            raise
        series.rejected.update(batch.rejected)
        self.series, self._preview = series, False
        if stream is not None and stream.finish(series, reader.identity):
            self.cached = True
        elif blocks and series.finished and not self.cached:
            self._to_cache()
        changed = bool(blocks or batch.rejected or batch.restarted)
        return Batch(series, changed=changed, restarted=batch.restarted, error=self._error())

    def _from_cache(self) -> bool:
        """Take a finished log's series from the columnar cache when the file is exactly as cached."""
        hit = cache.load(self._path)
        if hit is None:
            return False
        self.series, self._preview, self.cached = hit[0], False, True
        self._tail.resume_at(hit[1])
        return True

    def _to_cache(self) -> None:
        """Save a finished log's series once it is read whole (a large log's second opening is a load)."""
        seen = self._tail.identity
        if seen is not None:
            self.cached = cache.save(self._path, seen, self.series)

    def preview(self, max_bytes: int) -> CellSeries | None:
        """The series of the last ``max_bytes`` of the log, before its first poll (a log with complete
        lines in its tail); the next poll reads the whole log."""
        if self._tail.started:
            return None
        try:
            with safe.open_read(self._path) as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                tail = f.read(max_bytes)
        except OSError:
            return None
        if size > max_bytes:
            tail = tail[tail.find(b"\n") + 1 :]  # the first line is cut
        tail = tail[: tail.rfind(b"\n") + 1]
        if not tail:
            return None
        preview = CellSeries()
        add_blocks(preview, [tail], ColumnarDecoder())
        self.series, self._preview = preview, True
        return preview


def _reserve(series: CellSeries, scale: float, most: int) -> None:
    """Room for a whole log in each split, judged from its first block (``scale`` = file size / block
    size) with a little to spare: a million-line log is then read without doubling its arrays. Never
    more than ``most`` rows: a first block of unusually short lines must not reserve memory that the
    rest of the file could not fill."""
    for split in (series.train, series.eval):
        if len(split):
            split.reserve(min(int(len(split) * scale * 1.05) + 64, most))
