"""W&B run directories (what ``report_to="wandb"`` writes, offline or synced), read live.

A run folder ``wandb/offline-run-<time>-<id>/`` (``run-<time>-<id>/`` when synced) holds the run's
transaction log ``run-<id>.wandb``: a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB
blocks of records ``crc32 (4), length (2), type (1), data``, one logical record split over blocks
as FIRST/MIDDLE/LAST pieces; the CRC is zlib's crc32 seeded with the type byte), each record a
``wandb_internal.proto``'s ``Record`` protobuf. The framing is read here (wandb 0.30 removed its
Python reader; its Go core reads them now), and so are the few records prefwatch uses (run, config,
history, summary, exit), field by field (``protowire``): reading W&B runs needs no wandb package, and
opening one does not pay for importing it (half a second or more).

transformers' WandbCallback logs TRL's metrics as ``history`` records (``train/`` and ``eval/``
prefixes, ``train/global_step``, W&B's ``_step`` and ``_timestamp``); the end-of-training values
(``train_runtime``...) go to ``summary`` records only, and the settings (TrainingArguments, the
model's config, ``peft_config``) to ``config`` records.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import msgspec

from prefwatch.core import metrics
from prefwatch.files import safe
from prefwatch.files.rundir import CellState
from prefwatch.ingest.readers import protowire
from prefwatch.ingest.readers.store import Points, RunEnd, StoreBatch, StoreRun

# W&B's writer flushes the run file every few seconds (6-15 s seen): a run record missing for longer
# than this is missing for good.
SETTLED_SECONDS = 60.0
_FILE_HEADER = b":W&B\xe1\xbe\x00"  # ident, magic 0xBEE1, version 0
_HEADER = 7
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_SEEDS = [zlib.crc32(bytes([t])) for t in range(5)]
_decoder = msgspec.json.Decoder()


def run_files(path: Path) -> list[Path]:
    """The ``run-*.wandb`` files of a run folder, or of ``wandb/`` (its ``latest-run`` link left out)."""
    for pattern in ("run-*.wandb", "*run-*/run-*.wandb"):
        found = sorted(p for p in path.glob(pattern) if p.is_file() and not p.parent.is_symlink())
        if found:
            return found
    return []


# wandb_internal.proto's field numbers. Record: num (1), then one of its record types (the oneof
# ``record_type``), control (16), uuid (19), _info (200). Of the record types only these are read:
_HISTORY, _SUMMARY, _CONFIG, _RUN, _EXIT = 2, 3, 5, 17, 18
_NOT_RECORD_TYPES = frozenset({1, 16, 19, 200})
# ConfigItem, SummaryItem, HistoryItem: key (1), nested_key (2, repeated), value_json (16).
# ConfigRecord and SummaryRecord: update (1, repeated); HistoryRecord: item (1, repeated).
# RunRecord: run_id (1), config (4, a ConfigRecord), display_name (8), start_time (17, a Timestamp:
# seconds 1, nanos 2). RunExitRecord: exit_code (1, int32).
_ITEMS = 1
_RUN_ID, _RUN_CONFIG, _RUN_NAME, _RUN_START = 1, 4, 8, 17
_EXIT_CODE = 1


def record_type(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """A Record's type (the field number of its ``record_type``; 0 for none) and the spans of that
    field's message (more than one only where a writer split it: protobuf merges them). The last
    record type set wins, as in protobuf's oneof. Raises ValueError for a malformed record."""
    kind, spans = 0, list[tuple[int, int]]()
    for number, wire, value in protowire.fields(data, 0, len(data)):
        if number in _NOT_RECORD_TYPES or wire != 2:
            continue
        if number != kind:
            kind, spans = number, []
        spans.append(value)
    return kind, spans


def items(data: bytes, spans: list[tuple[int, int]], field: int = _ITEMS) -> list[tuple[str, str]]:
    """(key, value_json) of the repeated item field ``field`` of the messages at ``spans``: the key is
    ``key``, or ``nested_key`` joined by ``/``. Raises ValueError for a malformed message.

    Every history row goes through here, so its loops are written out (one-byte varints, the
    common case, read inline): about 3x faster than going through ``protowire.fields``."""
    varint, skip = protowire.varint, protowire.skip
    wanted = field << 3 | 2
    out = []
    for start, end in spans:
        at = start
        while at < end:
            tag = data[at]
            tag, at = (tag, at + 1) if tag < 0x80 else varint(data, at, end)
            if tag != wanted:
                at = skip(data, at, end, tag & 7)
                continue
            length, at = varint(data, at, end)
            stop = at + length
            if stop > end:
                raise ValueError("truncated field")
            key, nested, value = "", [], ""
            while at < stop:
                tag = data[at]
                tag, at = (tag, at + 1) if tag < 0x80 else varint(data, at, stop)
                if tag & 7 != 2:
                    at = skip(data, at, stop, tag & 7)
                    continue
                length = data[at] if at < stop else 0x80
                length, at = (length, at + 1) if length < 0x80 else varint(data, at, stop)
                after = at + length
                if after > stop:
                    raise ValueError("truncated field")
                number = tag >> 3
                if number == 1:
                    key = data[at:after].decode("utf-8")
                elif number == 2:
                    nested.append(data[at:after].decode("utf-8"))
                elif number == 16:
                    value = data[at:after].decode("utf-8")
                at = after
            out.append((key or "/".join(nested), value))
    return out


