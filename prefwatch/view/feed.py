"""The monitor's feed: it reads the logs, paces the refreshes and decides what is news, without a screen.

Threads and data flow::

    follower thread (watchdog event / poll, throttled)            UI thread
      Feed.refresh(): grid.poll -> IncrementalAnalysis -> GridView
                      -> Update(view, label, message, news)  ──deliver──►  the app draws it

The feed knows nothing of Textual: the app hands it a ``deliver`` callable (one that posts a message) and
runs its first read in a worker thread; after that the follower's thread calls ``refresh``, one refresh
at a time, so the UI thread only draws. Each ``Update`` carries its view: nothing is shared between
the threads but the update handed over, and the UI may drop an older update that a newer one
supersedes (a slow screen draws the newest view, never a stale one).

Kept here rather than in the app so that it can be tested, measured and reasoned about without a
terminal, and so that the app is left with what only it can do: draw, ask, and act on keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from prefwatch.act.alerts import AlertPolicy, CellFacts, FindingFacts
from prefwatch.analysis.analyse import CellAnalysis, analyse
from prefwatch.analysis.incremental import HEARTBEAT_SECONDS, IncrementalAnalysis
from prefwatch.core.clock import SYSTEM, Clock
from prefwatch.core.textsafe import plain
from prefwatch.ingest.replay import ReplayGrid
from prefwatch.ingest.sources import GridSource
from prefwatch.ingest.watch import Follower
from prefwatch.run import jobs
from prefwatch.view.model import CellView, GridView, cell_view, grid_view

ALERT_STATES = frozenset({"finished", "failed", "stopped", "lost", "stalled"})
REDRAW_INTERVAL = 0.1  # the throttle's shortest interval between refreshes while lines pour in
REDRAW_BURST = 3  # near-simultaneous changes (cells logging the same second) are drawn at once
SETTLE_SECONDS = 0.01  # events within this long after the first are read in one refresh (a write makes several)
# However busy, at least six or seven refreshes a second: the throttle paces frames, it never holds a
# fresh value back for long (goal: p99 append -> screen <= 250 ms at 10 lines/s a cell; 0.2 s gave
# 210-240 ms, 0.15 s 160-180 ms, for 0.68-0.77x the floor's CPU at 4 cells x 10 lines/s).
MAX_REDRAW_INTERVAL = 0.15
CPU_BUDGET = 0.04  # share of a core the whole monitor aims at; the throttle widens above it (docs/charts.md)
PREVIEW_BYTES = 256 << 10  # attach draws a first frame from this much of the end of each larger log
FOLLOW_UP_GRACE = 0.25  # owed findings are read this share of their age past due, unless a line brings them first
READ_SHARE = 0.33  # reading and analysing may take at most this share of a core: huge logs refresh less often
TOAST_LINES = 4  # a toast names this many events, then "and N more"
# A grid of this many cells or more is first drawn with each cell's figures only, its findings and the
# verdict a moment later (analysing costs about 0.5 ms a cell: 0.5 s of a thousand-cell folder's 2.3 s
# to its first screen). Below it the analysis takes less than a second frame's drawing would: the
# first frame is complete, as every golden screen is.
FIRST_VALUES_FROM = 200
SEVERITIES = ("info", "warn", "error")


class News(msgspec.Struct, frozen=True):
    """What a refresh found new (cells that ended, failed, stalled; new findings): one toast's text."""

    text: str
    severity: str  # the worst of the events': "info", "warn" or "error"


class Update(msgspec.Struct, frozen=True):
    """One refresh, handed from the feed's thread to the UI: a view of the grid and the strip's words.

    ``view`` is None when only the words changed (the follower's mode, an error while there is nothing
    else to show). ``news`` is set once per event: an update that carries it must be shown, not
    superseded (the app's message says so).
    """

    view: GridView | None
    label: str  # where the data comes from: "live (watchdog)", the replay's clock
    message: str | None = None  # an error, or what the source waits for
    error: str | None = None  # the last read's failure, also logged
    news: News | None = None


