"""Follow the folders of a grid's cells and say when anything in them changed.

The follower does not read logs; it only tells its owner "look again". Reading stays with the tail
readers (prefwatch.ingest.tail), which know offsets, partial lines and truncation.

Two ways to notice a change, used together:

- watchdog events (inotify on Linux, FSEvents on macOS): a change is seen within milliseconds;
- a fallback poll that compares (inode, size, mtime) of each folder's entries every ``interval``
  seconds, because some writers and file systems deliver no events. NFS is the common case: a job
  on another host appends to a file and the local kernel never hears of it. ``poll=True`` turns
  events off and polls every 0.25 s, for exactly that case. With events on, the fallback poll of a
  large grid (a thousand folders) spaces itself so that it costs at most FALLBACK_SHARE of a core.

The follower also keeps which watched folders changed (from the events, or the poll's comparison):
``take_changed()`` hands them to the owner, who then reads those cells only, not every log of the
grid. None means "anything may have changed" (a nudge, forced polling where a file's attributes
may be stale until it is opened, an event outside the watched folders): read everything.

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
from typing import Any

from prefwatch.core.clock import SYSTEM, Waits

log = logging.getLogger(__name__)

EVENT_FALLBACK_INTERVAL = 1.0
FORCED_POLL_INTERVAL = 0.25
# With events on, the fallback poll may take at most this share of a core: a thousand folders took
# 12 ms a look (0.012 of a core at one look a second, more than the rest of an idle monitor);
# spaced by its own cost, they are looked at every 2-3 s. 64 folders still are every second.
FALLBACK_SHARE = 0.005

Identity = tuple[int, int, int] | None
# Each watched path's entries (name -> inode, size, mtime), or the path's own identity for a file.
Snapshot = dict[str, dict[str, Identity] | Identity]


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
        clock: Waits = SYSTEM,
    ) -> None:
        self.clock = clock  # what the bucket, the settle window and delayed nudges are timed by
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
        self.looks = 0  # looks at every watched folder (the fallback poll's, or forced polling's)
        self._tokens = float(self.burst)
        self._tokens_at = self.clock.monotonic()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: object | None = None
        self._snapshot: Snapshot = {}
        self._last_call = float("-inf")
        self._due = float("inf")  # clock.monotonic() of a callback asked for with nudge(after=...)
        self._nudged = False  # nudge() was called: the next callback is owed whatever the files say
        self._event_at = float("-inf")  # when the last change event woke the follower
        self._watched = {str(p) for p in self.paths}
        self._changed: set[Path] | None = set()  # watched paths changed since take_changed(); None: any
        self._changed_lock = threading.Lock()
        self._fallback_every = self.interval  # the fallback poll's spacing (see FALLBACK_SHARE)
        self._looked_at = self.clock.monotonic()

    @property
    def mode(self) -> str:
        """ "events" when the OS delivers change events (with the fallback poll behind), else "polling"."""
        return "events" if self._observer is not None else "polling"

    def start(self) -> Follower:
        if self._thread is not None:
            return self
        self._snapshot = snapshot(self.paths)
        if not self.forced_poll:
            self._observer = _start_observer(self.paths, self._event)
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

    def watch(self, paths: Iterable[Path]) -> None:
        """Watch these folders too (cells that appeared after the follower started); called from the
        follower's own callback or any thread. New folders get change events where the OS gives them,
        and are polled in any case."""
        new = [Path(p) for p in paths if str(p) not in self._watched]
        if not new:
            return
        self._watched |= {str(p) for p in new}
        self.paths = [*self.paths, *new]
        if self._observer is not None:
            _schedule(self._observer, new, getattr(self._observer, "wake_handler", None))
        self.nudge()

    def nudge(self, after: float = 0.0, files: bool = True) -> None:
        """Ask for a callback soon although no file changed (state that depends on time or on processes).

        ``after`` > 0: a callback that many seconds from now, unless another callback comes first
        (any callback serves it: the owner asks again from that callback if it still needs one).
        Kept by the follower's own thread, no timer thread per request; asked from another thread
        than the callback's, it may come up to ``interval`` late. ``files``: whether the owner
        should read every file again (``take_changed()`` says None); False for a clock's tick."""
        if files:
            self._mark(None)
        if after > 0:
            self._due = min(self._due, self.clock.monotonic() + after)
            return
        self._nudged = True
        self._wake.set()

    def take_changed(self) -> set[Path] | None:
        """The watched paths that changed since the last call (None: any may have), and start afresh."""
        with self._changed_lock:
            changed, self._changed = self._changed, set()
        return None if self.forced_poll else changed

    def _mark(self, paths: Iterable[Path] | None) -> None:
        with self._changed_lock:
            if paths is None or self._changed is None:
                self._changed = None
            else:
                self._changed.update(paths)

    def _event(self, where: Iterable[str]) -> None:
        """A change event about these file or folder paths: mark the watched path each belongs to."""
        marked: list[Path] | None = []
        for path in where:
            if path in self._watched:
                marked.append(Path(path))  # type: ignore[union-attr]
                continue
            parent = os.path.dirname(path)
            if parent not in self._watched:
                marked = None  # somewhere the follower does not know: read everything
                break
            marked.append(Path(parent))  # type: ignore[union-attr]
        self._mark(marked)
        self._wake.set()

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            woken = self._wake.wait(max(0.0, min(self.interval, self._due - self.clock.monotonic())))
            self.step(woken)

    def step(self, woken: bool) -> None:
        """One turn of the follower's loop: after ``woken`` (a change event or a nudge arrived) or a
        timeout, look at the folders and call back if the owner has something to read.

        The background thread runs it; a test may run it itself on a follower never started, with
        a FakeClock, to see the settle window and the bucket decide without waiting."""
        streaming = False
        if woken:
            now = self.clock.monotonic()
            # Leading edge: the first event after a quiet spell is read at once (a line logged
            # every few seconds is on screen within milliseconds). Within a stream of events,
            # wait ``settle`` so that one callback takes several writes.
            streaming = now - self._event_at < max(self.settle, self.min_interval)
            self._event_at = now
            if streaming and self.settle > 0:
                self.clock.wait(self._stopping, self.settle)
        if self._stopping.is_set():
            return
        self._wake.clear()
        nudged, self._nudged = self._nudged, False
        due = self.clock.monotonic() >= self._due  # a callback asked for with nudge(after=...)
        if woken and self._observer is not None:
            # Events say where: look at those folders only (the snapshot stays current, so the
            # fallback poll reports only what no event did).
            with self._changed_lock:
                marked = None if self._changed is None else list(self._changed)
            differs = self._look(marked)
        else:
            differs = self._look() if self._fallback_due() else False
        if nudged or due:
            changed = True
        elif woken and not streaming:
            changed = True
        else:
            # The trailing events of writes already read (modify, then close) change nothing on
            # disk since the last look: no callback. The fallback poll lands here as well.
            changed = differs
        if changed and self._throttle():
            self._call()

    def _fallback_due(self) -> bool:
        return (
            self.forced_poll
            or self._observer is None
            or self.clock.monotonic() - self._looked_at >= self._fallback_every
        )

    def _look(self, paths: list[Path] | None = None) -> bool:
        """Compare the watched folders (or only ``paths``) with the last look; mark those that changed.

        Every folder's look is the fallback poll: with events on, it is spaced to cost at most
        FALLBACK_SHARE of a core."""
        started = time.thread_time()
        current = snapshot(self.paths if paths is None else paths)
        changed = [Path(path) for path, entries in current.items() if self._snapshot.get(path) != entries]
        self._snapshot.update(current)
        if paths is None:
            self.looks += 1
            self._looked_at = self.clock.monotonic()
            if self._observer is not None:
                self._fallback_every = max(self.interval, (time.thread_time() - started) / FALLBACK_SHARE)
        if changed:
            self._mark(changed)
        return bool(changed)

    def _throttle(self) -> bool:
        """Wait for a token of the bucket (see the module's notes); False when stopped meanwhile."""
        while True:
            now = self.clock.monotonic()
            if self.min_interval <= 0:
                return True
            refill = (now - self._tokens_at) / self.min_interval
            self._tokens = min(float(self.burst), self._tokens + refill)
            self._tokens_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            if self.clock.wait(self._stopping, (1.0 - self._tokens) * self.min_interval):
                return False

    def _call(self) -> None:
        self._last_call = self.clock.monotonic()
        self._due = float("inf")  # this callback serves a pending nudge(after=...)
        self.callbacks += 1
        try:
            self.on_change()
        except Exception:  # a failing owner must not kill the follower: the next change tries again
            log.exception("follower callback failed")