class RunInfo(msgspec.Struct):
    """What the run record says of the run."""

    run_id: str = ""
    name: str = ""
    start: float = 0.0
    config: list[tuple[str, str]] = msgspec.field(default_factory=list)


def run_info(data: bytes, spans: list[tuple[int, int]]) -> RunInfo:
    """The RunRecord at ``spans``. Raises ValueError for a malformed message."""
    info = RunInfo()
    for span in spans:
        for number, wire, value in protowire.fields(data, *span):
            if wire != 2:
                continue
            if number == _RUN_ID:
                info.run_id = protowire.text(data, value)
            elif number == _RUN_NAME:
                info.name = protowire.text(data, value)
            elif number == _RUN_CONFIG:
                info.config += items(data, [value])
            elif number == _RUN_START:
                seconds = nanos = 0
                for n, w, v in protowire.fields(data, *value):
                    if n == 1 and w == 0:
                        seconds = protowire.signed(v)
                    elif n == 2 and w == 0:
                        nanos = protowire.signed(v, 32)
                info.start = seconds + nanos / 1e9
    return info


def exit_code(data: bytes, spans: list[tuple[int, int]]) -> int:
    """The RunExitRecord's exit code (int32). Raises ValueError for a malformed message."""
    code = 0
    for span in spans:
        for number, wire, value in protowire.fields(data, *span):
            if number == _EXIT_CODE and wire == 0:
                code = protowire.signed(value, 32)
    return code


def store_run(path: Path) -> StoreRun:
    """A run's name and settings, from the records before its first history row."""
    name, config, run_id, start = path.parent.name, {}, _folder_id(path.parent.name), 0.0
    ready = False
    framing = Framing(path)
    for data in framing.read():
        try:
            kind, spans = record_type(data)
            if kind == _RUN:  # wandb.init(config=...) is kept in the run record; later updates in config records
                info = run_info(data, spans)
                ready = True
                name = info.name or name
                config.update(_values(info.config))
                run_id = info.run_id or run_id
                start = info.start
            elif kind == _CONFIG:
                config.update(_values(items(data, spans)))
            elif kind == _HISTORY:
                break
        except ValueError:
            continue
    reader = WandbReader(path)
    run = StoreRun(name, reader, config, key=str(path), group=path.parent.parent.name, start=start, run_id=run_id)
    run.ready = ready or _settled(path)
    return run


def _settled(path: Path) -> bool:
    """A run file without its run record that has not changed for a while: a run that died starting
    (shown under its folder's name rather than left out)."""
    try:
        return time.time() - path.stat().st_mtime > SETTLED_SECONDS
    except OSError:
        return True


def _folder_id(folder: str) -> str:
    """The run id in a run folder's name: ``offline-run-20261207_175313-6wcxbafm`` -> ``6wcxbafm``."""
    return folder.rpartition("-")[2]


