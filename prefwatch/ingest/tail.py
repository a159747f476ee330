"""Follow a growing JSONL file by byte offset, reading every complete line exactly once.

A writer may flush half a line; the reader keeps the partial tail until its newline arrives. A file
that shrinks (truncated), whose inode changes (replaced, rotated) or whose bytes already read changed
(rewritten in place, even longer: its first and last bytes before the offset are compared) is read
again from the start, and the caller is told so it can drop what it built from the old file.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.files import safe

MAX_LINE_BYTES = 1 << 20
# A file that looks unchanged is opened again after this long anyway (network file systems).
REOPEN_SECONDS = 0.25
# Bytes kept from the start of the file and from just before the offset: a log only ever appended to
# never changes them; one written over from its start (another run of the same name, same inode) does
# (its rows carry other times and values), and is then a new segment, never mixed with the old one.
_FINGERPRINT_BYTES = 64
# Read and decoded this much at a time: a block's objects then fit in memory the process already
# holds (4 MiB blocks made ~5 MB of short-lived objects each, in fresh pages every time).
_CHUNK_BYTES = 1 << 18

_decoder = msgspec.json.Decoder()


@dataclass
class Batch:
    """What one poll produced, in file order: blocks of complete lines (each ending in a newline),
    the records decoded from them, and whether the file restarted first."""

    blocks: list[bytes] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    restarted: bool = False
    rejected: Counter[str] = field(default_factory=Counter)


class TailReader:
    """Reads the lines appended to one file since the last call."""

    def __init__(self, path: Path, clock: Clock = SYSTEM) -> None:
        self.path = Path(path)
        self.clock = clock
        self._offset = 0
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._skipping_oversized = False
        self.missing = False
        self.error: str | None = None
        self._on_block: Callable[[bytes], None] = lambda block: None
        self._opened_at = -math.inf
        self._seen: tuple[int, int] = (-1, -1)  # size and mtime at the last read
        self._fingerprint: bytes | None = None  # the head and the bytes before the offset, as last read

    @property
    def identity(self) -> tuple[int, int, int, int] | None:
        """(device, inode, size, mtime_ns) of the file as last read, when every byte of it was read
        into complete lines (nothing pending, no oversized line being skipped); else None. What a
        cache entry of it is keyed by."""
        if self._inode is None or self._partial or self._skipping_oversized or self._offset != self._seen[0]:
            return None
        return (*self._inode, *self._seen)

    def resume_at(self, identity: tuple[int, int, int, int]) -> None:
        """Continue after what a cache entry holds: the file (as ``identity`` says) is read up to its end."""
        device, inode, size, mtime = identity
        self._inode, self._offset, self._seen, self._partial = (device, inode), size, (size, mtime), b""
        self._opened_at = self.clock.monotonic()
        self._fingerprint = None  # taken at the next read, from the file the cache entry was checked against

    @property
    def started(self) -> bool:
        """Whether anything has been read (or the file seen) yet."""
        return self._inode is not None

    def poll(
        self,
        on_block: Callable[[bytes], None] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> Batch:
        """Read what was appended since the last poll.

        By default the lines are decoded into ``batch.records``. With ``on_block``, each block of
        complete lines goes to it as soon as it is read, so a large file is never held whole in
        memory; ``on_restart`` is called first when the file was truncated or replaced.
        """
        batch = Batch()
        self._on_block = on_block or batch.blocks.append
        if self._unchanged():
            return batch
        try:
            with safe.open_read(self.path) as f:
                stat = os.fstat(f.fileno())
                self._opened_at, self._seen = self.clock.monotonic(), (stat.st_size, stat.st_mtime_ns)
                inode = (stat.st_dev, stat.st_ino)
                # A file that vanished and came back is a new file even when the file system gave it
                # the old inode number again (it often does): read it from its start.
                replaced = self.missing or inode != self._inode or stat.st_size < self._offset
                replaced = replaced or self._rewritten(f.fileno())
                if self._inode is not None and replaced:
                    self._restart()
                    batch.restarted = True
                    if on_restart:
                        on_restart()
                self._inode = inode
                self.missing = False
                self.error = None
                if stat.st_size > self._offset:
                    f.seek(self._offset)
                    while chunk := f.read(_CHUNK_BYTES):
                        self._offset += len(chunk)
                        self._take(chunk, batch)
                self._fingerprint = self._fingerprint_of(f.fileno())
        except FileNotFoundError:
            if self._inode is not None:
                self.missing = True
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
        if on_block is None:
            for block in batch.blocks:
                decode_lines(block, batch)
        return batch

    def _fingerprint_of(self, fd: int) -> bytes:
        """The first bytes of the file and those just before the offset (two small preads)."""
        head = os.pread(fd, min(_FINGERPRINT_BYTES, self._offset), 0)
        start = max(0, self._offset - _FINGERPRINT_BYTES)
        return head + os.pread(fd, self._offset - start, start)

    def _rewritten(self, fd: int) -> bool:
        """Whether bytes already read are no longer what they were: the file was written over in place."""
        if self._fingerprint is None or self._offset == 0:
            return False
        return self._fingerprint_of(fd) != self._fingerprint

    def _unchanged(self) -> bool:
        """Whether a stat shows the file as it was at the last read, which was recent.

        A stat costs less than an open, and an open wakes every watcher of the folder. But network
        file systems cache a file's attributes and refresh them on open (close-to-open consistency),
        so the file is opened again at least every REOPEN_SECONDS however unchanged it looks.
        """
        if self._inode is None or self.clock.monotonic() - self._opened_at > REOPEN_SECONDS:
            return False
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._inode and (stat.st_size, stat.st_mtime_ns) == self._seen

    def _restart(self) -> None:
        self._offset = 0
        self._fingerprint = None
        self._partial = b""
        self._skipping_oversized = False

    def _take(self, chunk: bytes, batch: Batch) -> None:
        data = self._partial + chunk
        if self._skipping_oversized:
            # Drop the rest of a line already counted as oversized.
            newline = data.find(b"\n")
            if newline < 0:
                self._partial = b""
                return
            data = data[newline + 1 :]
            self._skipping_oversized = False
        end = data.rfind(b"\n")
        self._keep_partial(data[end + 1 :], batch)
        if end >= 0:
            self._on_block(data[: end + 1])

    def _keep_partial(self, tail: bytes, batch: Batch) -> None:
        if len(tail) > MAX_LINE_BYTES:
            if not self._skipping_oversized:
                batch.rejected["line over 1 MiB"] += 1
            self._skipping_oversized = True
            self._partial = b""
        else:
            self._partial = tail


def decode_lines(lines: bytes, batch: Batch) -> None:
    """Decode newline-terminated JSON lines into ``batch``; the fast path takes a whole block at once."""
    if longest_line(lines) <= MAX_LINE_BYTES:
        try:
            batch.records.extend(_decoder.decode_lines(lines))
            return
        except (msgspec.DecodeError, RecursionError):
            pass
    for line in lines.split(b"\n"):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            batch.rejected["line over 1 MiB"] += 1
            continue
        record = decode_line(line, batch.rejected)
        if record is not None:
            batch.records.append(record)


def longest_line(lines: bytes) -> int:
    if len(lines) <= MAX_LINE_BYTES:
        return len(lines)
    ends = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 10)
    return int(np.diff(ends, prepend=-1).max())


def decode_line(line: bytes, rejected: Counter[str] | None = None) -> Any | None:
    """One JSON value, accepting the NaN and Infinity tokens Python's json writes for non-finite floats;
    None (counted in ``rejected`` by reason) for text that is not JSON or is nested too deep to decode
    (both decoders recurse: a line of a thousand ``[`` would otherwise raise RecursionError)."""
    try:
        return _decoder.decode(line)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(line)
    except RecursionError:
        reason = "nested too deep"
    except ValueError:
        reason = "not JSON"
    if rejected is not None:
        rejected[reason] += 1
    return None