def snapshot(paths: Iterable[Path]) -> Snapshot:
    """(inode, size, mtime) of every entry of every watched folder, one level deep, by folder.

    A sub-folder's own mtime changes when entries are added to it (a new checkpoint-N folder, a
    trainer_state.json written into it), so one level is enough to notice those without walking
    checkpoints' contents.
    """
    seen: Snapshot = {}
    for path in paths:
        try:
            with os.scandir(path) as entries:
                seen[str(path)] = {entry.name: _identity(entry) for entry in entries}
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


def _start_observer(paths: list[Path], wake: Callable[[list[str]], None]) -> object | None:
    """A running watchdog observer that calls ``wake`` with the paths an event names on writes, or None
    where events are unavailable.

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
            where = [event.src_path, *([event.dest_path] if event.dest_path else [])]
            wake([os.fsdecode(p) for p in where])

    observer = Observer()
    handler = Wake()
    if not _schedule(observer, paths, handler):
        return None
    try:
        observer.start()
    except OSError as exc:
        log.info("no change events (%s); polling instead", exc)
        _stop_observer(observer, 1.0)
        return None
    observer.wake_handler = handler  # type: ignore[attr-defined]  # for folders watched later
    return observer


def _schedule(observer: Any, paths: Iterable[Path], handler: object) -> int:
    """Change events for each folder of ``paths`` (a file's folder); how many could be scheduled."""
    from watchdog import events

    if handler is None:
        return 0
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
    scheduled = 0
    for path in dict.fromkeys(p if p.is_dir() else p.parent for p in paths):
        if not path.is_dir():
            continue
        try:
            observer.schedule(handler, str(path), recursive=False, event_filter=wanted)
            scheduled += 1
        except OSError as exc:  # e.g. the inotify watch limit: the poll still covers this folder
            log.info("no change events for %s: %s", path, exc)
    return scheduled


def _stop_observer(observer: object, timeout: float) -> None:
    observer.stop()  # type: ignore[attr-defined]
    observer.join(timeout)  # type: ignore[attr-defined]
