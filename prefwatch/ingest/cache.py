"""A columnar cache of finished metric logs, so that reopening a large grid does not parse it again.

Reading a million-line metrics.jsonl is decoding 250 MB of JSON; loading its columns back is
reading a tenth of that as float64. After a full read of a log that ended (an end-of-training
record) and is large enough to matter, its series is saved under the user's cache folder
(``$XDG_CACHE_HOME/prefwatch``, default ``~/.cache/prefwatch``), never beside the logs: a run
directory belongs to its jobs and may be read-only.

An entry is keyed by the log's resolved path and trusted only while the file's device, inode,
size and modification time are exactly what they were when it was saved: an append, a truncation
or a replacement (even to the same size) makes it a miss, and the log is read as usual. Entries
are written to a temporary file and renamed, so a crash leaves no half entry; any error (a
read-only or full cache folder, a damaged entry) is a miss, never a failure: the log is the truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from prefwatch.series import CellSeries, SplitSeries

FORMAT = 1
MIN_BYTES = 1 << 20  # smaller logs parse in milliseconds: not worth an entry
Identity = tuple[int, int, int, int]  # device, inode, size, mtime_ns


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prefwatch"


def identity(path: Path) -> Identity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def entry_path(log: Path) -> Path:
    digest = hashlib.sha256(str(Path(log).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir() / f"{digest}.npz"


def save(log: Path, seen: Identity, series: CellSeries) -> bool:
    """Store a fully read log's series, as read when the file had identity ``seen``; False when not stored."""
    if seen[2] < MIN_BYTES or identity(log) != seen:
        return False  # small, or changed while it was read: an entry would describe another file
    arrays: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "path": str(Path(log).resolve()),
        "identity": list(seen),
        "records": series.records,
        "rejected": dict(series.rejected),
        "end_record": series.end_record,
        "first_non_finite": [[split, name, step] for (split, name), step in series.first_non_finite.items()],
    }
    for split_name in ("train", "eval"):
        split = series.split(split_name)  # type: ignore[arg-type]
        names = split.names
        arrays[f"{split_name}_steps"] = split.steps
        arrays[f"{split_name}_times"] = split.times
        arrays[f"{split_name}_columns"] = np.stack([split.column(n) for n in names]) if names else np.empty((0, 0))
        meta[f"{split_name}_names"] = names
        meta[f"{split_name}_segments"] = split.segments
    target = entry_path(log)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".entry-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
                np.savez(f, **arrays)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
    except (OSError, ValueError, TypeError):
        return False  # a read-only or full cache folder, or a record that JSON cannot hold: no entry
    return True


def load(log: Path) -> tuple[CellSeries, Identity] | None:
    """The cached series of ``log`` and the identity it holds for, or None (no entry, or the file changed)."""
    now = identity(log)
    if now is None or now[2] < MIN_BYTES:
        return None
    try:
        with np.load(entry_path(log), allow_pickle=False) as entry:
            meta = json.loads(entry["meta"].tobytes())
            if meta.get("format") != FORMAT or tuple(meta["identity"]) != now:
                return None
            if meta.get("path") != str(Path(log).resolve()):
                return None
            series = CellSeries()
            for split_name in ("train", "eval"):
                names = meta[f"{split_name}_names"]
                columns = entry[f"{split_name}_columns"]
                split = SplitSeries.from_arrays(
                    entry[f"{split_name}_steps"],
                    entry[f"{split_name}_times"],
                    dict(zip(names, columns)),
                    meta[f"{split_name}_segments"],
                )
                setattr(series, split_name, split)
            series.records = int(meta["records"])
            series.rejected = Counter(meta["rejected"])
            series.end_record = meta["end_record"]
            series.first_non_finite = {(s, n): float(step) for s, n, step in meta["first_non_finite"]}
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return series, now
