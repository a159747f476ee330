"""The clock the readers and the analysis read, passed in: the system's, or one a test moves.

Everything that waits on time — a reader trusting an unchanged stat for a moment, data.json looked
for once a second, a tracker's store listed again, a W&B completions table looked for, a run
without news for ten minutes called incomplete, the age of an analysis — asks the clock it was
given, never ``time`` itself. A test then advances a ``FakeClock`` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """``monotonic()`` for intervals (never goes back), ``time()`` for moments (seconds since the
    epoch, what logs stamp their rows with)."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class Waits(Clock, Protocol):
    """A clock that can also be waited on: ``wait(event, seconds)`` returns when ``event`` is set or
    ``seconds`` have passed on this clock, and says whether the event is set (``threading.Event.wait``)."""

    def wait(self, event: threading.Event, seconds: float) -> bool: ...


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(seconds)


SYSTEM = SystemClock()


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)`` moves both readings by that much."""

    def __init__(self, monotonic: float = 1000.0, wall: float | None = None) -> None:
        self._monotonic = monotonic
        self._wall = time.time() if wall is None else wall

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """A wait that takes no real time: the clock moves by ``seconds`` unless the event is set."""
        if not event.is_set():
            self.advance(seconds)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self._monotonic += seconds
        self._wall += seconds