class Pacer:
    """Spaces refreshes to hold the monitor's CPU budget.

    Two limits: reading and analysing one refresh may take at most READ_SHARE of a core (analysis grows
    with the logs), and the whole process (reading, analysis and drawing, all threads) aims at
    CPU_BUDGET of a core, measured over the last second or more: while lines pour in, the interval
    widens until the frames fit; when they slow down it narrows again, so a line logged every few
    seconds is drawn at once.
    """

    def __init__(
        self,
        shortest: float,
        clock: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self.shortest = shortest
        self.interval = shortest
        self._clock, self._cpu = clock, cpu  # the wall clock and the process's CPU time (tests fake both)
        self._sample = (clock(), cpu())

    def next_interval(self, read_seconds: float) -> float:
        """The follower's shortest interval after a refresh whose reading took ``read_seconds``."""
        now, cpu = self._clock(), self._cpu()
        then, cpu_then = self._sample
        if now - then >= 1.0:
            share = (cpu - cpu_then) / (now - then)
            self._sample = (now, cpu)
            if share > CPU_BUDGET:
                self.interval = min(MAX_REDRAW_INTERVAL, self.interval * min(2.0, share / CPU_BUDGET))
            else:
                self.interval = max(self.shortest, self.interval / 1.5)
        return max(self.interval, read_seconds / READ_SHARE)


class Alerts:
    """Which events of a new view are news, as one toast's text (None: nothing new).

    What is news is decided by prefwatch.act.alerts (the same policy the supervisor's alerts use): each
    finding of a cell once per session, each arrival in an alerting state once. The first complete
    view is the baseline: opening the monitor on a finished grid raises nothing. A view of figures
    only (``GridView.complete`` False: a large grid's first frame) is neither news nor the baseline:
    its cells have no findings yet, and the full view would otherwise tell every one of them as new.
    """

    def __init__(self) -> None:
        self._policy: AlertPolicy | None = None

    def news(self, view: GridView) -> News | None:
        if not view.complete:
            return None
        facts = [
            CellFacts(
                c.id, c.state, c.status, tuple(FindingFacts(f.kind, f.severity, f.message, f.step) for f in c.findings)
            )
            for c in view.cells
        ]
        if self._policy is None:
            self._policy = AlertPolicy(view.name, ALERT_STATES)
            self._policy.baseline(facts)
            return None
        events = self._policy.news(facts)
        if not events:
            return None
        lines = [a.short for a in events]
        more = [f"and {len(lines) - TOAST_LINES} more"] if len(lines) > TOAST_LINES else []
        worst = max(SEVERITIES.index(a.severity) for a in events)
        # One event a line: each line is data shown literally (a newline in a cell's name stays "\x0a"),
        # the lines between them are real line breaks.
        return News("\n".join(plain(line) for line in lines[:TOAST_LINES] + more), SEVERITIES[worst])


class IncrementalViews:
    """The grid's view from ``incremental.IncrementalAnalysis`` (the core's cache of analyses): a
    cell's view is built again only when its analysis was redone."""

    def __init__(self, source: GridSource, heartbeat: float = HEARTBEAT_SECONDS, clock: Clock = SYSTEM) -> None:
        # Findings of a cell that only gained train rows are redone every 1.5-2 s (4 cells) to
        # 3.75-5 s (64 cells; the heartbeat redoes every cell by 5 s anyway): diagnosing is most
        # of a busy grid's cost; its values are new at once.
        findings_age = min(HEARTBEAT_SECONDS, max(2.0, len(source.cells) / 12))
        # Each status.json is read again when it changes, a job's process looked at every heartbeat.
        statuses = jobs.StatusReader(recheck=min(heartbeat, HEARTBEAT_SECONDS))
        self.analysis = IncrementalAnalysis(source, heartbeat, clock, findings_age, statuses=statuses)
        self._views: dict[str, tuple[CellAnalysis, CellView]] = {}
        self.last: GridView | None = None

    @property
    def analysed(self) -> int:
        """Cells analysed so far (tests and the benchmark read it)."""
        return self.analysis.analysed

    def first_values(self) -> GridView:
        """Every cell read and shown with its figures, without findings or verdict (``complete``
        False): a large grid's first frame. Nothing is kept; ``view()`` analyses every cell next."""
        analysis = self.analysis.values()
        return grid_view(analysis, [cell_view(c) for c in analysis.cells])

    def view(self, only: set[str] | None = None) -> GridView | None:
        """A new view of the grid, or None when nothing changed since the last one (``only``: the
        cells whose files changed; None: every cell)."""
        analysis = self.analysis.update(only)
        if analysis is None:
            return None
        views = {}
        for analysed in analysis.cells:
            previous = self._views.get(analysed.source.id)
            if previous is not None and previous[0] is analysed and analysed.source.id not in self.analysis.changed:
                view = previous[1]
            else:
                view = cell_view(analysed)
            views[analysed.source.id] = (analysed, view)
        self._views = views
        self.last = grid_view(analysis, [v for _, v in views.values()])
        return self.last


class Feed:
    """Reads a grid's logs as they grow and hands each new view to ``deliver``, paced and with its news.

    ``live``: follow growing files (launch, attach) with a watchdog follower (``poll``: polling, for file
    systems without change events) and raise news; otherwise read finished logs once, or, given
    ``replay_speed``, play them as a time-lapse at that many times real time (``replay``: its clock,
    which the app's keys move; ``replay_step`` cuts the grid where the clock stands).
    ``start`` blocks while it reads everything there is: run it off the UI thread. A grid of
    FIRST_VALUES_FROM cells or more gets a first view of figures only; the full analysis then waits
    up to ``frame_wait`` seconds for ``drawn()`` (the app's word that the frame is on screen), so
    that analysing does not slow the drawing of that frame (both need the interpreter).
    """

    def __init__(
        self,
        source: GridSource,
        deliver: Callable[[Update], object],
        *,
        live: bool = True,
        poll: bool = False,
        redraw_interval: float = REDRAW_INTERVAL,
        heartbeat: float = HEARTBEAT_SECONDS,
        replay_speed: float | None = None,
        frame_wait: float = 0.0,
    ) -> None:
        self.source = source
        self.live = live
        self.poll = poll
        self.redraw_interval = redraw_interval
        self.heartbeat = heartbeat
        self.follower: Follower | None = None
        self.replay: ReplayGrid | None = None  # a timed replay, once its logs are read
        self.incremental = IncrementalViews(source, heartbeat)
        self.error: str | None = None  # the last refresh's failure, until one succeeds
        self._deliver = deliver
        self._replay_speed = replay_speed
        self.frame_wait = frame_wait
        self._drawn = threading.Event()  # set by drawn(): the first frame of figures is on screen
        self._alerts = Alerts() if live else None
        self._pacer = Pacer(redraw_interval)
        self._read_lock = threading.Lock()  # one refresh at a time, whichever thread asks
        self._follow_lock = threading.Lock()  # the follower starts once, never after ``stop``
        self._stopped = False
        self._follow_up_pending = False
        self._generation = 0  # the source's generation whose folders the follower watches
        self._cells_of: dict[Path, list[str]] = {}  # the cells watching each followed path

    @property
    def label(self) -> str:
        """Where the data comes from, for the strip: the follower's mode or the replay's clock."""
        if self.replay is not None:
            return self.replay.label()
        if not self.live:
            return "replay"
        if self.follower is None:
            return "live (starting)"
        return f"live ({self.follower.mode})"

    # ---- the feed's life -------------------------------------------------------------------------

    def start(self) -> None:
        """Read everything there is (a finished log can be large), then follow it in live mode."""
        if self._replay_speed is not None:
            jobs.hand_statuses(self.source)  # each cell's recorded end, shown when the replay reaches it
            replay = ReplayGrid(self.source, self._replay_speed)
            self.incremental = IncrementalViews(replay.source, float("inf"), replay.clock)
            self.replay = replay
        elif not (self.live and self._preview()) and len(self.source.cells) >= FIRST_VALUES_FROM:
            self._first_values()
        self.refresh()
        if self.live:
            self._follow()

    def stop(self) -> None:
        """Stop following (the app closes); a first read still under way starts no follower after it."""
        with self._follow_lock:
            self._stopped = True
        self._drawn.set()  # a first read waiting for its first frame to be drawn waits no longer
        if self.follower is not None:
            self.follower.stop()

    def drawn(self) -> None:
        """The first frame of figures is on screen: the full analysis may start."""
        self._drawn.set()

    def heartbeat_tick(self) -> None:
        """Running cells' clock-bound findings (stalled...) are looked at again; the files are read
        again only where the follower saw them change."""
        if self.follower is not None:
            self.follower.nudge(files=False)

    def nudge(self) -> None:
        """Read every followed file again soon (a cell was stopped or restarted)."""
        if self.follower is not None:
            self.follower.nudge()

    def replay_step(self) -> None:
        """Cut the grid at the replay clock and deliver it (or just the strip, when the clock stands still)."""
        if self.replay is None:
            return
        if self.replay.update():
            self.refresh()
        else:
            self._deliver(Update(None, self.label, self.error or self.source.waiting))

    # ---- reading ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Poll the logs, analyse them and deliver the view; never twice at once."""
        with self._read_lock:
            started = time.perf_counter()
            try:
                had_error = self.error is not None
                view = self.incremental.view(self._changed_cells())
                self.error = None
                if view is None and not had_error:
                    self._pace(time.perf_counter() - started)
                    return  # nothing new (a trailing event of a write already read): no frame
                view = view or self.incremental.last
            except Exception as exc:  # an analysis bug must not take the monitor down with it
                self.error = plain(f"could not read the logs: {type(exc).__name__}: {exc}")
                view = None
            self._pace(time.perf_counter() - started)
            self._follow_up()
            if self.follower is not None and self.source.generation != self._generation:
                self._generation = self.source.generation  # cells appeared: follow their folders too
                self.follower.watch(self._paths_to_watch())
            news = self._alerts.news(view) if self._alerts is not None and view is not None else None
            self._deliver(Update(view, self.label, self.error or self.source.waiting, self.error, news))

    def _preview(self) -> bool:
        """A first frame from the last 256 KiB of each log, before reading them whole: attaching to
        a grid of long logs shows every cell's latest state within a second, the full curves after."""
        large = [c for c in self.source.cells if c.metrics_path is not None and _size(c.metrics_path) > PREVIEW_BYTES]
        if not any([cell.peek_tail(PREVIEW_BYTES) for cell in large]):
            return False  # small logs are read whole at once anyway
        try:
            view = grid_view(analyse(self.source))
        except Exception:  # the full read reports what is wrong
            return False
        self._deliver(Update(view, self.label, self.source.waiting))
        return True

    def _first_values(self) -> None:
        """A large grid's first frame: every cell read and shown with its figures; its findings and
        the verdict follow with the full read, once the frame is drawn (or ``frame_wait`` passed)."""
        with self._read_lock:
            try:
                view = self.incremental.first_values()
            except Exception:  # the full read reports what is wrong
                return
        self._deliver(Update(view, self.label, self.source.waiting))
        self._drawn.wait(self.frame_wait)

    def _follow(self) -> None:
        with self._follow_lock:
            if self._stopped:
                return
            follower = Follower(
                self._paths_to_watch(),
                self.refresh,
                poll=self.poll,
                min_interval=self.redraw_interval,
                burst=REDRAW_BURST,
                settle=SETTLE_SECONDS,
            )
            follower.start()
            # Lines written between the first read and the follower's start made no event: read once more.
            follower.nudge()
            self.follower = follower
        self._deliver(Update(None, self.label, self.error or self.source.waiting))  # the strip names the mode now

    def _paths_to_watch(self) -> list[Path]:
        """Every folder to follow: each cell's (mapped to the cells watching it) and those where new
        cells appear (a tracker's store: mapped to none, so a change there reads every cell)."""
        cells_of: dict[Path, list[str]] = {}
        for cell in self.source.cells:
            for path in cell.watched_paths():
                cells_of.setdefault(path, []).append(cell.id)
        self._cells_of = cells_of
        return list(dict.fromkeys([*cells_of, *self.source.watched_paths()]))

    def _changed_cells(self) -> set[str] | None:
        """Ids of the cells whose folders the follower saw change (None: read every cell)."""
        follower = self.follower
        changed = follower.take_changed() if follower is not None else None
        if changed is None or self.replay is not None:
            return None
        cells: set[str] = set()
        for path in changed:
            ids = self._cells_of.get(path)
            if ids is None:
                return None  # a path no cell watches: read every cell
            cells.update(ids)
        return cells

    # ---- pacing ----------------------------------------------------------------------------------

    def _pace(self, seconds: float) -> None:
        interval = self._pacer.next_interval(seconds)
        if self.follower is not None:
            self.follower.min_interval = interval

    def _follow_up(self) -> None:
        """When a cell's findings wait (it only gained train rows), read again once they are due,
        even if no line comes meanwhile. The follower keeps the time (no timer thread); a line that
        comes first is read, with the findings then due, instead."""
        analysis = self.incremental.analysis
        follower = self.follower
        if analysis.owed and follower is not None:
            # A little past the due time: a cell logging every second brings its findings along with
            # the next line instead of a read and a frame of their own just before it (at exactly the
            # due time the follow-up came ~0.1 s before each second line and set the findings' clock
            # to itself: two refreshes where one does). A quiet cell's findings wait 1.25 x the age.
            follower.nudge(after=max(0.001, analysis.due_in + analysis.findings_age * FOLLOW_UP_GRACE), files=False)
        elif analysis.owed and not self._follow_up_pending:  # before the follower starts (first read)
            self._follow_up_pending = True

            def due() -> None:
                self._follow_up_pending = False
                self.heartbeat_tick()

            timer = threading.Timer(analysis.findings_age, due)
            timer.daemon = True
            timer.start()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