def _values(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``key`` -> decoded ``value_json`` of config or summary items (an item whose value is not JSON left out)."""
    out = {}
    for key, value in pairs:
        try:
            out[key] = json.loads(value)
        except ValueError:
            continue
    return out


class Framing:
    """The logical records of a growing ``.wandb`` file, each returned once, by byte offset.

    A record not yet written whole stays for the next read. A record whose CRC does not match with
    more data after it is damaged: it is counted and skipped to the next block, as LevelDB does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # where the next logical record starts (0: before the file header)
        self.damaged = 0
        self.more = False  # the last read stopped at its size limit
        self._inode: tuple[int, int] | None = None

    def read(self, max_bytes: int = 1 << 25) -> list[bytes]:
        """Logical records appended since the last read, from at most ``max_bytes`` of the file (more
        only for one record larger than that); ``more`` says whether the file holds more after them.
        Raises OSError when the file cannot be read."""
        with safe.open_read(self.path) as f:
            stat = os.fstat(f.fileno())
            inode = (stat.st_dev, stat.st_ino)
            if self._inode is not None and (inode != self._inode or stat.st_size < self.offset):
                raise _Restarted
            self._inode = inode
            f.seek(self.offset)
            data = f.read(max(0, min(max_bytes, stat.st_size - self.offset)))  # not a max_bytes buffer for a small file
            self.more = self.offset + len(data) < stat.st_size
        records = self._frame(data)
        if not records and self.more:  # a record longer than max_bytes: read it whole
            return self.read(stat.st_size - self.offset + 1)
        return records

    def _frame(self, data: bytes) -> list[bytes]:
        base, at, records = self.offset, 0, []
        if base == 0:
            if len(data) < _HEADER:
                return []
            if data[:_HEADER] != _FILE_HEADER:
                raise ValueError("not a W&B transaction log (bad header)")
            at = _HEADER
        pieces: list[bytes] = []
        start = at
        while True:
            left = _BLOCK - (base + at) % _BLOCK
            if left < _HEADER:  # the block's zero trailer
                if at + left > len(data):
                    break
                at += left
                continue
            if at + _HEADER > len(data):
                break
            crc, length, kind = struct.unpack_from("<IHB", data, at)
            if _HEADER + length > left:  # a piece never crosses its block: a damaged length
                if at + left > len(data):
                    break  # the block's rest is not written yet
                self.damaged += 1
                at += left
                pieces, start = [], at
                continue
            end = at + _HEADER + length
            if end > len(data):
                break
            body = data[at + _HEADER : end]
            if kind > _LAST or zlib.crc32(body, _SEEDS[kind]) != crc:
                if end == len(data):
                    break  # perhaps still being written
                self.damaged += 1
                at += left  # on to the next block
                pieces, start = [], at
                continue
            at = end
            if kind == _FULL:
                records.append(body)
                pieces, start = [], at
            elif kind == _FIRST:
                pieces = [body]
            elif pieces and kind in (_MIDDLE, _LAST):
                pieces.append(body)
                if kind == _LAST:
                    records.append(b"".join(pieces))
                    pieces, start = [], at
            else:  # a piece without its FIRST
                self.damaged += 1
                start = at
        self.offset = base + start
        return records


def _decode_rows(rows: list[tuple[list[str], list[str]]], points: Points) -> list[dict[str, Any]]:
    """The history rows as dicts, every value decoded in one JSON parse (item by item only when that fails)."""
    values = [v for _, row_values in rows for v in row_values]
    try:
        decoded = _decoder.decode(("[" + ",".join(values) + "]").encode())
    except msgspec.DecodeError:
        decoded = []
        for value in values:
            try:
                decoded.append(json.loads(value))  # NaN and Infinity, as Python's json writes them
            except ValueError:
                decoded.append(None)
                points.rejected["bad W&B value"] += 1
    out, at = [], 0
    for keys, _ in rows:
        out.append(dict(zip(keys, decoded[at : at + len(keys)])))
        at += len(keys)
    return out


class _Restarted(Exception):
    """The file was replaced or truncated."""


class WandbReader:
    """One run's history rows and its end-of-training summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: str | None = None
        self._framing = Framing(path)
        self._damaged = 0
        self._end: dict[str, float] | None = None
        self._ended: RunEnd | None = None

    def fresh(self) -> WandbReader:
        return WandbReader(self.path)

    def watched(self) -> list[Path]:
        return [self.path.parent]

    def poll(self) -> StoreBatch:
        try:
            records = self._framing.read()
        except _Restarted:
            self._framing, self._damaged, self._end, self._ended = Framing(self.path), 0, None, None
            batch = self.poll()
            batch.restarted = True
            return batch
        except (OSError, ValueError) as exc:
            self.error = f"{self.path}: {getattr(exc, 'strerror', None) or exc}"
            return StoreBatch(Points().scalars())
        self.error = None
        points, end = Points(), None
        if self._framing.damaged > self._damaged:
            points.rejected["damaged W&B record"] += self._framing.damaged - self._damaged
            self._damaged = self._framing.damaged
        rows: list[tuple[list[str], list[str]]] = []  # (keys, JSON values) of each history row
        for data in records:
            try:
                kind, spans = record_type(data)
                if kind == _HISTORY:
                    pairs = items(data, spans)
                    rows.append(([k for k, _ in pairs], [v for _, v in pairs]))
                elif kind == _EXIT:  # wandb.finish(): the process's exit code
                    code = exit_code(data, spans)
                    state = CellState.FINISHED if code == 0 else CellState.FAILED
                    self._ended = RunEnd(state, code, f"W&B exit record (exit code {code})")
                elif kind == _SUMMARY:  # every log updates the summary: only the end values are looked at
                    wanted = [(k, v) for k, v in items(data, spans) if k in metrics.END_KEYS]
                    found = {k: float(v) for k, v in _values(wanted).items() if isinstance(v, (int, float))}
                    if found:
                        end = {**(end or {}), **found}
            except ValueError:
                points.rejected["bad W&B record"] += 1
        for row in _decode_rows(rows, points):
            step = row.get("train/global_step", row.get("_step"))
            if not isinstance(step, (int, float)):
                points.rejected["W&B history row without a step"] += 1
                continue
            wall = row.get("_timestamp")
            points.add_row(row, int(step), float(wall) if isinstance(wall, (int, float)) else float("nan"))
        if end:
            self._end = {**(self._end or {}), **end}
        batch = StoreBatch(points.scalars(), end=self._end if end else None, more=self._framing.more)
        batch.ended = self._ended
        return batch
