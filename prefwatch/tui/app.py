"""The monitor app and ``run_monitor``, the one entry point the CLI calls.

The app draws, asks and acts on keys; it does not read. ``prefwatch.view.feed.Feed`` reads the logs
off the UI thread, paces the refreshes and decides what is news; each refresh arrives as a
``GridUpdated`` message carrying its view, and the app publishes the view in its ``view`` reactive,
which every screen showing the grid follows (``prefwatch.tui.updates``). The monitor reads only;
quitting leaves every job running.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterable
from pathlib import Path

from textual import work
from textual.app import SystemCommand
from textual.binding import Binding
from textual.notifications import SeverityLevel
from textual.reactive import var
from textual.screen import Screen

from prefwatch.analysis.incremental import HEARTBEAT_SECONDS
from prefwatch.core.textsafe import plain
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.replay import ReplayGrid
from prefwatch.ingest.sources import GridSource
from prefwatch.tui.control import CellControl
from prefwatch.tui.screens.cell import CellScreen
from prefwatch.tui.screens.compare import CompareScreen
from prefwatch.tui.screens.completions import CompletionsScreen
from prefwatch.tui.screens.grid import GridScreen
from prefwatch.tui.screens.help import HelpScreen
from prefwatch.tui.screens.overview import OverviewScreen
from prefwatch.tui.themes import ThemedApp
from prefwatch.tui.updates import GridUpdated
from prefwatch.tui.widgets.cell_panel import CellPanel
from prefwatch.view.feed import REDRAW_INTERVAL, Feed, News
from prefwatch.view.model import CellView, GridView

MODES = ("live", "replay")
REPLAY_TICK = 0.25  # seconds between replay frames
OVERVIEW_FROM = 17  # a grid of this many cells opens on the overview (one row a cell), not the panels
# A large grid's first frame shows the cells' figures; the full analysis waits for it to be drawn, at
# most this long (drawing a thousand cells' overview took 0.4 s of CPU on a quiet machine: a loaded
# one gets several times that before the findings start anyway).
FIRST_FRAME_WAIT = 2.0
TOAST_SEVERITY: dict[str, SeverityLevel] = {"info": "information", "warn": "warning", "error": "error"}
LIVE_COMMANDS = (
    ("Stop the selected cell", "SIGTERM to its job, after a confirmation", "stop_cell"),
    ("Stop the whole grid", "Every cell that has not ended, after a confirmation", "stop_grid"),
    ("Restart the selected cell", "A failed, stopped or lost cell, from its last checkpoint", "restart_cell"),
)
REPLAY_COMMANDS = (
    ("Replay: play or pause", "The time-lapse of the logs", "replay_toggle"),
    ("Replay: to the start", "Back to the first logged line", "replay_seek(0)"),
    ("Replay: to the end", "Every line, as the run ended", "replay_seek(1)"),
)


class StartupFreeze:
    """Moves every object alive after the first frames (modules, the screens and panels, the logs read
    so far) out of the garbage collector's reach for the app's lifetime (``gc.freeze``).

    They live as long as the monitor anyway, and a full collection walked all of them: about 65 ms
    on the UI thread at 4 cells, a frame held back (the 1 line/s latency's p99) and a tenth of the
    monitor's CPU in a 10 s window that holds one; 6 ms with them frozen. Cyclic garbage among them
    (a footer key replaced later) waits for ``release``: bounded by what start-up made, once.
    """

    def __init__(self) -> None:
        self.frozen = False

    def after_refresh(self, app: MonitorApp) -> None:
        if not self.frozen:
            self.frozen = True
            app.call_after_refresh(gc.freeze)

    def release(self) -> None:
        if self.frozen:
            gc.unfreeze()  # what the app held is collected as usual again (tests run many apps in one process)


class MonitorApp(ThemedApp):
    """Watches a grid's logs and shows every cell, the findings and the verdict."""

    CSS_PATH = Path(__file__).with_name("prefwatch.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "prefwatch"
    BINDINGS = [
        Binding("q", "quit_monitor", "Quit", tooltip="quit the monitor — the jobs keep running"),
        Binding("s", "stop_cell", "Stop cell", tooltip="stop the selected cell (asks first; launched grids only)"),
        Binding("c", "compare", "Compare", tooltip="compare one metric across all cells"),
        Binding("o", "overview", "Overview", tooltip="every cell in one row: sortable, grouped by factor"),
        Binding("w", "completions", "Writes", tooltip="what the selected cell's model writes, beside the reference's answers"),
        Binding("X", "stop_grid", "Stop grid", show=False, tooltip="stop the whole grid (asks first)"),
        Binding("r", "restart_cell", "Restart", show=False, tooltip="restart a failed, stopped or lost cell from its checkpoint (asks)"),
        Binding("T", "toggle_theme", "Light/dark", show=False, tooltip="light or dark theme"),
        Binding("space", "replay_toggle", "Play/pause", tooltip="a timed replay: play or pause"),
        Binding("plus,equals_sign", "replay_speed(1)", "Faster", key_display="+", tooltip="a timed replay: faster"),
        Binding("minus", "replay_speed(-1)", "Slower", key_display="-", tooltip="a timed replay: slower"),
        Binding("greater_than_sign,full_stop", "replay_jump(0.05)", "Jump", key_display=">", tooltip="a timed replay: jump forward"),
        Binding("less_than_sign,comma", "replay_jump(-0.05)", "Back", key_display="<", tooltip="a timed replay: jump back"),
        Binding("home", "replay_seek(0)", "Start", show=False, tooltip="a timed replay: to the start"),
        Binding("end", "replay_seek(1)", "End", show=False, tooltip="a timed replay: to the end"),
        Binding("question_mark", "help", "Help", tooltip="this help"),
    ]  # fmt: skip

    # The newest view of the grid; screens follow it (updates.follow_view). Always "changed": a view is
    # a new object each refresh, and comparing two would compare their arrays.
    view: var[GridView | None] = var(None, always_update=True)
    # The strip's words: where the data comes from, and an error or what the source waits for.
    status: var[tuple[str, str | None]] = var(("live (starting)", None))
    # A timed replay's speed, times real time (None: no timed replay).
    replay_speed: var[float | None] = var(None)

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
        self.export_dir = export_dir  # where exports and screenshots go (default: the current directory)
        self.refreshes = 0  # views drawn (tests and the benchmark read it)
        self.set_reactive(MonitorApp.replay_speed, speed if mode == "replay" else None)
        self.feed = Feed(
            source,
            lambda update: self.post_message(GridUpdated(update)),
            live=mode == "live",
            poll=poll,
            redraw_interval=redraw_interval,
            heartbeat=heartbeat,
            replay_speed=self.replay_speed,
            frame_wait=FIRST_FRAME_WAIT,
        )
        self.control = CellControl(self, source, self.feed.nudge)
        self._freeze = StartupFreeze()

    @property
    def replay(self) -> ReplayGrid | None:
        """A timed replay, once the feed has read its logs (the keys move its clock)."""
        return self.feed.replay

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): Textual's own commands and the monitor's actions."""
        yield from super().get_system_commands(screen)
        commands = [
            ("Compare cells", "One metric across every cell", "compare"),
            ("Overview of every cell", "One row a cell: sortable, grouped by factor", "overview"),
            ("Toggle light/dark theme", "Switch between the light and the dark theme", "toggle_theme"),
            ("Help: keys and colours", "What every key does", "help"),
            *(LIVE_COMMANDS if self.mode == "live" else ()),
            *(REPLAY_COMMANDS if self.replay is not None else ()),
        ]
        for title, help, action in commands:
            yield SystemCommand(title, help, functools.partial(self.call_later, self.run_action, action))

    def get_default_screen(self) -> GridScreen:
        return GridScreen()

    # ---- the feed ----------------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.sub_title = plain(str(self.source.root))
        if self.mode == "live":
            self.set_interval(self.feed.heartbeat, self.feed.heartbeat_tick)
        if self.replay_speed is not None:
            self.set_interval(REPLAY_TICK, self._replay_tick)
        self._read()

    @work(thread=True, exclusive=True, group="read")
    def _read(self) -> None:
        """The feed's first read (every log there is), then it follows them from its own thread."""
        self.feed.start()

    def _replay_tick(self) -> None:
        if self.replay is not None:
            self._replay_step()

    @work(thread=True, exclusive=True, group="read")
    def _replay_step(self) -> None:
        self.feed.replay_step()

    def on_grid_updated(self, message: GridUpdated) -> None:
        """Publish the feed's newest view (the screens follow ``view``) and tell its news."""
        update = message.update
        if not self.screen_stack or not isinstance(self.screen_stack[0], GridScreen):
            return  # the app is closing: a reading thread posted once more on its way out
        if update.error:
            self.log.error(update.error)
        if update.view is None:
            self.status = (update.label, update.message)
            return
        first = self.view is None
        self.refreshes += 1
        if not first:
            self._freeze.after_refresh(self)
        if first and len(update.view.cells) >= OVERVIEW_FROM and self.screen is self.screen_stack[0]:
            self.push_screen(OverviewScreen(update.view))  # first: the panels behind it are made when shown
        self.set_reactive(MonitorApp.status, (update.label, update.message))
        self.view = update.view
        if not update.view.complete:
            self.call_after_refresh(self.feed.drawn)  # the figures are on screen: the findings may come
        if update.news is not None:
            # After the frame that shows the new values: a toast mounts a widget and lays the screen
            # out again (tens of milliseconds), which would hold those values back. And queued behind
            # the other after-frame callbacks, not among them: one that waits for this frame (a test,
            # the latency benchmark's stamp) would otherwise wait for the toast's layout too.
            self.call_after_refresh(self.call_later, self._toast, update.news)

    def _toast(self, news: News) -> None:
        """Bell and one short notification when cells finish, fail, stall or are lost, or show a new finding."""
        self.notify(news.text, severity=TOAST_SEVERITY[news.severity], markup=False, timeout=6)
        self.bell()

    def on_unmount(self) -> None:
        self.feed.stop()
        self._freeze.release()

    # ---- screens -----------------------------------------------------------------------------------

    def on_cell_panel_selected(self, event: CellPanel.Selected) -> None:
        cell = self.view.cell(event.cell_id) if self.view else None
        if cell is not None:
            self.push_screen(CellScreen(cell, self.export_dir))

    def _selected_cell(self) -> CellView | None:
        """The cell the current screen has selected (screens that select one say so: ``selected_cell_id``)."""
        selected = getattr(self.screen, "selected_cell_id", None)
        cell_id = selected() if selected is not None else None
        return self.view.cell(cell_id) if self.view is not None and cell_id else None

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

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme != "textual-light" else "textual-dark"

    def action_quit_monitor(self) -> None:
        """Leave: the jobs keep running (they are detached from this terminal)."""
        self.exit(0)

    # ---- acting on jobs (a live grid that prefwatch launched) ----------------------------------------

    def action_stop_cell(self) -> None:
        self.control.stop_cell(self._selected_cell())

    def action_stop_grid(self) -> None:
        self.control.stop_grid(self.view)

    def action_restart_cell(self) -> None:
        self.control.restart_cell(self._selected_cell())

    # ---- a timed replay ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action.startswith("replay_"):
            return self.replay is not None
        if action in ("stop_cell", "stop_grid", "restart_cell"):
            return self.mode == "live"  # a replay's jobs ended long ago
        return True

    def watch_replay_speed(self, speed: float | None) -> None:
        """The clock runs at the new speed from now on (the time so far counted at the old one)."""
        if self.replay is not None and speed is not None and speed != self.replay.clock.speed:
            self.replay.clock.now()
            self.replay.clock.speed = speed
        self._replay_tick()

    def action_replay_toggle(self) -> None:
        if self.replay is not None:
            self.replay.clock.toggle()
            self._replay_step()

    def action_replay_speed(self, factor: int) -> None:
        """One step along the clock's speeds (1x to 3600x)."""
        if self.replay is not None:
            self.replay.clock.faster(factor)
            self.replay_speed = self.replay.clock.speed

    def action_replay_jump(self, fraction: float) -> None:
        if self.replay is not None:
            self.replay.clock.jump(fraction)
            self._replay_step()

    def action_replay_seek(self, fraction: float) -> None:
        if self.replay is not None:
            self.replay.clock.seek(fraction)
            self._replay_step()


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
