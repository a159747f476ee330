"""A tracker's SQLite store, read without touching it (trackio and MLflow keep their stores in SQLite).

Every read opens its own connection, runs its queries and closes it again: nothing is held between
two polls. How it opens depends on what the file is and who else has it open:

  rollback journal (MLflow)   ``mode=ro``. A read takes SQLite's shared lock for the length of a query
                              and releases it; a writer waits that long at most (MLflow's busy timeout
                              is 20 s), and a read-only connection creates no file.
  no header yet (just made)   ``mode=ro&immutable=1``, checked as below: a lock of ours on a file a WAL
                              writer is making would keep its log behind when it closes.
  WAL (trackio), no log       ``mode=ro&immutable=1``: the database file holds every commit. Immutable
  or an empty one             reads take no lock and create no ``-shm``/``-wal`` file (an ordinary
                              read-only connection to a WAL database creates both where the folder is
                              writable, leaves them behind, and cannot open the file on a read-only
                              mount at all). The file's identity before and after the read must agree,
                              else the read is done again: a writer that checkpoints meanwhile is seen.
  WAL with a live writer      the same immutable read of the database file: rows still in the writer's
                              log arrive when it checkpoints (trackio does at the end of every write).
                              A connection of ours open while the writer closes would keep SQLite from
                              deleting the log and its index: they would stay behind.
  WAL left by a dead writer   ``mode=ro&readonly_shm=1``: the log is read through its existing index,
                              which is opened read-only (never created, never written).

A writer "has it open" when some process holds the lock every SQLite connection keeps on the index
file (``-shm``) while it is open. A log nobody holds is taken for a dead writer's only once neither it
nor its index has changed for ``SETTLED_SECONDS``: trackio opens a connection for each write and closes
it after, so between two of its writes nobody holds the lock for a moment while the log, not yet
checkpointed, is still there. Read through the index in that moment, our connection would be open when
trackio's closes, and the log and its index would stay behind for good.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import struct
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from prefwatch.files import safe

T = TypeVar("T")

HEADER = b"SQLite format 3\x00"
# The byte of the -shm file on which every open connection holds a shared lock (SQLite's unix VFS:
# UNIX_SHM_DMS, after the 8 WAL locks at offset 120).
_SHM_DMS = 128
READ_TRIES = 4  # immutable reads of a file that changed meanwhile: done again up to this many times
BUSY_SECONDS = 0.5  # a rollback-journal writer's commit holds readers off for milliseconds; else next poll
# A WAL log that nobody holds and nothing has touched for this long is a dead writer's: a live writer
# that reopens between writes (trackio) touches it within milliseconds; its rows wait this long at most.
SETTLED_SECONDS = 2.0


class SchemaDrift(sqlite3.DatabaseError):
    """The store lacks a table or column the reader needs: another version of the tracker wrote it."""


class Busy(Exception):
    """The store was being written throughout the read: nothing is wrong, read it at the next poll."""


def _stat(path: Path | str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _identity(path: Path) -> tuple[Any, ...]:
    """What changes when a writer touches the database or its log (a checkpoint writes the database)."""
    out: list[Any] = []
    for name in (str(path), f"{path}-wal"):
        s = _stat(name)
        out.append(None if s is None else (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(out)


def header(path: Path) -> bytes:
    """The first 100 bytes of a regular file (never blocks on a named pipe); OSError otherwise."""
    with safe.open_read(path) as f:
        return f.read(100)


def is_sqlite(path: Path) -> bool:
    """Whether a file starts with SQLite's 16-byte header (an empty ``.db`` file, just created, counts too)."""
    try:
        head = header(path)
    except OSError:
        return False
    return head[:16] == HEADER or (not head and path.suffix == ".db")


def _live(path: Path) -> bool:
    """Whether another process has the WAL database open (holds its lock on the -shm index file)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, _SHM_DMS, 1, 0)
        held = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0]
        return held != fcntl.F_UNLCK
    except OSError:
        return True  # cannot tell: do not open it the way that could keep its log behind
    finally:
        os.close(fd)


def _settled(*stats: os.stat_result) -> bool:
    """Whether none of these files was modified in the last ``SETTLED_SECONDS`` (by the wall clock,
    which is what a file's modification time is stamped with)."""
    now = time.time()
    return all(now - s.st_mtime >= SETTLED_SECONDS for s in stats)


def _mode(path: Path) -> tuple[str, bool]:
    """The URI options for reading ``path`` now, and whether the read must be checked against a change."""
    head = header(path)
    if len(head) < 100:  # just created, no header yet: nothing to lock; a WAL writer may be writing it
        return "mode=ro&immutable=1", True
    if head[18] != 2:  # a rollback journal
        return "mode=ro", False
    wal, shm = _stat(f"{path}-wal"), _stat(f"{path}-shm")
    if wal is None or wal.st_size == 0 or shm is None or _live(path) or not _settled(wal, shm):
        return "mode=ro&immutable=1", True
    return "mode=ro&readonly_shm=1", False


def wal_pending(path: Path) -> bool:
    """Whether a WAL database has commits in its log that an immutable read does not see yet."""
    wal = _stat(f"{path}-wal")
    return wal is not None and wal.st_size > 0


def read(path: Path, query: Callable[[sqlite3.Connection], T]) -> T:
    """``query(connection)`` on one consistent, read-only view of the database (see the module's notes).

    Raises sqlite3.Error and OSError as SQLite and the file system report them, and Busy when the
    file kept changing under every try."""
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}"
    for _ in range(READ_TRIES):
        mode, check = _mode(path)
        before = _identity(path) if check else None
        connection = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=BUSY_SECONDS, check_same_thread=False)
        try:
            result = query(connection)
        except sqlite3.DatabaseError:
            if check and _identity(path) != before:
                continue  # a checkpoint wrote the file meanwhile: what was read is void
            raise
        finally:
            connection.close()
        if not check or _identity(path) == before:
            return result
    raise Busy(f"{path}: written throughout the read")


