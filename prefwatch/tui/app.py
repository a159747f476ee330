"""The monitor app and ``run_monitor``, the one entry point the CLI calls.

Threads and data flow::

    follower thread (watchdog event / poll, throttled)      UI thread
      grid.poll()  -> analyse() -> GridView  ──post──►  screens draw the view

Reading and analysing happen off the UI thread, one refresh at a time (the follower calls back
on a single thread), so the UI never blocks on a large log. The view is handed over through a
one-slot mailbox: if the UI is slower than the logs, it draws the newest view and skips the rest.
The monitor reads only; quitting leaves every job running.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen

from prefwatch.act.alerts import AlertPolicy, CellFacts, FindingFacts
from prefwatch.analysis.analyse import CellAnalysis, analyse
from prefwatch.analysis.incremental import HEARTBEAT_SECONDS, IncrementalAnalysis
from prefwatch.core.textsafe import plain
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.sources import GridSource
from prefwatch.ingest.watch import Follower
from prefwatch.run import jobs
from prefwatch.tui.model import CellView, GridView, cell_view, grid_view
from prefwatch.tui.replay import ReplayGrid
from prefwatch.tui.screens.cell import CellScreen
from prefwatch.tui.screens.compare import CompareScreen
from prefwatch.tui.screens.completions import CompletionsScreen
from prefwatch.tui.screens.confirm import ConfirmScreen
from prefwatch.tui.screens.grid import GridScreen
from prefwatch.tui.screens.help import HelpScreen
from prefwatch.tui.screens.overview import OverviewScreen
from prefwatch.tui.text import literal
from prefwatch.tui.widgets.cell_panel import CellPanel

MODES = ("live", "replay")
REPLAY_TICK = 0.25  # seconds between replay frames
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
OVERVIEW_FROM = 17  # a grid of this many cells opens on the overview (one row a cell), not the panels
FOLLOW_UP_GRACE = 0.25  # owed findings are read this share of their age past due, unless a line brings them first
READ_SHARE = 0.33  # reading and analysing may take at most this share of a core: huge logs refresh less often


class ViewReady(Message):
    """A new GridView waits in the app's mailbox."""


