"""A columnar cache of finished metric logs, so that reopening a large grid does not parse it again.

Reading a million-line metrics.jsonl is decoding 250 MB of JSON; loading its columns back is
reading a third of that as float64. After a full read of a log that ended (an end-of-training
record) and is large enough to matter, its series is saved under the user's cache folder
(``$XDG_CACHE_HOME/prefwatch``, default ``~/.cache/prefwatch``), never beside the logs: a run
directory belongs to its jobs and may be read-only.

An entry is keyed by the log's resolved path and trusted only while the file's device, inode,
size and modification time are exactly what they were when it was saved: an append, a truncation
or a replacement (even to the same size) makes it a miss, and the log is read as usual. Entries
are written to a temporary file and renamed, so a crash leaves no half entry; any error (a
read-only or full cache folder, a damaged entry) is a miss, never a failure: the log is the truth.

Only the user's own entries are read: the folder must belong to the user and be theirs alone (mode
0700; prefwatch creates it so, and takes group and other access away from an older folder of the
user's own). A folder that belongs to someone else (a shared ``XDG_CACHE_HOME`` where another user
made ``prefwatch/`` first, and could put forged series in it) is not used at all, and prefwatch says
so once on stderr. Each entry must be a regular file of the user's that nobody else may write, and
is bound to the log it describes: its summary names the entry's key and the log's path, and
carries a CRC-32 of the rows, the trailer one of the summary, so an entry copied under another
log's key or damaged is a miss.

The first reading pays for the entry. Writing ~100 MB of new file pages costs 0.02-0.7 s on a
virtual machine (the page cache's fresh pages), as much as a third of the read itself; so when a
large log already ends with its end-of-training record, a ``Stream`` writes the rows on a thread of
its own while the main thread decodes the next block (the write releases the GIL), and only the
small summary is written at the end.

An entry is a sequence of frames: ``MAGIC``, then chunks (a JSON header naming the split, its row
count and metric names, then the steps, times and each named column as little-endian float64),
then the summary (JSON, with the CRC-32 of everything before it), then the summary's offset and
the summary's CRC-32 (8 bytes each). Rows arrive in file order; a chunk that lacks a metric holds
NaN for it, as the series does.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import queue
import stat
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

from prefwatch.core import metrics
from prefwatch.core.metrics import Split
from prefwatch.core.series import CellSeries, SplitSeries
from prefwatch.files import safe

FORMAT = 3
MAGIC = b"prefwatch-cache\x03"
# Smaller logs are not worth an entry. A 100 KB log (300 TRL lines) parses in about 1.3 ms of CPU and
# loads from its entry in 0.4 ms: a folder of a thousand such runs is read again in 0.4 s instead of
# 1.3-1.5 s (the report of a reopened sweep); below 64 KiB the entry's own files cost as much.
MIN_BYTES = 64 << 10
# A log this large has its entry written while it is read (a Stream, on a thread of its own); a
# smaller one is saved once read, in one write: a thread per short log cost more than it saved.
STREAM_BYTES = 1 << 20
Identity = tuple[int, int, int, int]  # device, inode, size, mtime_ns
SPLITS: tuple[Split, Split] = ("train", "eval")
_LENGTH = struct.Struct("<Q")
_TRAILER = struct.Struct("<QQ")  # the summary's offset, the summary's CRC-32
_TAIL_BYTES = 64 << 10  # where a log's last line is looked for (an end record is a few hundred bytes)
_QUEUE = 8  # chunks waiting for the writer thread at most: memory stays bounded if the disk is slow
# Rows handed to the writer at a time: a few large writes, not one per block read (each hand-over
# and write costs the main thread a turn of the GIL).
_CHUNK_ROWS = 1 << 16


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prefwatch"


_refused: set[Path] = set()  # folders already said to be refused: once a process each


def usable_dir(create: bool = False) -> Path | None:
    """The cache folder when it is the user's alone; None when it is missing (and not ``create``d)
    or not to be trusted (said once on stderr)."""
    folder = cache_dir()
    if create:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700)
        except OSError:
            pass  # there already, or cannot be: the checks below say which
    try:
        st = os.stat(folder)
    except OSError:
        return None
    why = None
    if not stat.S_ISDIR(st.st_mode):
        why = "not a folder"
    elif st.st_uid != os.geteuid():
        why = f"it belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}), and may hold entries you did not write"
    elif st.st_mode & 0o077:
        try:  # the user's own folder, made by an older prefwatch: theirs alone from now on
            os.chmod(folder, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError:
            why = f"mode {stat.S_IMODE(st.st_mode):04o} lets others in and cannot be changed to 0700"
    if why is None:
        return folder
    if folder not in _refused:
        _refused.add(folder)
        print(f"prefwatch: not using the cache folder {folder}: {why}", file=sys.stderr)
    return None


def identity(path: Path) -> Identity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def entry_key(log: Path) -> str:
    return _key(str(Path(log).resolve()))


def _key(resolved: str) -> str:
    return hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def entry_path(log: Path) -> Path:
    return cache_dir() / f"{entry_key(log)}.entry"


class _Entry:
    """An entry being written: chunks of rows, then the summary, into a temporary file that is
    renamed over the entry only by ``commit``. Any OSError is the caller's to turn into a miss."""

    def __init__(self, log: Path) -> None:
        folder = usable_dir(create=True)
        if folder is None:
            raise OSError("no cache folder of the user's own")
        self.key = entry_key(log)
        self.target = folder / f"{self.key}.entry"
        _sweep(folder)
        fd, self._temporary = tempfile.mkstemp(dir=folder, prefix=".entry-", suffix=".tmp")
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._crc = 0
        self._write(MAGIC)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)

    def chunk(self, split: str, steps: np.ndarray, times: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Rows of one split: ``columns`` by metric name, each as long as ``steps``."""
        self._frame({"split": split, "rows": len(steps), "names": list(columns)})
        for array in (steps, times, *columns.values()):
            self._write(np.ascontiguousarray(array, dtype="<f8").data.cast("B"))

    def commit(self, summary: dict[str, Any]) -> None:
        at = self._file.tell()
        text = _frame_bytes({**summary, "key": self.key, "checksum": self._crc})
        self._file.write(text)
        self._file.write(_TRAILER.pack(at, zlib.crc32(text)))
        self._file.close()
        os.replace(self._temporary, self.target)

    def discard(self) -> None:
        self._file.close()
        try:
            os.unlink(self._temporary)
        except OSError:
            pass

    def _frame(self, header: dict[str, Any]) -> None:
        self._write(_frame_bytes(header))


def _frame_bytes(header: dict[str, Any]) -> bytes:
    text = json.dumps(header).encode()
    return _LENGTH.pack(len(text)) + text


_swept = False
STALE_SECONDS = 3600  # a temporary entry this old has no writer left (one takes seconds)


def _sweep(folder: Path) -> None:
    """Once a process, remove what no reader will use: temporary entries left by a process that
    ended while writing (a monitor quit in the middle of a first read), and entries of the earlier
    format (``.npz``). Only prefwatch's own names in prefwatch's own folder."""
    global _swept
    if _swept:
        return
    _swept = True
    now = time.time()
    for path in [*folder.glob(".entry-*.tmp"), *folder.glob("*.npz")]:
        try:
            if path.suffix == ".npz" or now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
        except OSError:
            pass


def _summary(log: Path, seen: Identity, series: CellSeries) -> dict[str, Any]:
    """Everything but the rows: what a loaded entry needs to be the series a full read gives."""
    summary: dict[str, Any] = {
        "format": FORMAT,
        "byteorder": sys.byteorder,
        "path": str(Path(log).resolve()),
        "identity": list(seen),
        "records": series.records,
        "rejected": dict(series.rejected),
        "end_record": series.end_record,
        "first_non_finite": [[split, name, step] for (split, name), step in series.first_non_finite.items()],
    }
    for name in SPLITS:
        split = series.split(name)
        summary[name] = {"rows": len(split), "names": split.names, "segments": split.segments}
    return summary


def save(log: Path, seen: Identity, series: CellSeries) -> bool:
    """Store a fully read log's series, as read when the file had identity ``seen``; False when not stored."""
    if seen[2] < MIN_BYTES or identity(log) != seen:
        return False  # small, or changed while it was read: an entry would describe another file
    try:
        summary = _summary(log, seen, series)  # before any file: a record JSON cannot hold is no entry
        json.dumps(summary)
        entry = _Entry(log)
        try:
            for name in SPLITS:
                split = series.split(name)
                entry.chunk(name, split.steps, split.times, {n: split.column(n) for n in split.names})
            entry.commit(summary)
        except BaseException:
            entry.discard()
            raise
    except (OSError, ValueError, TypeError):
        return False  # a read-only or full cache folder, or a record that JSON cannot hold: no entry
    return True


class Stream:
    """Writes a log's entry while the log is being read, the rows on a thread of its own.

    ``add(series)`` after each block hands the rows added since the last call to the writer;
    ``finish`` commits the entry when the series ended and the file is still what was read, else
    discards it. Rows already handed over must never change: a resumed run dropping rows or a row
    completed in place (``SplitSeries.rewrites`` moves) abandons the stream, and the caller saves
    the whole series at the end instead. The chunks are views of the series' arrays, never copies:
    rows below a split's length are not written again unless it is rewritten, and a grown array's
    old buffer lives on in the view.
    """

    def __init__(self, log: Path, entry: _Entry) -> None:
        self.log = log
        self._entry = entry
        self._written: dict[Split, int] = dict.fromkeys(SPLITS, 0)
        self._rewrites: dict[Split, int] | None = None
        self._series: CellSeries | None = None
        self.abandoned = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[tuple[Split, np.ndarray, np.ndarray, dict[str, np.ndarray]] | None]
        self._queue = queue.Queue(maxsize=_QUEUE)
        self._thread = threading.Thread(target=self._write, name="prefwatch-cache", daemon=True)
        self._thread.start()

    @classmethod
    def begin(cls, log: Path, size: int) -> Stream | None:
        """A stream for ``log`` (``size`` bytes) when it is large and already ends with an
        end-of-training record (a finished run: its entry will be kept); None otherwise, or when no
        entry can be written."""
        if size < max(MIN_BYTES, STREAM_BYTES) or not ends_finished(log):
            return None
        try:
            return cls(log, _Entry(log))
        except OSError:
            return None

    def add(self, series: CellSeries, last: bool = False) -> None:
        """Hand the writer the rows ``series`` gained since the last hand-over, once there are many
        of them (or all, when ``last``)."""
        if self.abandoned:
            return
        rewrites = {name: series.split(name).rewrites for name in SPLITS}
        if self._series is None:
            self._series, self._rewrites = series, rewrites
        if series is not self._series or rewrites != self._rewrites or self._error is not None:
            self.abandon()
            return
        if not last and sum(len(series.split(n)) - self._written[n] for n in SPLITS) < _CHUNK_ROWS:
            return
        for name in SPLITS:
            split = series.split(name)
            start, stop = self._written[name], len(split)
            if stop > start:
                columns = {n: split.column(n)[start:stop] for n in split.names}
                self._queue.put((name, split.steps[start:stop], split.times[start:stop], columns))
                self._written[name] = stop

    def finish(self, series: CellSeries, seen: Identity | None) -> bool:
        """Commit the entry if it holds all of ``series``, read from the file as it still is; True when committed."""
        self.add(series, last=True)
        complete = not self.abandoned and series.finished and identity(self.log) == seen
        self._stop()
        if seen is None or not complete or self._error is not None:
            self._entry.discard()
            return False
        try:
            self._entry.commit(_summary(self.log, seen, series))
        except (OSError, ValueError, TypeError):
            self._entry.discard()
            return False
        return True

    def abandon(self) -> None:
        """Stop writing and drop the entry (the caller may still ``save`` the whole series)."""
        if not self.abandoned:
            self.abandoned = True
            self._stop()
            self._entry.discard()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._entry.chunk(*item)
                except BaseException as exc:  # a full disk: the entry is dropped at finish
                    self._error = exc


def ends_finished(log: Path) -> bool:
    """Whether the last complete line of ``log`` is an end-of-training record (read from its tail only)."""
    try:
        with safe.open_read(log) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read(_TAIL_BYTES)
    except OSError:
        return False
    lines = tail.rstrip(b"\n").rsplit(b"\n", 1)
    try:
        record = msgspec.json.decode(lines[-1])
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(record, dict) and metrics.is_end_record(record)


# An entry this small (a log of up to some 20,000 lines) is read in one call and parsed in memory: a
# thousand short logs load in about half the time of reading each column into place. A larger one
# is read into its final arrays directly, with no second copy of its rows in memory.
SMALL_ENTRY = 1 << 20


def load(log: Path) -> tuple[CellSeries, Identity] | None:
    """The cached series of ``log`` and the identity it holds for, or None (no entry, or the file changed)."""
    now = identity(log)
    if now is None or now[2] < MIN_BYTES:
        return None
    folder = usable_dir()
    if folder is None:
        return None
    resolved = os.path.realpath(log)  # what Path.resolve() gives, once for the key and the check
    key = _key(resolved)
    try:
        with _open_entry(folder / f"{key}.entry") as f:
            end = os.fstat(f.fileno()).st_size
            small = end <= SMALL_ENTRY
            data = f.read() if small else None
            if data is not None:
                tail = data[max(0, end - _TRAILER.size) :]
            else:
                f.seek(max(0, end - _TRAILER.size))
                tail = f.read(_TRAILER.size)
            summary_at, summary_crc = _TRAILER.unpack(tail)
            if not len(MAGIC) <= summary_at < end - _TRAILER.size:
                return None
            if data is not None:
                text = data[summary_at : end - _TRAILER.size]
            else:
                f.seek(summary_at)
                text = f.read(end - _TRAILER.size - summary_at)
            if zlib.crc32(text) != summary_crc:
                return None
            summary, _ = _read_frame(io.BytesIO(text))
            if summary.get("format") != FORMAT or summary.get("byteorder") != sys.byteorder:
                return None
            if summary.get("key") != key or summary.get("path") != resolved:
                return None  # an entry copied under another log's name
            if tuple(summary["identity"]) != now:
                return None
            series = (
                _rows_in_memory(data, summary, summary_at) if data is not None else _read_rows(f, summary, summary_at)
            )
    except (OSError, ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError):
        return None
    series.records = int(summary["records"])
    series.rejected = Counter(summary["rejected"])
    series.end_record = summary["end_record"]
    series.first_non_finite = {(s, n): float(step) for s, n, step in summary["first_non_finite"]}
    return series, now


def _open_entry(path: Path) -> io.BufferedReader:
    """An entry opened for reading, only if it is a regular file of the user's that nobody else may
    write: a named pipe left in its place is never waited on and a device is not an entry (safe.open_read),
    and a link (not followed) or another's file is not the user's entry."""
    f = safe.open_read(path, follow=False)
    st = os.fstat(f.fileno())
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        f.close()
        raise OSError(f"{path}: not a regular file of the user's own")
    return f


def _read_frame(f: BinaryIO) -> tuple[dict[str, Any], bytes]:
    """A frame's header, and the frame's bytes as they are in the entry (for its checksum)."""
    prefix = f.read(_LENGTH.size)
    (length,) = _LENGTH.unpack(prefix)
    text = f.read(length)
    header = json.loads(text)
    if not isinstance(header, dict):
        raise ValueError("not a frame")
    return header, prefix + text


def _shapes(summary: dict[str, Any], summary_at: int) -> dict[Split, _Shape]:
    """Each split's arrays, allocated once what the summary promises is known to fit in the entry:
    a damaged entry is a miss, never a huge allocation."""
    shapes = {name: _Shape(summary[name]) for name in SPLITS}
    if sum(shape.nbytes for shape in shapes.values()) > summary_at:
        raise ValueError("the summary promises more rows than the entry holds")
    for shape in shapes.values():
        shape.allocate()
    return shapes


def _series(shapes: dict[Split, _Shape]) -> CellSeries:
    series = CellSeries()
    for name, shape in shapes.items():
        setattr(series, name, shape.split())
    return series


def _rows_in_memory(data: bytes, summary: dict[str, Any], summary_at: int) -> CellSeries:
    """The chunks of an entry read whole (``data``): one checksum over all of them, each column
    copied into its split's arrays from the bytes."""
    shapes = _shapes(summary, summary_at)
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError("not an entry")
    view = memoryview(data)[:summary_at]
    if zlib.crc32(view) != summary["checksum"]:
        raise ValueError("the rows are not those the entry was written with")
    at = len(MAGIC)
    while at < summary_at:
        (length,) = _LENGTH.unpack_from(view, at)
        header = json.loads(bytes(view[at + _LENGTH.size : at + _LENGTH.size + length]))
        if not isinstance(header, dict):
            raise ValueError("not a frame")
        at = shapes[header["split"]].take(view, at + _LENGTH.size + length, int(header["rows"]), header["names"])
    return _series(shapes)


def _read_rows(f: io.BufferedReader, summary: dict[str, Any], summary_at: int) -> CellSeries:
    """The chunks, read straight into each split's final arrays (no second copy of ~100 MB). What the
    summary promises must fit in the file before anything is allocated: a damaged entry is a miss,
    never a huge allocation."""
    shapes = _shapes(summary, summary_at)
    f.seek(0)
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError("not an entry")
    crc = zlib.crc32(magic)
    while f.tell() < summary_at:
        header, frame = _read_frame(f)
        crc = shapes[header["split"]].read(f, int(header["rows"]), header["names"], zlib.crc32(frame, crc))
    if crc != summary["checksum"]:
        raise ValueError("the rows are not those the entry was written with")
    return _series(shapes)


def _table(width: int, rows: int) -> np.ndarray:
    """``width`` rows of ``rows`` float64s for an entry to be read into. A large one is a mapping whose
    pages the kernel makes in one call (MAP_POPULATE) instead of faulting them in one by one as they
    are filled: 45 instead of 55 ms for a million-line entry here. Each row is a contiguous array;
    the mapping lives as long as any of them does."""
    size = 8 * width * rows
    populate = getattr(mmap, "MAP_POPULATE", 0)  # Linux only
    if not size or size < MIN_BYTES or not populate:
        return np.empty((width, rows))
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(buffer, dtype=np.float64).reshape(width, rows)


class _Shape:
    """One split of an entry as it is read back: its final arrays, filled chunk by chunk in order."""

    def __init__(self, shape: dict[str, Any]) -> None:
        self.rows, self.segments = int(shape["rows"]), int(shape["segments"])
        names = shape["names"]
        if self.rows < 0 or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("not a split")
        self.nbytes = 8 * self.rows * (2 + len(names))
        self.names: list[str] = names
        self.filled = 0
        self.steps = self.times = np.empty(0)
        self.columns: dict[str, np.ndarray] = {}

    def allocate(self) -> None:
        table = _table(2 + len(self.names), self.rows)
        self.steps, self.times = table[0], table[1]
        self.columns = {name: table[2 + i] for i, name in enumerate(self.names)}

    def _chunk(self, count: int, names: list[str]) -> tuple[int, int]:
        """The rows [start, stop) a chunk of ``count`` rows of ``names`` fills, once it is one the summary describes."""
        start, stop = self.filled, self.filled + count
        if count < 0 or stop > self.rows or not set(names) <= self.columns.keys():
            raise ValueError("a chunk the summary does not describe")
        return start, stop

    def take(self, data: memoryview, at: int, count: int, names: list[str]) -> int:
        """Copy a chunk of ``count`` rows from ``data`` at offset ``at``; the offset after it."""
        start, stop = self._chunk(count, names)
        width = 2 + len(names)
        if at + 8 * width * count > len(data):
            raise ValueError("entry cut short")
        block = np.frombuffer(data, dtype="<f8", count=width * count, offset=at).reshape(width, count)
        self.steps[start:stop] = block[0]
        self.times[start:stop] = block[1]
        for index, name in enumerate(names):
            self.columns[name][start:stop] = block[2 + index]
        for name in self.columns.keys() - set(names):
            self.columns[name][start:stop] = np.nan  # a metric first logged after these rows
        self.filled = stop
        return at + 8 * width * count

    def read(self, f: io.BufferedReader, count: int, names: list[str], crc: int) -> int:
        """Read a chunk of ``count`` rows; ``crc`` carried on over its bytes."""
        start, stop = self._chunk(count, names)
        for array in (self.steps, self.times, *(self.columns[name] for name in names)):
            view = array[start:stop].data.cast("B")
            if f.readinto(view) != len(view):
                raise ValueError("entry cut short")
            crc = zlib.crc32(view, crc)
        for name in self.columns.keys() - set(names):
            self.columns[name][start:stop] = np.nan  # a metric first logged after these rows
        self.filled = stop
        return crc

    def split(self) -> SplitSeries:
        if self.filled != self.rows:
            raise ValueError("fewer rows than the summary says")
        return SplitSeries.from_arrays(self.steps, self.times, self.columns, self.segments)
