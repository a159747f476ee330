"""Follow the folders of a grid's cells and say when anything in them changed.

The follower does not read logs; it only tells its owner "look again". Reading stays with the tail
readers (prefwatch.ingest.tail), which know offsets, partial lines and truncation.

Two ways to notice a change, used together:

- watchdog events (inotify on Linux, FSEvents on macOS): a change is seen within milliseconds;
- a fallback poll that compares (inode, size, mtime) of each folder's entries every ``interval``
  seconds, because some writers and file systems deliver no events. NFS is the common case: a job
  on another host appends to a file and the local kernel never hears of it. ``poll=True`` turns
  events off and polls every 0.25 s, for exactly that case.

Every callback runs on the follower's one background thread, so callbacks never overlap, and
changes that arrive while a callback runs are coalesced into one more callback. ``min_interval``
and ``burst`` make a leading-edge throttle (a token bucket): up to ``burst`` callbacks go out at
once, and the bucket refills one callback per ``min_interval``. A change after a quiet spell is
delivered at once; so are a few near-simultaneous changes (four cells logging the same second);
a sustained stream is delivered at most once per ``min_interval``. The owner may change
``min_interval`` while following (to hold a CPU budget). A GUI owner marshals the callback onto its own thread
(Textual: ``App.call_from_thread``).

This module imports no Textual.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

EVENT_FALLBACK_INTERVAL = 1.0
FORCED_POLL_INTERVAL = 0.25

Snapshot = dict[str, tuple[int, int, int] | None]


class Follower:
    """Calls ``on_change()`` from a background thread when a watched folder's contents change."""

    def __init__(
        self,
        paths: Iterable[Path],
        on_change: Callable[[], None],
        *,
        poll: bool = False,
        interval: float | None = None,
        min_interval: float = 0.0,
        burst: int = 1,
        settle: float = 0.0,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.on_change = on_change
        self.forced_poll = poll
        self.interval = (
            interval if interval is not None else (FORCED_POLL_INTERVAL if poll else EVENT_FALLBACK_INTERVAL)
        )
        self.min_interval = min_interval
        self.burst = max(1, burst)
        # After an event, wait this long before reading: a write makes several events (modify, close)
        # and cells that log the same second write within milliseconds; one callback then takes them all.
        self.settle = settle
        self.callbacks = 0
        self._tokens = float(self.burst)
        self._tokens_at = time.monotonic()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: object | None = None
        self._snapshot: Snapshot = {}
        self._last_call = float("-inf")
        self._due = float("inf")  # time.monotonic() of a callback asked for with nudge(after=...)
        self._nudged = False  # nudge() was called: the next callback is owed whatever the files say
        self._event_at = float("-inf")  # when the last change event woke the follower

    @property
    def mode(self) -> str:
        """ "events" when the OS delivers change events (with the fallback poll behind), else "polling"."""
        return "events" if self._observer is not None else "polling"

    def start(self) -> Follower:
        if self._thread is not None:
            return self
        self._snapshot = snapshot(self.paths)
        if not self.forced_poll:
            self._observer = _start_observer(self.paths, self._wake.set)
        self._thread = threading.Thread(target=self._run, name="prefwatch-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching; waits for a callback in progress to return (up to ``timeout`` seconds)."""
        self._stopping.set()
        self._wake.set()
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer, timeout)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def nudge(self, after: float = 0.0) -> None:
        """Ask for a callback soon although no file changed (state that depends on time or on processes).

        ``after`` > 0: a callback that many seconds from now, unless another callback comes first
        (any callback serves it: the owner asks again from that callback if it still needs one).
        Kept by the follower's own thread, no timer thread per request; asked from another thread
        than the callback's, it may come up to ``interval`` late."""
        if after > 0:
            self._due = min(self._due, time.monotonic() + after)
            return
        self._nudged = True
        self._wake.set()

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            woken = self._wake.wait(max(0.0, min(self.interval, self._due - time.monotonic())))
            streaming = False
            if woken:
                now = time.monotonic()
                # Leading edge: the first event after a quiet spell is read at once (a line logged
                # every few seconds is on screen within milliseconds). Within a stream of events,
                # wait ``settle`` so that one callback takes several writes.
                streaming = now - self._event_at < max(self.settle, self.min_interval)
                self._event_at = now
                if streaming and self.settle > 0:
                    self._stopping.wait(self.settle)
            if self._stopping.is_set():
                return
            self._wake.clear()
            nudged, self._nudged = self._nudged, False
            due = time.monotonic() >= self._due  # a callback asked for with nudge(after=...)
            current = snapshot(self.paths)
            if nudged or due:
                changed = True
            elif woken and not streaming:
                changed = True
            else:
                # The trailing events of writes already read (modify, then close) change nothing on
                # disk since the last look: no callback. The fallback poll lands here as well.
                changed = current != self._snapshot
            self._snapshot = current
            if changed and self._throttle():
                self._call()

    def _throttle(self) -> bool:
        """Wait for a token of the bucket (see the module's notes); False when stopped meanwhile."""
        while True:
            now = time.monotonic()
            if self.min_interval <= 0:
                return True
            refill = (now - self._tokens_at) / self.min_interval
            self._tokens = min(float(self.burst), self._tokens + refill)
            self._tokens_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            if self._stopping.wait((1.0 - self._tokens) * self.min_interval):
                return False

    def _call(self) -> None:
        self._last_call = time.monotonic()
        self._due = float("inf")  # this callback serves a pending nudge(after=...)
        self.callbacks += 1
        try:
            self.on_change()
        except Exception:  # a failing owner must not kill the follower: the next change tries again
            log.exception("follower callback failed")


def snapshot(paths: Iterable[Path]) -> Snapshot:
    """(inode, size, mtime) of every entry of every watched folder, one level deep.

    A sub-folder's own mtime changes when entries are added to it (a new checkpoint-N folder, a
    trainer_state.json written into it), so one level is enough to notice those without walking
    checkpoints' contents.
    """
    seen: Snapshot = {}
    for path in paths:
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    seen[entry.path] = _identity(entry)
        except NotADirectoryError:
            seen[str(path)] = _stat_identity(path)
        except OSError:
            seen[str(path)] = None
    return seen


def _identity(entry: os.DirEntry[str]) -> tuple[int, int, int] | None:
    try:
        stat = entry.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _stat_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _start_observer(paths: list[Path], wake: Callable[[], None]) -> object | None:
    """A running watchdog observer that calls ``wake`` on writes, or None where events are unavailable.

    Open and close-without-write events are filtered out: the monitor's own reads would otherwise
    wake it again, forever.
    """
    try:
        from watchdog import events
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Wake(events.FileSystemEventHandler):
        def on_any_event(self, event: events.FileSystemEvent) -> None:
            wake()

    wanted = [
        events.FileModifiedEvent,
        events.FileCreatedEvent,
        events.FileMovedEvent,
        events.FileDeletedEvent,
        events.FileClosedEvent,
        events.DirCreatedEvent,
        events.DirMovedEvent,
        events.DirDeletedEvent,
    ]
    observer = Observer()
    handler = Wake()
    scheduled = 0
    for path in dict.fromkeys(p if p.is_dir() else p.parent for p in paths):
        if not path.is_dir():
            continue
        try:
            observer.schedule(handler, str(path), recursive=False, event_filter=wanted)
            scheduled += 1
        except OSError as exc:  # e.g. the inotify watch limit: the poll still covers this folder
            log.info("no change events for %s: %s", path, exc)
    if not scheduled:
        return None
    try:
        observer.start()
    except OSError as exc:
        log.info("no change events (%s); polling instead", exc)
        _stop_observer(observer, 1.0)
        return None
    return observer


def _stop_observer(observer: object, timeout: float) -> None:
    observer.stop()  # type: ignore[attr-defined]
    observer.join(timeout)  # type: ignore[attr-defined]
