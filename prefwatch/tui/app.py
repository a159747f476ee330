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

import threading
import time
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.content import Content
from textual.message import Message

from prefwatch import jobs
from prefwatch.analysis import analyse
from prefwatch.ingest.sources import GridSource, open_path
from prefwatch.ingest.watch import Follower
from prefwatch.textsafe import plain
from prefwatch.tui.model import GridView, grid_view
from prefwatch.tui.screens.cell import CellScreen
from prefwatch.tui.screens.confirm import ConfirmScreen
from prefwatch.tui.screens.grid import GridScreen
from prefwatch.tui.screens.help import HelpScreen
from prefwatch.tui.text import literal
from prefwatch.tui.widgets.cell_panel import CellPanel

MODES = ("live", "replay")
REDRAW_INTERVAL = 0.25  # at most 4 frames a second while lines pour in (charts.md: CPU vs latency)
HEARTBEAT_SECONDS = 5.0  # re-check states that change without a file changing (stalled, lost)
READ_SHARE = 0.33  # reading and analysing may take at most this share of a core: huge logs refresh less often


class ViewReady(Message):
    """A new GridView waits in the app's mailbox."""


class MonitorApp(App[int]):
    """Watches a grid's logs and shows every cell, the findings and the verdict."""

    CSS_PATH = Path(__file__).with_name("prefwatch.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "prefwatch"
    BINDINGS = [
        Binding("q", "quit_monitor", "Quit"),
        Binding("s", "stop_cell", "Stop cell"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(
        self,
        source: GridSource,
        *,
        mode: str = "live",
        poll: bool = False,
        redraw_interval: float = REDRAW_INTERVAL,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        super().__init__()
        self.source = source
        self.mode = mode
        self.poll = poll
        self.redraw_interval = redraw_interval
        self.heartbeat = heartbeat
        self.follower: Follower | None = None
        self.view: GridView | None = None
        self.refreshes = 0  # views drawn (tests and the benchmark read it)
        self._mailbox: GridView | None = None
        self._mailbox_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._follow_lock = threading.Lock()
        self._unmounted = False
        self._error: str | None = None

    def get_default_screen(self) -> GridScreen:
        return GridScreen()

    @property
    def source_label(self) -> str:
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
        self._read_and_post()
        if self.mode == "live":
            self._start_following()

    def _start_following(self) -> None:
        with self._follow_lock:
            if self._unmounted:
                return
            paths = [p for cell in self.source.cells for p in cell.watched_paths()]
            self.follower = Follower(paths, self._read_and_post, poll=self.poll, min_interval=self.redraw_interval)
            self.follower.start()
        self.post_message(ViewReady())  # the strip names the follower's mode now

    def _nudge(self) -> None:
        if self.follower is not None:
            self.follower.nudge()

    def _read_and_post(self) -> None:
        """Poll the logs and analyse them; runs off the UI thread, never twice at once."""
        with self._read_lock:
            started = time.perf_counter()
            try:
                self.source.poll()
                view: GridView | None = grid_view(analyse(self.source))
                self._error = None
            except Exception as exc:  # an analysis bug must not take the monitor down with it
                self._error = plain(f"could not read the logs: {type(exc).__name__}: {exc}")
                view = None
            self._pace(time.perf_counter() - started)
            with self._mailbox_lock:
                empty = self._mailbox is None
                if view is not None:
                    self._mailbox = view
            if empty:
                self.post_message(ViewReady())

    def _pace(self, seconds: float) -> None:
        """Space refreshes so that reading takes at most READ_SHARE of a core (analysis grows with the logs)."""
        if self.follower is not None:
            self.follower.min_interval = max(self.redraw_interval, seconds / READ_SHARE)

    # ---- drawing (UI thread) -------------------------------------------------------------------

    def on_view_ready(self, _: ViewReady) -> None:
        """Draw the newest view waiting in the mailbox (or, with none, refresh the strip's message)."""
        with self._mailbox_lock:
            view, self._mailbox = self._mailbox, None
        grid_screen = self._grid_screen()
        if view is None:
            grid_screen.show_status(self.source_label, self._error)
            return
        if self._error:
            self.log.error(self._error)
        self.view = view
        self.refreshes += 1
        grid_screen.show(view, self.source_label, self._error)
        for screen in self.screen_stack:
            if isinstance(screen, CellScreen):
                cell = view.cell(screen.cell.id)
                if cell is not None and cell.version != screen.cell.version:
                    screen.show_cell(cell)

    def _grid_screen(self) -> GridScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, GridScreen)
        return screen

    def on_cell_panel_selected(self, event: CellPanel.Selected) -> None:
        cell = self.view.cell(event.cell_id) if self.view else None
        if cell is not None:
            self.push_screen(CellScreen(cell))

    # ---- actions -------------------------------------------------------------------------------

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
        return None

    @work(thread=True, group="stop")
    def _stop(self, cell_id: str) -> None:
        """Ask the jobs layer to stop one cell; it may wait for the grace period, so not on the UI thread."""
        try:
            stopped = jobs.request_stop(self.source.root, [cell_id])
        except (jobs.LaunchError, OSError) as exc:
            self.call_from_thread(self.notify, plain(exc), severity="error", markup=False)
            return
        text = "asked to stop" if stopped else "had ended already"
        self.call_from_thread(self.notify, plain(f"{cell_id} {text}."), markup=False)
        if self.follower is not None:
            self.follower.nudge()

    def on_unmount(self) -> None:
        with self._follow_lock:
            self._unmounted = True
        if self.follower is not None:
            self.follower.stop()


def run_monitor(path: Path, *, mode: str = "live", poll: bool = False) -> int:
    """Open the logs at ``path`` and run the monitor until the user quits; 0 on a normal quit.

    ``mode`` "live" follows growing files (launch, attach); "replay" reads finished logs once and
    shows them. ``poll`` forces polling for file systems that deliver no change events (NFS).
    Raises ``SourceError`` when the path holds nothing readable (the CLI prints it).
    """
    source = open_path(path)
    app = MonitorApp(source, mode=mode, poll=poll)
    result = app.run()
    return 0 if result is None else int(result)