class MonitorApp(App[int]):
    """Watches a grid's logs and shows every cell, the findings and the verdict."""

    CSS_PATH = Path(__file__).with_name("prefwatch.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "prefwatch"
    BINDINGS = [
        Binding("q", "quit_monitor", "Quit", tooltip="quit the monitor — the jobs keep running"),
        Binding("s", "stop_cell", "Stop cell", tooltip="stop the selected cell (asks first; launched grids only)"),
        Binding("c", "compare", "Compare", tooltip="compare one metric across all cells"),
        Binding("o", "overview", "Overview", tooltip="every cell in one row: sortable, grouped by factor"),
        Binding(
            "w",
            "completions",
            "Writes",
            tooltip="what the selected cell's model writes, beside the reference's answers",
        ),
        Binding("X", "stop_grid", "Stop grid", show=False, tooltip="stop the whole grid (asks first)"),
        Binding(
            "r",
            "restart_cell",
            "Restart",
            show=False,
            tooltip="restart a failed, stopped or lost cell from its checkpoint (asks)",
        ),
        Binding("T", "toggle_theme", "Light/dark", show=False, tooltip="light or dark theme"),
        Binding("space", "replay_toggle", "Play/pause", tooltip="a timed replay: play or pause"),
        Binding("plus,equals_sign", "replay_speed(1)", "Faster", key_display="+", tooltip="a timed replay: faster"),
        Binding("minus", "replay_speed(-1)", "Slower", key_display="-", tooltip="a timed replay: slower"),
        Binding(
            "greater_than_sign,full_stop",
            "replay_jump(0.05)",
            "Jump",
            key_display=">",
            tooltip="a timed replay: jump forward",
        ),
        Binding(
            "less_than_sign,comma", "replay_jump(-0.05)", "Back", key_display="<", tooltip="a timed replay: jump back"
        ),
        Binding("home", "replay_seek(0)", "Start", show=False, tooltip="a timed replay: to the start"),
        Binding("end", "replay_seek(1)", "End", show=False, tooltip="a timed replay: to the end"),
        Binding("question_mark", "help", "Help", tooltip="this help"),
    ]

    def __init__(
        self,
        source: GridSource,
        *,
        mode: str = "live",
        poll: bool = False,
        redraw_interval: float = REDRAW_INTERVAL,
        heartbeat: float = HEARTBEAT_SECONDS,
        export_dir: Path | None = None,
        speed: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        super().__init__()
        self.source = source
        self.mode = mode
        self.poll = poll
        self.redraw_interval = redraw_interval
        self.heartbeat = heartbeat
        self.export_dir = export_dir  # where exports and screenshots go (default: the current directory)
        self.follower: Follower | None = None
        self.view: GridView | None = None
        self.refreshes = 0  # views drawn (tests and the benchmark read it)
        self._mailbox: GridView | None = None
        self._mailbox_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._follow_lock = threading.Lock()
        self._unmounted = False
        self._follow_up_pending = False
        self._error: str | None = None
        self._generation = 0  # the source's generation whose folders the follower watches
        self._news: AlertPolicy | None = None
        self._incremental = IncrementalViews(source, heartbeat)
        self._cells_of: dict[Path, list[str]] = {}  # the cells watching each followed path
        # Replay as a time-lapse at ``speed`` times real time (None: everything at once, the default).
        self.speed = speed if mode == "replay" else None
        self.replay: ReplayGrid | None = None
        self._cpu_sample = (time.monotonic(), time.process_time())
        self._frozen = False  # the objects of the start-up are out of the garbage collector's way
        self._interval = redraw_interval

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): Textual's own commands and the monitor's actions."""
        yield from super().get_system_commands(screen)
        commands = [
            ("Compare cells", "One metric across every cell", "compare"),
            ("Overview of every cell", "One row a cell: sortable, grouped by factor", "overview"),
            ("Toggle light/dark theme", "Switch between the light and the dark theme", "toggle_theme"),
            ("Help: keys and colours", "What every key does", "help"),
        ]
        if self.mode == "live":
            commands += [
                ("Stop the selected cell", "SIGTERM to its job, after a confirmation", "stop_cell"),
                ("Stop the whole grid", "Every cell that has not ended, after a confirmation", "stop_grid"),
                (
                    "Restart the selected cell",
                    "A failed, stopped or lost cell, from its last checkpoint",
                    "restart_cell",
                ),
            ]
        if self.replay is not None:
            commands += [
                ("Replay: play or pause", "The time-lapse of the logs", "replay_toggle"),
                ("Replay: to the start", "Back to the first logged line", "replay_seek(0)"),
                ("Replay: to the end", "Every line, as the run ended", "replay_seek(1)"),
            ]
        for title, help, action in commands:
            yield SystemCommand(title, help, functools.partial(self.call_later, self.run_action, action))

    def get_theme(self, theme_name: str):  # -> Theme | None
        """Textual's lookup without its copy of every registered theme: it runs for each line of
        every frame (via ``ansi_theme``), and the copies were a tenth of the monitor's drawing."""
        registered = getattr(self, "_registered_themes", None)
        if registered is None:
            return super().get_theme(theme_name)
        for name in theme_name.split(","):
            theme = registered.get(name.strip())
            if theme is not None:
                return theme
        return None

    def get_default_screen(self) -> GridScreen:
        return GridScreen()

    @property
    def source_label(self) -> str:
        if self.replay is not None:
            return self.replay.label()
        if self.mode == "replay":
            return "replay"
        if self.follower is None:
            return "live (starting)"
        return f"live ({self.follower.mode})"

    # ---- reading (background thread) -----------------------------------------------------------

    def on_mount(self) -> None:
        self.sub_title = plain(str(self.source.root))
        if self.mode == "live":
            self.set_interval(self.heartbeat, self._nudge)
        self._first_read()

    @work(thread=True, exclusive=True, group="read")
    def _first_read(self) -> None:
        """Read everything there is (a finished log can be large), then follow it in live mode."""
        if self.speed is not None:
            jobs.hand_statuses(self.source)  # each cell's recorded end, shown when the replay reaches it
            replay = ReplayGrid(self.source, self.speed, time.monotonic)
            self._incremental = IncrementalViews(replay.source, float("inf"), replay.clock.now)
            self.replay = replay
            try:
                self.call_from_thread(self.set_interval, REPLAY_TICK, self._replay_tick)
            except RuntimeError:  # the app closed while the logs were read
                return
        if self.speed is None:
            self._preview()
        self._read_and_post()
        if self.mode == "live":
            self._start_following()

    def _preview(self) -> None:
        """A first frame from the last 256 KiB of each log, before reading them whole: attaching to
        a grid of long logs shows every cell's latest state within a second, the full curves after."""
        if self.mode != "live":
            return
        large = [c for c in self.source.cells if c.metrics_path is not None and _size(c.metrics_path) > PREVIEW_BYTES]
        if not any([cell.peek_tail(PREVIEW_BYTES) for cell in large]):
            return  # small logs are read whole at once anyway
        try:
            view = grid_view(analyse(self.source))
        except Exception:  # the full read reports what is wrong
            return
        with self._mailbox_lock:
            empty, self._mailbox = self._mailbox is None, view
        if empty:
            self.post_message(ViewReady())

    def _start_following(self) -> None:
        with self._follow_lock:
            if self._unmounted:
                return
            paths = self._paths_to_watch()
            follower = Follower(
                paths,
                self._read_and_post,
                poll=self.poll,
                min_interval=self.redraw_interval,
                burst=REDRAW_BURST,
                settle=SETTLE_SECONDS,
            )
            follower.start()
            # Lines written between the first read and the follower's start made no event: read once more.
            follower.nudge()
            self.follower = follower
        self.post_message(ViewReady())  # the strip names the follower's mode now

    def _replay_tick(self) -> None:
        if self.replay is not None:
            self._replay_step()

    @work(thread=True, exclusive=True, group="read")
    def _replay_step(self) -> None:
        """Cut the grid at the replay clock and draw it (or just the strip, when the clock stands still)."""
        assert self.replay is not None
        if self.replay.update():
            self._read_and_post()
        else:
            self.post_message(ViewReady())

    def _nudge(self) -> None:
        """The heartbeat: running cells' clock-bound findings (stalled...) are looked at again; the
        files are read again only where the follower saw them change."""
        if self.follower is not None:
            self.follower.nudge(files=False)

    def _read_and_post(self) -> None:
        """Poll the logs and analyse them; runs off the UI thread, never twice at once."""
        with self._read_lock:
            started = time.perf_counter()
            try:
                had_error = self._error is not None
                view: GridView | None = self._incremental.view(self._changed_cells())
                self._error = None
                if view is None and not had_error:
                    self._pace(time.perf_counter() - started)
                    return  # nothing new (a trailing event of a write already read): no frame
                view = view or self._incremental.last
            except Exception as exc:  # an analysis bug must not take the monitor down with it
                self._error = plain(f"could not read the logs: {type(exc).__name__}: {exc}")
                view = None
            self._pace(time.perf_counter() - started)
            self._follow_up()
            if self.follower is not None and self.source.generation != self._generation:
                self._generation = self.source.generation  # cells appeared: follow their folders too
                self.follower.watch(self._paths_to_watch())
            with self._mailbox_lock:
                empty = self._mailbox is None
                if view is not None:
                    self._mailbox = view
            if empty:
                self.post_message(ViewReady())

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

    def _follow_up(self) -> None:
        """When a cell's findings wait (it only gained train rows), read again once they are due,
        even if no line comes meanwhile. The follower keeps the time (no timer thread); a line that
        comes first is read, with the findings then due, instead."""
        analysis = self._incremental.analysis
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
                self._nudge()

            timer = threading.Timer(analysis.findings_age, due)
            timer.daemon = True
            timer.start()

    def _pace(self, seconds: float) -> None:
        """Space refreshes to hold the monitor's CPU budget.

        Two limits: reading and analysing one refresh may take at most READ_SHARE of a core (analysis
        grows with the logs), and the whole process (reading, analysis and drawing, all threads) aims
        at CPU_BUDGET of a core, measured over the last second or more: while lines pour in, the
        interval widens until the frames fit; when they slow down it narrows again, so a line
        logged every few seconds is drawn at once.
        """
        now, cpu = time.monotonic(), time.process_time()
        then, cpu_then = self._cpu_sample
        if now - then >= 1.0:
            share = (cpu - cpu_then) / (now - then)
            self._cpu_sample = (now, cpu)
            if share > CPU_BUDGET:
                self._interval = min(MAX_REDRAW_INTERVAL, self._interval * min(2.0, share / CPU_BUDGET))
            else:
                self._interval = max(self.redraw_interval, self._interval / 1.5)
        if self.follower is not None:
            self.follower.min_interval = max(self._interval, seconds / READ_SHARE)

    # ---- drawing (UI thread) -------------------------------------------------------------------

    def on_view_ready(self, _: ViewReady) -> None:
        """Draw the newest view waiting in the mailbox (or, with none, refresh the strip's message)."""
        with self._mailbox_lock:
            view, self._mailbox = self._mailbox, None
        if not self.screen_stack or not isinstance(self.screen_stack[0], GridScreen):
            return  # the app is closing: a reading thread posted once more on its way out
        grid_screen = self._grid_screen()
        message = self._error or self.source.waiting
        if view is None:
            grid_screen.show_status(self.source_label, message)
            return
        if self._error:
            self.log.error(self._error)
        previous, self.view = self.view, view
        self.refreshes += 1
        if previous is not None and not self._frozen:
            self._frozen = True
            self.call_after_refresh(_freeze_startup_objects)
        if self.mode == "live":
            self._alert(view)
        if previous is None and len(view.cells) >= OVERVIEW_FROM and self.screen is grid_screen:
            self.push_screen(OverviewScreen(view))  # first: the panels behind it are made when shown
        grid_screen.show(view, self.source_label, message)
        for screen in self.screen_stack:
            if isinstance(screen, OverviewScreen) and screen.is_mounted:
                screen.show_grid(view)
            elif isinstance(screen, CellScreen):
                cell = view.cell(screen.cell.id)
                if cell is not None and cell.version != screen.cell.version:
                    screen.show_cell(cell)
            elif isinstance(screen, CompareScreen):
                screen.show_grid(view)
            elif isinstance(screen, CompletionsScreen):
                cell = view.cell(screen.cell.id)
                if cell is not None and cell.version != screen.cell.version:
                    screen.show_cell(cell)

    def _alert(self, view: GridView) -> None:
        """Bell and one short notification when cells finish, fail, stall or are lost, or show a new finding.

        What is news is decided by prefwatch.act.alerts (the same policy the supervisor's alerts use): each
        finding of a cell once per session, each arrival in an alerting state once. The first view is
        the baseline. One line per event, one toast per refresh.
        """
        facts = [
            CellFacts(
                c.id, c.state, c.status, tuple(FindingFacts(f.kind, f.severity, f.message, f.step) for f in c.findings)
            )
            for c in view.cells
        ]
        if self._news is None:
            self._news = AlertPolicy(view.name, ALERT_STATES)
            self._news.baseline(facts)
            return
        news = self._news.news(facts)
        if not news:
            return
        lines = [a.short for a in news]
        worst = max(("info", "warn", "error").index(a.severity) for a in news)
        severity: SeverityLevel = ("information", "warning", "error")[worst]
        text = plain("\n".join(lines[:4] + ([f"and {len(lines) - 4} more"] if len(lines) > 4 else [])))

        def toast() -> None:
            self.notify(text, severity=severity, markup=False, timeout=6)
            self.bell()

        # After the frame that shows the new values: a toast mounts a widget and lays the screen
        # out again (tens of milliseconds), which would hold those values back. And queued behind
        # the other after-frame callbacks, not among them: one that waits for this frame (a test,
        # the latency benchmark's stamp) would otherwise wait for the toast's layout too.
        self.call_after_refresh(self.call_later, toast)

    def _grid_screen(self) -> GridScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, GridScreen)
        return screen

    def on_cell_panel_selected(self, event: CellPanel.Selected) -> None:
        cell = self.view.cell(event.cell_id) if self.view else None
        if cell is not None:
            self.push_screen(CellScreen(cell, self.export_dir))

    # ---- actions -------------------------------------------------------------------------------

    # ---- replay controls (a timed replay only) ---------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action.startswith("replay_"):
            return self.replay is not None
        if action in ("stop_cell", "stop_grid", "restart_cell"):
            return self.mode == "live"  # a replay's jobs ended long ago
        return True

    def action_replay_toggle(self) -> None:
        if self.replay is not None:
            self.replay.clock.toggle()
            self._replay_step()

    def action_replay_speed(self, factor: int) -> None:
        if self.replay is not None:
            self.replay.clock.faster(factor)
            self._replay_step()

    def action_replay_jump(self, fraction: float) -> None:
        if self.replay is not None:
            self.replay.clock.jump(fraction)
            self._replay_step()

    def action_replay_seek(self, fraction: float) -> None:
        if self.replay is not None:
            self.replay.clock.seek(fraction)
            self._replay_step()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme != "textual-light" else "textual-dark"

    def action_restart_cell(self) -> None:
        """Start a failed, stopped or lost cell again, from its last checkpoint (asks first)."""
        cell = self._selected_cell()
        if cell is None:
            self.notify("Select a cell first (arrow keys).", severity="warning")
            return
        if not (self.source.managed and cell.managed):
            self.notify("Only cells that prefwatch launched can be restarted from here.", severity="warning")
            return
        if cell.state not in jobs.RESTARTABLE:
            self.notify(
                plain(f"{cell.id} is {cell.status}: only a failed, stopped or lost cell restarts."), markup=False
            )
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._restart([cell.id])

        text = f"Restart cell {cell.id} from its last checkpoint? It is {cell.status}."
        self.push_screen(ConfirmScreen(literal(text), yes_label="Restart (y)"), answered)

    @work(thread=True, group="stop")
    def _restart(self, cell_ids: list[str]) -> None:
        try:
            started = jobs.restart_cells(self.source.root, cell_ids)
        except (jobs.LaunchError, OSError) as exc:
            self.call_from_thread(self.notify, plain(exc), severity="error", markup=False)
            return
        self.call_from_thread(self.notify, plain(f"restarting {', '.join(started)}."), markup=False)
        if self.follower is not None:
            self.follower.nudge()

    def action_stop_grid(self) -> None:
        """Stop every cell that has not ended (asks first)."""
        if self.view is None or not self.source.managed:
            self.notify("Only a grid that prefwatch launched can be stopped from here.", severity="warning")
            return
        running = [c for c in self.view.cells if c.stoppable]
        if not running:
            self.notify("Every cell has ended already.")
            return
        question = Content(f"Stop the whole grid? {len(running)} cell(s) have not ended; running jobs get SIGTERM.")

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(None)

        self.push_screen(ConfirmScreen(question), answered)

    def action_compare(self) -> None:
        """One metric across every cell (one chart per objective where the scales differ)."""
        if self.view is not None and not isinstance(self.screen, CompareScreen):
            self.push_screen(CompareScreen(self.view))

    def action_completions(self) -> None:
        """What the selected cell's model writes at its last evaluations, beside the reference's answers."""
        cell = self._selected_cell()
        if cell is None:
            self.notify("Select a cell first (arrow keys).", severity="warning")
        elif not isinstance(self.screen, CompletionsScreen):
            self.push_screen(CompletionsScreen(cell))

    def action_overview(self) -> None:
        """Every cell, one row each: sortable, grouped by factor (the first screen of a large sweep)."""
        if self.view is not None and not isinstance(self.screen, OverviewScreen):
            self.push_screen(OverviewScreen(self.view))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_quit_monitor(self) -> None:
        """Leave: the jobs keep running (they are detached from this terminal)."""
        self.exit(0)

    def action_stop_cell(self) -> None:
        cell = self._selected_cell()
        if cell is None:
            self.notify("Select a cell first (arrow keys).", severity="warning")
            return
        if not (self.source.managed and cell.managed):
            self.notify("Only cells that prefwatch launched can be stopped from here.", severity="warning")
            return
        if not cell.stoppable:
            self.notify(plain(f"{cell.id} has ended already ({cell.status})."), markup=False)
            return
        question = Content("").join(
            [Content("Stop cell "), literal(cell.id, "bold"), Content(f"? It is {cell.status}; its job gets SIGTERM.")]
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._stop(cell.id)

        self.push_screen(ConfirmScreen(question), answered)

    def _selected_cell(self):  # -> CellView | None
        if self.view is None:
            return None
        screen = self.screen
        if isinstance(screen, CellScreen):
            return self.view.cell(screen.cell.id)
        if isinstance(screen, GridScreen):
            panel = screen.selected()
            return self.view.cell(panel.cell_id) if panel else None
        if isinstance(screen, OverviewScreen):
            cell_id = screen.selected_id()
            return self.view.cell(cell_id) if cell_id else None
        return None

    @work(thread=True, group="stop")
    def _stop(self, cell_id: str | None) -> None:
        """Ask the jobs layer to stop one cell (None: the grid); it may wait out the grace period, so not on the UI thread."""
        try:
            outcome = jobs.request_stop(self.source.root, [cell_id] if cell_id else None)
        except (jobs.LaunchError, OSError) as exc:
            self.call_from_thread(self.notify, plain(exc), severity="error", markup=False)
            return
        for line in outcome.refused:
            self.call_from_thread(self.notify, plain(line), severity="error", markup=False)
        stopped = outcome.stopped
        if cell_id is None:
            text = f"asked {len(stopped)} cell(s) to stop: {', '.join(stopped)}" if stopped else "no cell to stop"
        else:
            text = f"{cell_id} " + ("asked to stop" if stopped else "had ended already")
        self.call_from_thread(self.notify, plain(f"{text}."), markup=False)
        if self.follower is not None:
            self.follower.nudge()

    def on_unmount(self) -> None:
        with self._follow_lock:
            self._unmounted = True
        if self.follower is not None:
            self.follower.stop()
        if self._frozen:
            gc.unfreeze()  # what the app held is collected as usual again (tests run many apps in one process)


def _freeze_startup_objects() -> None:
    """Move every object alive now (modules, the screens and panels, the logs read so far) out of the
    garbage collector's reach for the app's lifetime (``gc.freeze``; ``on_unmount`` unfreezes them).

    They live as long as the monitor anyway, and a full collection walked all of them: about 65 ms
    on the UI thread at 4 cells, a frame held back (the 1 line/s latency's p99) and a tenth of the
    monitor's CPU in a 10 s window that holds one; 6 ms with them frozen. Cyclic garbage among them
    (a footer key replaced later) waits for the unfreeze: bounded by what start-up made, once.
    """
    gc.freeze()


class IncrementalViews:
    """The grid's view from ``incremental.IncrementalAnalysis`` (the core's cache of analyses): a
    cell's view is built again only when its analysis was redone."""

    def __init__(
        self, source: GridSource, heartbeat: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.time
    ) -> None:
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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run_monitor(
    path: Path,
    *,
    mode: str = "live",
    poll: bool = False,
    speed: float | None = None,
    export_dir: Path | None = None,
    labels: dict[str, tuple[str | None, int | None]] | None = None,
) -> int:
    """Open the logs at ``path`` and run the monitor until the user quits; 0 on a normal quit.

    ``mode`` "live" follows growing files (launch, attach); "replay" reads finished logs once and
    shows them: all at once, or with ``speed`` as a time-lapse at that many times real time, by
    the logs' own timestamps (space pauses, + and - change the speed, < and > jump). ``poll``
    forces polling for file systems that deliver no change events (NFS). ``export_dir`` is where
    the cell screen's exports and screenshots go (default: the current directory). ``labels``
    names the objective and rank of cells whose folders do not say (``--label``).
    Raises ``SourceError`` when the path holds nothing readable (the CLI prints it).
    """
    wait = mode == "live"  # attach to a store with no run yet: wait for the first
    source = open_path(path, labels, wait=wait) if labels else open_path(path, wait=wait)
    app = MonitorApp(source, mode=mode, poll=poll, speed=speed, export_dir=export_dir)
    result = app.run()
    return 0 if result is None else int(result)