def tables(path: Path) -> dict[str, set[str]]:
    """Each table of a SQLite file with its columns; {} for a file that is not SQLite (by its header).

    Raises sqlite3.Error for a SQLite file that cannot be read (damaged, locked by a migration)."""
    if not is_sqlite(path):
        return {}

    def schema(connection: sqlite3.Connection) -> dict[str, set[str]]:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: {row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')} for name in names}

    return read(path, schema)


def is_locked(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def describe(path: Path, exc: BaseException, known: str = "") -> str:
    """One line for an error reading a store: SQLite's own words, the file, and what they mean."""
    text = str(exc)
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    if "malformed" in text or "not a database" in text or "disk I/O" in text:
        return f"{path}: damaged (SQLite: {text})"
    if isinstance(exc, SchemaDrift) or "no such column" in text or "no such table" in text:
        knows = f"; this reader knows {known}" if known and not isinstance(exc, SchemaDrift) else ""
        return f"{path}: schema drift (SQLite: {text}){knows}"
    if "unable to open" in text:
        return f"{path}: SQLite cannot open it read-only ({text})"
    return f"{path}: SQLite: {text}"


class SqliteFollower:
    """The rows a store appends to one table, found by rowid above the last one read.

    Each poll is one read (see ``read``): no connection outlives it. A replaced file (another inode)
    or a rowid that falls below what was read (rows deleted, the file rebuilt) means the store
    restarted: the caller reads it again from the start. ``rows_read`` counts what was read, for
    messages about a store that stops being readable part-way.
    """

    BATCH = 200_000  # rows per query: a reader never holds a read lock for long

    def __init__(self, path: Path, known: str = "") -> None:
        self.path = path
        self.known = known  # the tracker and schema this reader was written for, named in schema errors
        self.error: str | None = None
        self.last_rowid = 0
        self.rows_read = 0
        self._inode: tuple[int, int] | None = None

    def rows(self, table: str, query: str, params: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], bool]:
        """New rows of ``query`` on ``table`` (its first column the rowid, filtered by ``rowid > ?``
        as its first parameter, ordered by rowid, ``LIMIT ?`` last), and whether the store restarted."""
        out: list[tuple[Any, ...]] = []

        def take(connection: sqlite3.Connection, top: int) -> None:
            while True:
                batch = connection.execute(query, (self.last_rowid, *params, self.BATCH)).fetchall()
                out.extend(batch)
                self.rows_read += len(batch)
                if batch:
                    self.last_rowid = batch[-1][0]
                if len(batch) < self.BATCH:
                    return

        return out, self._read(table, take)

    def numbers(self, table: str, query: str, params: tuple[Any, ...], width: int) -> tuple[np.ndarray, bool]:
        """New rows of a query of ``width`` numeric columns, as one float array made in C from the cursor
        (at a million points a tuple per row costs more than the query). The query takes a window of
        rowids: ``rowid > ?1 AND rowid <= ?2``, ordered by rowid; ``params`` follow from ?3."""
        chunks: list[np.ndarray] = []

        def take(connection: sqlite3.Connection, top: int) -> None:
            while self.last_rowid < top:
                upto = min(top, self.last_rowid + self.BATCH)
                cursor = connection.execute(query, (self.last_rowid, upto, *params))
                chunks.append(np.fromiter(itertools.chain.from_iterable(cursor), dtype=float).reshape(-1, width))
                self.rows_read += len(chunks[-1])
                self.last_rowid = upto

        restarted = self._read(table, take)
        return (np.concatenate(chunks) if chunks else np.empty((0, width))), restarted

    def _read(self, table: str, take: Callable[[sqlite3.Connection, int], None]) -> bool:
        """Notice a restart, then ``take(connection, max rowid)`` in one read; errors are kept in ``error``."""
        restarted = False
        last, count = self.last_rowid, self.rows_read

        def query(connection: sqlite3.Connection) -> None:
            nonlocal restarted
            self.last_rowid, self.rows_read = last, count  # a read done again starts where this one did
            (top,) = connection.execute(f"SELECT max(rowid) FROM {table}").fetchone()
            # Below what was read: rows deleted or the file rebuilt; unless the newest rows are only in
            # a live writer's log, which this read does not see yet.
            if (top or 0) < self.last_rowid and not wal_pending(self.path):
                restarted = True
            if restarted:
                self.last_rowid = self.rows_read = 0
            take(connection, top or 0)

        try:
            s = self.path.stat()
            inode = (s.st_dev, s.st_ino)
            restarted = self._inode is not None and inode != self._inode
            read(self.path, query)
            self._inode = inode
            self.error = None
        except Busy:
            pass  # written throughout: read at the next poll
        except OSError as exc:
            self.error = describe(self.path, exc)
        except sqlite3.Error as exc:
            if not is_locked(exc):  # a writer's commit: read at the next poll
                self.error = self._damage(exc)
        return restarted

    def _damage(self, exc: sqlite3.Error) -> str:
        said = describe(self.path, exc, self.known)
        if self.rows_read:
            return f"{said}; {self.rows_read} rows read before it"
        return f"{said}; nothing of this run could be read"
