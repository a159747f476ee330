"""The follower: change events, the fallback poll, forced polling, throttling, clean stop."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from prefwatch.core.clock import FakeClock
from prefwatch.ingest import watch
from prefwatch.ingest.watch import Follower


class Calls:
    """Counts callbacks and lets a test wait for the next one."""

    def __init__(self, work=None) -> None:
        self.count = 0
        self.times: list[float] = []
        self.threads: set[str] = set()
        self._changed = threading.Condition()
        self.work = work

    def __call__(self) -> None:
        if self.work:
            self.work()
        with self._changed:
            self.count += 1
            self.times.append(time.monotonic())
            self.threads.add(threading.current_thread().name)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 3.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= count, timeout)


def append(path: Path, text: str = '{"step": 1}\n') -> float:
    with open(path, "a") as f:
        f.write(text)
    return time.monotonic()


@pytest.fixture
def cell(tmp_path: Path) -> Path:
    (tmp_path / "metrics.jsonl").write_text("")
    return tmp_path


def test_events_deliver_an_append_at_once(cell):
    calls = Calls()
    with Follower([cell], calls, interval=60) as follower:  # the fallback poll cannot be what fires
        assert follower.mode == "events"
        written = append(cell / "metrics.jsonl")
        assert calls.wait_for(1, timeout=30)
        assert calls.times[0] - written < 0.5
        assert calls.threads == {"prefwatch-follower"}


def test_forced_polling_sees_appends_without_events(cell):
    calls = Calls()
    with Follower([cell], calls, poll=True) as follower:
        assert follower.mode == "polling" and follower.interval == watch.FORCED_POLL_INTERVAL
        deadline = time.monotonic() + 30
        while follower.looks < 2:  # two looks at the folder, whatever the machine's load
            assert time.monotonic() < deadline, "the follower did not poll"
            time.sleep(0.02)
        assert calls.count == 0  # nothing changed, nothing said
        append(cell / "metrics.jsonl")
        assert calls.wait_for(1, timeout=30)


def test_fallback_poll_covers_a_file_system_without_events(cell, monkeypatch):
    monkeypatch.setattr(watch, "_start_observer", lambda paths, wake: None)  # as on NFS
    calls = Calls()
    with Follower([cell], calls, interval=0.1) as follower:
        assert follower.mode == "polling"
        append(cell / "metrics.jsonl")
        assert calls.wait_for(1, timeout=30)
        (cell / "status.json").write_text("{}")  # a new file is a change too
        assert calls.wait_for(2, timeout=30)


class Spy(Follower):
    """A follower that keeps the paths of every change event that passed its filter, in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[list[str]] = []
        self._seen = threading.Condition()

    def _event(self, where) -> None:
        where = list(where)
        with self._seen:
            self.events.append(where)
            self._seen.notify_all()
        super()._event(where)

    def wait_for_event(self, path: Path, timeout: float = 30.0) -> int:
        """The index of the first event that names ``path``, once it has arrived."""
        with self._seen:
            assert self._seen.wait_for(lambda: any(str(path) in e for e in self.events), timeout), path
            return next(i for i, e in enumerate(self.events) if str(path) in e)


def test_reading_in_the_callback_does_not_wake_the_follower_again(cell):
    """Open and close-without-write events are ignored: the owner's own reads must not loop.

    A barrier instead of a wait: one folder's inotify events arrive in the order they happened, so
    once the event of a file created after the callback's read has arrived, every event the read
    could have made has arrived before it. Only the write's own (modify, close-after-write) are there."""
    calls = Calls(work=lambda: (cell / "metrics.jsonl").read_bytes())
    with Spy([cell], calls, interval=60) as follower:
        append(cell / "metrics.jsonl")
        assert calls.wait_for(1, timeout=30)
        (cell / "barrier").write_text("")
        before = follower.events[: follower.wait_for_event(cell / "barrier")]
    assert 1 <= len(before) <= 2 and all(e == [str(cell / "metrics.jsonl")] for e in before), before


