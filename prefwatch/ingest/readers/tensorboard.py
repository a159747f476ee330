"""Read scalar summaries from TensorBoard event files, growing or finished, without TensorBoard.

An event file (``events.out.tfevents.*``, what TRL writes with ``report_to="tensorboard"``) is a
TFRecord stream: each record is ``uint64 length, uint32 masked crc, data, uint32 masked crc``, the
data an ``Event`` protobuf. Only a few fields matter here, so they are parsed by hand:

    Event:   wall_time (1, double), step (2, int64), summary (5)
    Summary: value (1, repeated)
    Value:   tag (1, string), simple_value (2, float), tensor (8)
    Tensor:  dtype (1), tensor_content (4), float_val (5), double_val (6)

The reader keeps a byte offset like the tail reader: a record not yet written whole is left for
the next poll, and a file that shrinks or is replaced is read again from the start.

Speed: a file of a million scalars is framed and decoded in numpy. Records are found from their
headers (a length whose high bytes are zero and an Event starting with its wall_time field) and
kept only if they chain exactly from the first to the last; the common scalar layout written by
PyTorch's SummaryWriter (and tensorboardX) is then decoded column-wise. Anything else — another
layout, a record the chain check refuses — goes through the exact record-by-record parser.
The CRCs are not checked (CRC32C is not in the standard library); a damaged record is skipped and
counted when its protobuf does not parse.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefwatch.core import metrics
from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.series import CellSeries
from prefwatch.files import safe
from prefwatch.ingest.readers.protocol import Batch, CompletionsReader
from prefwatch.ingest.readers.protowire import fields
from prefwatch.ingest.readers.trainer_state import TrainerState

EVENT_FILE_PREFIX = "events.out.tfevents."
_HEADER = 12  # uint64 length + uint32 crc
_FOOTER = 4
_MAX_RECORD = 1 << 28
# The shortest Event holding a scalar is longer than this (header, wall time, step, summary, footer).
_MIN_RECORD = 16
_CHUNK_BYTES = 1 << 26
_FLOAT_DTYPES = {1: "<f4", 2: "<f8", 19: "<f2"}  # DT_FLOAT, DT_DOUBLE, DT_HALF


@dataclass
class Scalars:
    """Scalar points in file order: tag index, step, wall time and value per point."""

    tags: list[str] = field(default_factory=list)
    tag_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    steps: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    walls: np.ndarray = field(default_factory=lambda: np.empty(0))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    rejected: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.values)


def event_files(path: Path) -> list[Path]:
    """The event files of one run, oldest first: in ``path``, in ``path/runs/*`` (TRL's default
    logging_dir) and, for a folder named ``runs`` itself, in its sub-folders."""
    folders = [path, *sorted(p for p in path.glob("runs/*") if p.is_dir())]
    if path.name == "runs":
        folders += sorted(p for p in path.iterdir() if p.is_dir())
    found = [f for folder in folders for f in folder.glob(f"{EVENT_FILE_PREFIX}*") if f.is_file()]
    return sorted(found, key=_file_order)


def _file_order(path: Path) -> tuple[int, str]:
    # events.out.tfevents.<unix time>.<host>[.<pid>.<n>]: the time orders a resumed run's files.
    match = re.match(re.escape(EVENT_FILE_PREFIX) + r"(\d+)", path.name)
    return (int(match.group(1)) if match else 0, str(path))


class EventFileReader:
    """Reads the scalar points appended to one event file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self.missing = False
        self.error: str | None = None

    def poll(self) -> tuple[Scalars, bool]:
        """Scalars appended since the last poll, and whether the file restarted (truncated or replaced) first."""
        restarted = False
        pieces: list[Scalars] = []
        try:
            with safe.open_read(self.path) as f:
                stat = os.fstat(f.fileno())
                inode = (stat.st_dev, stat.st_ino)
                if self._inode is not None and (inode != self._inode or stat.st_size < self._offset):
                    self._offset, self._partial, restarted = 0, b"", True
                self._inode = inode
                self.missing, self.error = False, None
                if stat.st_size > self._offset:
                    f.seek(self._offset)
                    # Read what the file holds (f.read(n) would allocate n bytes up front), at most a chunk.
                    while chunk := f.read(min(_CHUNK_BYTES, max(stat.st_size - self._offset, 1 << 16))):
                        self._offset += len(chunk)
                        data = self._partial + chunk if self._partial else chunk
                        scalars, used = decode_records(data)
                        self._partial = data[used:]
                        pieces.append(scalars)
        except FileNotFoundError:
            if self._inode is not None:
                self.missing = True
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
        return concat(pieces), restarted


def concat(pieces: list[Scalars]) -> Scalars:
    pieces = [p for p in pieces if len(p) or p.rejected]
    if len(pieces) == 1:
        return pieces[0]
    out = Scalars()
    index: dict[str, int] = {}
    ids = []
    for piece in pieces:
        remap = np.array([index.setdefault(tag, len(index)) for tag in piece.tags] or [0], dtype=np.int64)
        ids.append(remap[piece.tag_ids])
        out.rejected.update(piece.rejected)
    out.tags = list(index)
    if pieces:
        out.tag_ids = np.concatenate(ids)
        out.steps = np.concatenate([p.steps for p in pieces])
        out.walls = np.concatenate([p.walls for p in pieces])
        out.values = np.concatenate([p.values for p in pieces])
    return out


def decode_records(data: bytes) -> tuple[Scalars, int]:
    """The scalars of the complete records at the start of ``data``, and how many bytes they span
    (with any damaged stretch skipped, see ``_frame_exact``: only an incomplete record is left over)."""
    framed = _frame_fast(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    rejected: Counter[str] = Counter()
    if framed is None:
        starts, used = _frame_exact(data, rejected)
        lengths = _gather(buf, starts, 8).view("<u8").ravel().astype(np.int64)
    else:
        starts, lengths = framed
        used = int(starts[-1] + _HEADER + lengths[-1] + _FOOTER) if len(starts) else 0
    scalars = _decode_events(data, buf, starts + _HEADER, lengths) if len(starts) else Scalars()
    scalars.rejected.update(rejected)
    return scalars, used


def _gather(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes at each of ``at`` as rows (one gather of rows of a sliding-window view);
    zero bytes past the end of ``buf``."""
    if len(buf) < width:
        buf = np.concatenate([buf, np.zeros(width - len(buf), dtype=np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(buf, width)
    last = len(windows) - 1
    rows = windows[np.minimum(at, last)]
    over = at > last
    if over.any():
        tail = np.concatenate([buf[last:], np.zeros(width, dtype=np.uint8)])
        shift = (at[over] - last)[:, None] + np.arange(width)
        rows[over] = tail[np.minimum(shift, len(tail) - 1)]
    return rows


def _frame_fast(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Record starts and data lengths, found from their headers and checked to chain exactly; None
    when in doubt."""
    n = len(data)
    if n < _HEADER + 1:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    # An Event begins with wall_time (field 1, fixed64: tag byte 0x09), 12 bytes after the record start.
    # Scanned in slices, so the temporaries stay small.
    step = 1 << 22
    found = []
    for piece in range(0, n, step):
        found.append(np.flatnonzero(buf[piece + _HEADER : piece + step + _HEADER] == 0x09) + piece)
        if len(found[-1]) > step // _MIN_RECORD:
            return None  # more candidates than records could fit (0x09 filler): the exact framing copes
    cand = np.concatenate(found)
    lengths = _gather(buf, cand, 8).view("<u8").ravel()
    plausible = lengths < _MAX_RECORD
    cand = cand[plausible]
    if not len(cand) or cand[0] != 0:
        return None
    ends = cand + (_HEADER + _FOOTER) + lengths[plausible].astype(np.int64)
    # Keep the first record and every candidate another one ends at; then they must form one chain.
    # A record's end is nearly always one of the next few candidates; the rest are searched for.
    keep = np.zeros(len(cand), dtype=bool)
    keep[0] = True
    unmatched = np.ones(len(cand), dtype=bool)
    for k in (1, 2, 3):
        hit = np.flatnonzero(ends[:-k] == cand[k:])
        keep[hit + k] = True
        unmatched[hit] = False
    rest = np.flatnonzero(unmatched)
    if len(rest):
        at = np.minimum(np.searchsorted(cand, ends[rest]), len(cand) - 1)
        keep[at[cand[at] == ends[rest]]] = True
    starts, ends = cand[keep], ends[keep]
    if len(starts) > 1 and not np.array_equal(ends[:-1], starts[1:]):
        return None
    if ends[-1] > n:
        starts, ends = starts[:-1], ends[:-1]
    done = int(ends[-1]) if len(ends) else 0
    if _complete_record_at(data, done):
        return None  # a whole record the headers did not find: let the exact framing take it
    return starts, ends - starts - (_HEADER + _FOOTER)


def _complete_record_at(data: bytes, at: int) -> bool:
    if len(data) - at < _HEADER:
        return False
    (length,) = struct.unpack_from("<Q", data, at)
    # Or damage (a length no record has, a wrong header CRC): the exact framing skips it.
    return length > _MAX_RECORD or at + _HEADER + length + _FOOTER <= len(data) or not _header_ok(data, at)


def _frame_exact(data: bytes, rejected: Counter[str]) -> tuple[np.ndarray, int]:
    """Record starts, record by record, and the offset reading stops at.

    A header that cannot start a record (a length above _MAX_RECORD, or an incomplete record whose
    header CRC is wrong: a writer never leaves one) is damage: it is counted, and reading goes on at
    the next header whose CRC holds, so the records after it are kept. Where none follows, all but
    the last few bytes are dropped: the carried-over tail stays small however long the damage runs.
    """
    starts = []
    at, n = 0, len(data)
    unpack = struct.unpack_from
    while n - at >= _HEADER:
        (length,) = unpack("<Q", data, at)
        end = at + _HEADER + length + _FOOTER
        if length <= _MAX_RECORD and (end <= n or _header_ok(data, at)):
            if end > n:
                break  # a record still being written
            starts.append(at)
            at = end
            continue
        rejected["damaged record header"] += 1
        found = _resync(data, at + 1)
        if found is None:
            at = max(at + 1, n - _HEADER)
            break
        at = found
    return np.array(starts, dtype=np.int64), at


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC32C = _crc_table()


def _masked_crc32c(rows: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC32C of each row of bytes (rows of the 8 length bytes of a header)."""
    crc = np.full(len(rows), 0xFFFFFFFF, dtype=np.uint32)
    for column in rows.T:
        crc = _CRC32C[(crc ^ column) & 0xFF] ^ (crc >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    return ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)


def _header_ok(data: bytes, at: int) -> bool:
    row = np.frombuffer(data, dtype=np.uint8, count=8, offset=at)[None, :]
    return int(_masked_crc32c(row)[0]) == struct.unpack_from("<I", data, at + 8)[0]


def _resync(data: bytes, start: int) -> int | None:
    """The first offset at or after ``start`` holding a plausible header with a correct CRC and an
    Event's first byte after it; searched in slices so the temporaries stay small."""
    buf = np.frombuffer(data, dtype=np.uint8)
    step = 1 << 20
    for at in range(start, len(buf) - _HEADER, step):
        cand = np.flatnonzero(buf[at + _HEADER : at + step + _HEADER] == 0x09) + at
        if not len(cand):
            continue
        rows = _gather(buf, cand, 12)
        lengths = np.ascontiguousarray(rows[:, :8]).view("<u8").ravel()
        stored = np.ascontiguousarray(rows[:, 8:]).view("<u4").ravel()
        good = (lengths <= _MAX_RECORD) & (_masked_crc32c(rows[:, :8]) == stored)
        if good.any():
            return int(cand[np.argmax(good)])
    return None


def _decode_events(data: bytes, buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Scalars:
    """Decode Events at ``starts`` (data offsets): the common scalar layout column-wise, the rest exactly."""
    fast, parsed = _decode_simple(buf, starts, lengths)
    slow = np.flatnonzero(~fast)
    tag_ids, steps, walls, values, order = [parsed[0]], [parsed[1]], [parsed[2]], [parsed[3]], [np.flatnonzero(fast)]
    tags = list(parsed[4])
    index = {tag: i for i, tag in enumerate(tags)}
    rejected: Counter[str] = Counter()
    extra: list[tuple[int, int, int, float, float]] = []
    for record in slow.tolist():
        start = int(starts[record])
        try:
            event = _parse_event(data, start, start + int(lengths[record]))
        except ValueError:
            rejected["bad event record"] += 1
            continue
        for tag, step, wall, value in event:
            extra.append((record, index.setdefault(tag, len(index)), step, wall, value))
    tags = list(index)
    if extra:
        columns = list(zip(*extra))
        order.append(np.array(columns[0], dtype=np.int64))
        tag_ids.append(np.array(columns[1], dtype=np.int64))
        steps.append(np.array(columns[2], dtype=np.int64))
        walls.append(np.array(columns[3], dtype=float))
        values.append(np.array(columns[4], dtype=float))
    out = Scalars(tags=tags, rejected=rejected)
    if len(order) == 1:
        out.tag_ids, out.steps, out.walls, out.values = tag_ids[0], steps[0], walls[0], values[0]
        return out
    sort = np.argsort(np.concatenate(order), kind="stable")
    out.tag_ids = np.concatenate(tag_ids)[sort]
    out.steps = np.concatenate(steps)[sort]
    out.walls = np.concatenate(walls)[sort]
    out.values = np.concatenate(values)[sort]
    return out


def _varints(buf: np.ndarray, at: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Varints at ``at`` of at most ``limit`` bytes each: (value, size); size 0 where longer.

    Byte by byte, each round only over the varints not yet ended (most take one or two bytes)."""
    last_byte = len(buf) - 1
    first = buf[at]
    value = (first & 0x7F).astype(np.uint64)
    size = np.ones(len(at), dtype=np.int64)
    going = np.flatnonzero(first >= 0x80)
    k = 1
    while len(going) and k < limit:
        byte = buf[np.minimum(at[going] + k, last_byte)]
        value[going] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        size[going] += 1
        going = going[byte >= 0x80]
        k += 1
    size[going] = 0
    return value.view(np.int64), size


def _decode_simple(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]]:
    """Decode Events laid out exactly as ``wall_time, step, summary{value{tag, simple_value}}``.

    Returns which records matched and, for those, (tag ids, steps, wall times, values, tags).
    """
    n = len(starts)
    no_tags: list[str] = []
    empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0), np.empty(0), no_tags)
    if not n:
        return np.zeros(0, dtype=bool), empty
    ends = starts + lengths
    # wall_time (0x09 + 8 bytes), then step (0x10 + varint)
    head = _gather(buf, starts, 10)
    ok = (lengths >= 22) & (head[:, 0] == 0x09) & (head[:, 9] == 0x10)
    step, step_size = _varints(buf, starts + 10, 10)
    ok &= step_size > 0
    # summary (0x2a), its one value (0x0a), the value's tag (0x0a), each with a one-byte length,
    # then the tag, then simple_value (0x15 + float): the lengths follow from where the record ends.
    at = starts + 10 + step_size
    tag_at = at + 6
    tag_len = ends - 5 - tag_at
    ok &= (tag_len >= 0) & (tag_len + 9 < 128)
    nested = _gather(buf, at, 6).astype(np.int64)
    ok &= (nested[:, 0] == 0x2A) & (nested[:, 2] == 0x0A) & (nested[:, 4] == 0x0A)
    ok &= (nested[:, 1] == tag_len + 9) & (nested[:, 3] == tag_len + 7) & (nested[:, 5] == tag_len)
    tail = _gather(buf, ends - 5, 5)
    ok &= tail[:, 0] == 0x15
    if not ok.any():
        return ok, empty
    good = np.flatnonzero(ok)
    walls = np.ascontiguousarray(head[good, 1:9]).view("<f8").ravel()
    values = np.ascontiguousarray(tail[good, 1:5]).view("<f4").ravel().astype(float)
    try:
        tag_ids, tags = _tag_ids(buf, tag_at[good], tag_len[good])
    except _Collision:
        return np.zeros(n, dtype=bool), empty
    return ok, (tag_ids, step[good], walls, values, tags)


def _tag_ids(buf: np.ndarray, at: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Number the distinct tags (byte strings at ``at`` of ``length``) in order of first appearance.

    A tag is read as little-endian words; its key is the words and the length. The distinct keys are
    found on the first rows (a log repeats the same few tags), the rest looked up among them.
    """
    words = _tag_words(buf, at, length)
    key = length.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for i, word in enumerate(words):
        key = (key ^ word) * np.uint64(0xBF58476D1CE4E5B9 + 2 * i)
    n = len(key)
    table = np.empty(0, dtype=np.uint64)  # distinct keys, sorted
    firsts = np.empty(0, dtype=np.int64)  # the first row of each
    found = np.zeros(n, dtype=bool)
    where = np.zeros(n, dtype=np.int64)
    sample = 4096
    todo = np.arange(n)
    while len(todo):
        head = todo[:sample]
        new, first = np.unique(key[head], return_index=True)
        table = np.concatenate([table, new])
        firsts = np.concatenate([firsts, head[first]])
        order = np.argsort(table, kind="stable")
        table, firsts = table[order], firsts[order]
        where[todo] = np.minimum(np.searchsorted(table, key[todo]), len(table) - 1)
        found[todo] = table[where[todo]] == key[todo]
        todo = todo[~found[todo]]
        sample *= 16
    # Same key, same tag: checked word by word against each key's first row.
    rep = firsts[where]
    same = length == length[rep]
    for word in words:
        same &= word == word[rep]
    if not same.all():
        raise _Collision
    appearance = np.argsort(firsts, kind="stable")
    rank = np.empty(len(table), dtype=np.int64)
    rank[appearance] = np.arange(len(table))
    tags = [bytes(buf[at[i] : at[i] + length[i]]).decode("utf-8", "replace") for i in firsts[appearance].tolist()]
    return rank[where], tags


class _Collision(Exception):
    """Two different tags with one key (never seen in practice): the exact parser takes the block."""


def _tag_words(buf: np.ndarray, at: np.ndarray, length: np.ndarray) -> list[np.ndarray]:
    """Each tag as little-endian 8-byte words, zero past its end (one gather of rows)."""
    width = -(-int(length.max()) // 8) * 8 if len(length) else 0
    if not width:
        return []
    block = _gather(buf, at, width)
    shortest = int(length.min())
    if shortest < width:  # zero the bytes past each tag's end (the words every tag fills need nothing)
        keep = shortest // 8 * 8
        block[:, keep:] *= np.arange(keep, width)[None, :] < length[:, None]
    words = block.view("<u8")
    return [words[:, i] for i in range(width // 8)]


def _parse_event(data: bytes, start: int, end: int) -> list[tuple[str, int, float, float]]:
    """Exact parse of one Event: its scalar (tag, step, wall time, value) points, possibly none."""
    wall, step, points = 0.0, 0, []
    for number, wire, value in fields(data, start, end):
        if number == 1 and wire == 1:
            (wall,) = struct.unpack_from("<d", data, value)
        elif number == 2 and wire == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5 and wire == 2:
            points = _parse_summary(data, *value)
    return [(tag, step, wall, v) for tag, v in points]


def _parse_summary(data: bytes, start: int, end: int) -> list[tuple[str, float]]:
    points = []
    for number, wire, span in fields(data, start, end):
        if number != 1 or wire != 2:
            continue
        tag, value = None, None
        for n, w, v in fields(data, *span):
            if n == 1 and w == 2:
                tag = data[v[0] : v[1]].decode("utf-8", "replace")
            elif n == 2 and w == 5:
                (value,) = struct.unpack_from("<f", data, v)
            elif n == 8 and w == 2:
                value = _parse_tensor(data, *v)
        if tag is not None and value is not None:
            points.append((tag, value))
    return points


def _parse_tensor(data: bytes, start: int, end: int) -> float | None:
    """The one number of a scalar float tensor (TensorFlow 2's summaries), or None."""
    dtype, values = 0, []
    content = None
    for number, wire, v in fields(data, start, end):
        if number == 1 and wire == 0:
            dtype = v
        elif number == 4 and wire == 2:
            content = data[v[0] : v[1]]
        elif number in (5, 6) and wire == 2:  # packed float_val / double_val
            fmt = "<f" if number == 5 else "<d"
            if (v[1] - v[0]) % struct.calcsize(fmt):
                raise ValueError("packed values not a whole number of floats")
            values += [x for (x,) in struct.iter_unpack(fmt, data[v[0] : v[1]])]
        elif number == 5 and wire == 5:
            values.append(struct.unpack_from("<f", data, v)[0])
        elif number == 6 and wire == 1:
            values.append(struct.unpack_from("<d", data, v)[0])
    if dtype not in _FLOAT_DTYPES:
        return None
    if content is not None:
        array = np.frombuffer(content, dtype=_FLOAT_DTYPES[dtype])
        return float(array[0]) if len(array) == 1 else None
    return float(values[0]) if len(values) == 1 else None


def add_scalars(series: CellSeries, scalars: Scalars) -> None:
    """Pivot scalar points into a cell's rows: per split, consecutive points at one step make one row.

    Tags map to canonical names (TRL writes ``train/rewards/chosen`` and ``eval/rewards/chosen``);
    the end-of-training values (``train/train_runtime``...) mark the cell finished.
    """
    series.rejected.update(scalars.rejected)
    scalars = _usable(series, scalars)
    if not len(scalars):
        return
    canon = [metrics.canonical(tag) for tag in scalars.tags]
    is_end = np.array([name in metrics.END_KEYS for _, name in canon] + [False])
    is_eval = np.array([split == "eval" for split, _ in canon] + [False])
    end_points = is_end[scalars.tag_ids]
    if end_points.any():
        # The Trainer logs the summary with its epoch: at the summary's step, an epoch point with
        # nothing else is part of the summary, not a train row of NaN.
        is_epoch = np.array([name == "epoch" for _, name in canon] + [False])[scalars.tag_ids]
        summary_steps = np.unique(scalars.steps[end_points])
        at_summary = np.isin(scalars.steps, summary_steps)
        real = ~is_epoch & ~end_points & ~is_eval[scalars.tag_ids]
        lone = at_summary & is_epoch & ~np.isin(scalars.steps, scalars.steps[real])
        end_points = end_points | lone
        # The summary's step is the last step trained (the report's step column reads it, as it reads
        # the step of trainer_state.json's summary record): a last train row may come before it.
        series.end_record = {
            "step": int(summary_steps.max()),
            **{
                scalars.tags[t]: v
                for t, v in zip(scalars.tag_ids[end_points].tolist(), scalars.values[end_points].tolist())
            },
        }
    for split, mask in (("train", ~is_eval[scalars.tag_ids] & ~end_points), ("eval", is_eval[scalars.tag_ids])):
        if not mask.any():
            continue
        ids, steps, walls, values = (a[mask] for a in (scalars.tag_ids, scalars.steps, scalars.walls, scalars.values))
        _add_split(series, "train" if split == "train" else "eval", canon, ids, steps, walls, values)


def _usable(series: CellSeries, scalars: Scalars) -> Scalars:
    """The points a series may take: a step in 0..2^53 (a 10-byte varint reads negative), a tag that
    is a metric name, and, per split, no more distinct names than metrics.MAX_NAMES (a file with a new
    tag per step would otherwise build a table of steps x tags). The rest are counted by reason."""
    if not len(scalars):
        return scalars
    stepped = (scalars.steps >= 0) & (scalars.steps <= int(metrics.MAX_STEP))
    named = np.array([metrics.valid_name(tag) for tag in scalars.tags] + [False])[scalars.tag_ids]
    checks = [("bad step", stepped), ("bad metric name", named)]
    if len(scalars.tags) > metrics.MAX_NAMES // 2:  # only a wide file can reach the cap
        admitted = _admitted(series, scalars.tags, scalars.tag_ids[stepped & named])
        checks.append((f"metric names past {metrics.MAX_NAMES} per split", admitted[scalars.tag_ids]))
    keep = np.ones(len(scalars), dtype=bool)
    for reason, passed in checks:
        dropped = int((keep & ~passed).sum())
        if dropped:
            series.rejected[reason] += dropped
        keep &= passed
    if keep.all():
        return scalars
    return Scalars(scalars.tags, scalars.tag_ids[keep], scalars.steps[keep], scalars.walls[keep], scalars.values[keep])


def _admitted(series: CellSeries, tags: list[str], ids: np.ndarray) -> np.ndarray:
    """Which tags fit each split's cap, in order of first appearance (names the split holds always do)."""
    admitted = np.zeros(len(tags) + 1, dtype=bool)
    _, first = np.unique(ids, return_index=True)
    pending: dict[metrics.Split, set[str]] = {"train": set(), "eval": set()}
    for tag in ids[np.sort(first)].tolist():
        split, name = metrics.canonical(tags[tag])
        target = series.split(split)
        if target.has(name) or name in pending[split]:
            admitted[tag] = True
        elif target.width + len(pending[split]) < metrics.MAX_NAMES:
            pending[split].add(name)
            admitted[tag] = True
    return admitted


def _add_split(
    series: CellSeries,
    split: metrics.Split,
    canon: list[tuple[metrics.Split, str]],
    ids: np.ndarray,
    steps: np.ndarray,
    walls: np.ndarray,
    values: np.ndarray,
) -> None:
    target = series.split(split)
    new_row = np.empty(len(steps), dtype=bool)
    new_row[0] = True
    np.not_equal(steps[1:], steps[:-1], out=new_row[1:])
    row_starts = np.flatnonzero(new_row)
    row_of = np.cumsum(new_row) - 1
    row_steps = steps[row_starts].astype(float)
    row_ends = np.append(row_starts[1:], len(steps)) - 1
    row_walls = walls[row_ends]
    names = [name for _, name in canon]
    present = np.flatnonzero(np.bincount(ids, minlength=len(names)))
    slot = np.zeros(len(names), dtype=np.int64)
    slot[present] = np.arange(len(present))
    # One scatter of every point into a rows x tags table, then a column per canonical name.
    table = np.full((len(present), len(row_starts)), np.nan)
    table[slot[ids], row_of] = values
    columns: dict[str, np.ndarray] = {}
    for tag, row in zip(present.tolist(), table):
        column = columns.get(names[tag])
        columns[names[tag]] = row if column is None else np.where(np.isnan(row), column, row)
    bad_points = ~np.isfinite(values)
    if bad_points.any():
        for tag in np.unique(ids[bad_points]).tolist():
            pick = bad_points & (ids == tag)
            step = float(steps[pick][0])
            key = (split, names[tag])
            series.first_non_finite[key] = min(step, series.first_non_finite.get(key, step))
    first = 0
    if len(target) and row_steps[0] == target.steps[-1]:
        # The rest of a row whose first points came in the last poll.
        target.update_last({name: float(column[0]) for name, column in columns.items() if not math.isnan(column[0])})
        first = 1
    if first == len(row_steps):
        return
    rest = slice(first, None)
    if np.all(np.diff(row_steps[rest]) > 0) and (not len(target) or row_steps[first] > target.steps[-1]):
        target.extend(row_steps[rest], row_walls[rest], {name: column[rest] for name, column in columns.items()})
    else:  # a resumed run's steps go back: row by row, so the series starts a new segment
        for index in range(first, len(row_steps)):
            row_values = {name: float(c[index]) for name, c in columns.items() if not math.isnan(c[index])}
            target.append(float(row_steps[index]), float(row_walls[index]), row_values)
    series.records += len(row_steps) - first


class TensorBoardRun:
    """A run's event files (the directory loader over ``EventFileReader``, the file loader): every file
    of the run read in order into one series; trainer_state.json beside them gives the run's plan.

    A TRL output_dir written with ``report_to="tensorboard"`` (or a bare logging dir): the event files
    are live (flushed at every log), trainer_state.json is written only at checkpoints."""

    @staticmethod
    def detect(path: Path) -> bool:
        """A folder with event files (in it or in its runs/*), or one event file."""
        return bool(event_files(path)) if path.is_dir() else path.name.startswith(EVENT_FILE_PREFIX)

    @classmethod
    def open(cls, path: Path, clock: Clock = SYSTEM) -> TensorBoardRun:  # nothing it reads waits on time
        return cls(path if path.is_dir() else path.parent)

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.series = CellSeries()
        self._files: dict[Path, EventFileReader] = {}
        self._plan = TrainerState(folder, history=False)

    @property
    def path(self) -> Path:
        return self.folder

    def watched(self) -> list[Path]:
        runs = self.folder / "runs"
        return list(dict.fromkeys([*([runs] if runs.is_dir() else []), *(f.parent for f in event_files(self.folder))]))

    def completions(self) -> CompletionsReader | None:
        return None

    def preview(self, max_bytes: int) -> CellSeries | None:
        return None

    def written_at(self) -> float | None:
        log = next(iter(reversed(event_files(self.folder))), None)
        if log is None:
            return self._plan.written_at()
        try:
            return log.stat().st_mtime
        except OSError:
            return None

    def poll(self) -> Batch:
        """Read the scalars appended to the run's event files, oldest file first."""
        for path in event_files(self.folder):
            self._files.setdefault(path, EventFileReader(path))
        polled = [reader.poll() for reader in self._files.values()]
        restarted = any(restarted for _, restarted in polled)
        if restarted:
            # A file was truncated or replaced: what was built from it is void; read everything again.
            self.series = CellSeries()
            self._files = {path: EventFileReader(path) for path in self._files}
            polled = [reader.poll() for reader in self._files.values()]
        changed = restarted
        for scalars, _ in polled:
            add_scalars(self.series, scalars)
            changed |= bool(len(scalars) or scalars.rejected)
        plan = self._plan.poll()
        return Batch(self.series, changed, restarted, self._error(), max_steps=plan.max_steps, factors=plan.factors)

    def _error(self) -> str | None:
        for reader in self._files.values():
            if reader.error:
                return reader.error
            if reader.missing:
                return f"{reader.path}: deleted"
        return None