def test_a_burst_is_throttled_and_the_last_change_delivered(cell):
    sizes: list[int] = []
    calls = Calls(work=lambda: sizes.append((cell / "metrics.jsonl").stat().st_size))
    with Follower([cell], calls, interval=60, min_interval=0.2):
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            append(cell / "metrics.jsonl")
            time.sleep(0.01)  # the writer's pace, not a wait for the follower
        final = (cell / "metrics.jsonl").stat().st_size
        deadline = time.monotonic() + 30
        while final not in sizes:  # the tail of the burst is not lost: a callback sees the last write
            assert time.monotonic() < deadline, (final, sizes)
            time.sleep(0.02)
    assert 3 <= calls.count <= 10  # ~100 writes, at most one callback per 0.2 s
    gaps = [b - a for a, b in zip(calls.times, calls.times[1:])]
    assert min(gaps) >= 0.19


def test_nudge_asks_for_a_callback_without_a_change(cell):
    calls = Calls()
    with Follower([cell], calls, interval=60) as follower:
        follower.nudge()
        assert calls.wait_for(1)


def test_a_write_after_a_quiet_spell_is_read_at_once_and_its_trailing_events_make_no_callback(cell):
    """Leading edge: the first event is not held for the settle window; the write's later events
    (close after modify) find nothing new on disk and are not delivered again; a write within the
    stream is, once the settle window has passed. The follower's loop is stepped by hand on a clock
    the test moves (its thread never started), with the events its watcher would pass on."""
    calls = Calls(work=lambda: (cell / "metrics.jsonl").read_bytes())
    clock = FakeClock()
    follower = Follower([cell], calls, interval=60, settle=3.0, clock=clock)
    log = str(cell / "metrics.jsonl")
    append(cell / "metrics.jsonl")
    follower._event([log])  # modify
    started = clock.monotonic()
    follower.step(woken=True)
    assert calls.count == 1 and clock.monotonic() == started  # at once: no settle on the first event
    clock.advance(0.001)
    follower._event([log])  # close after write: nothing new on disk
    follower.step(woken=True)
    assert calls.count == 1 and clock.monotonic() - started >= 3.0  # waited out the settle, then nothing
    append(cell / "metrics.jsonl")  # a write within the stream
    follower._event([log])
    follower.step(woken=True)
    assert calls.count == 2


def test_a_delayed_nudge_calls_back_once_due_without_a_timer_thread(cell):
    follower: Follower
    timers: list[threading.Thread] = []

    def first_asks_again() -> None:
        if calls.count == 0:
            follower.nudge(after=0.3)
            timers.extend(t for t in threading.enumerate() if isinstance(t, threading.Timer))

    calls = Calls(work=first_asks_again)
    with Follower([cell], calls, interval=60) as follower:
        follower.nudge()
        assert calls.wait_for(2, timeout=10)  # nothing changed on disk: the second is the delayed nudge
    assert calls.times[1] - calls.times[0] >= 0.29
    assert not timers


def test_stop_is_clean_and_idempotent(cell):
    follower = Follower([cell], Calls(), poll=True).start()
    thread = follower._thread
    follower.stop()
    follower.stop()
    assert thread is not None and not thread.is_alive()


def test_a_failing_callback_does_not_stop_following(cell):
    failures = []

    def flaky() -> None:
        failures.append(1)
        if len(failures) == 1:
            raise RuntimeError("boom")

    with Follower([cell], flaky, poll=True):
        append(cell / "metrics.jsonl")
        deadline = time.monotonic() + 30
        while len(failures) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        append(cell / "metrics.jsonl")
        while len(failures) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(failures) >= 2


def test_missing_folder_is_watched_by_polling_until_it_appears(tmp_path):
    missing = tmp_path / "not-yet"
    calls = Calls()
    with Follower([missing], calls, interval=0.1):
        missing.mkdir()
        (missing / "metrics.jsonl").write_text("{}\n")
        assert calls.wait_for(1)


def test_a_few_simultaneous_changes_pass_the_bucket_at_once(cell):
    """Four cells logging the same instant are drawn without waiting; a stream is spaced out."""
    calls = Calls()
    with Follower([cell], calls, interval=600, min_interval=60.0, burst=3) as follower:
        follower.nudge()
        assert calls.wait_for(1, timeout=30)
        follower.nudge()
        assert calls.wait_for(2, timeout=30)  # the second token: no 60 s wait
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            follower.nudge()
            time.sleep(0.01)
    assert calls.count <= 3 + 1  # the bucket's three, then at most one more per 60 s
