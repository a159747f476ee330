"""GridScreen: every cell of the grid, the verdict strip and the key bindings."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from prefwatch.tui.updates import follow_view
from prefwatch.tui.widgets.cell_grid import CellGrid
from prefwatch.tui.widgets.cell_panel import CellPanel
from prefwatch.tui.widgets.summary import SummaryStrip
from prefwatch.view.model import GridView


class GridScreen(Screen[None]):
    """The monitor's main screen: the panels, the verdict strip, the keys."""

    def __init__(self) -> None:
        super().__init__()
        self.grid_view: GridView | None = None
        self._pending: tuple[str, str | None] | None = None
        self._built = False  # the panels exist (built from the first view shown)
        # Kept, not queried at every refresh (a query walks the screen's widgets).
        self._cells = CellGrid(id="cells")
        self._strip = SummaryStrip(id="summary")

    def compose(self) -> ComposeResult:
        yield self._cells
        yield self._strip
        yield Footer()

    @property
    def cells(self) -> CellGrid:
        return self._cells

    def show(self, grid: GridView, source: str, message: str | None = None) -> int:
        """Draw a new view of the grid; returns how many panels were redrawn.

        While another screen covers this one (the overview of a large sweep), the view is only
        kept: the panels are brought up to date when the screen shows again, not at every refresh,
        and made only then (a sweep of a thousand cells opens on the overview: its panels cost
        seconds that a user who never leaves the overview should not wait for).
        """
        self.grid_view = grid
        self._pending = (source, message)
        if self.app.screen is not self:  # not is_current: that counts screens behind an overlay
            return 0
        if not self._strip.is_attached:  # a view that came before the screen's widgets were mounted: on_mount draws it
            return 0
        self._strip.show(grid, source, message)
        if not self._built:
            self._built = True
            self.cells.build(grid)
            self.call_after_refresh(self.cells.focus_first)
            return len(grid.cells)
        return self.cells.show(grid)

    def on_mount(self) -> None:
        self.watch(self.app, "status", self._status_changed, init=False)
        if self.grid_view is not None and self._pending is not None:
            self.show(self.grid_view, *self._pending)
        elif hasattr(self.app, "status"):  # words that came before the screen (what the source waits for)
            self._status_changed(self.app.status)
        follow_view(self, self._view_changed, self.grid_view)

    def _view_changed(self, grid: GridView) -> None:
        """A new view (the app's ``view``), with the strip's words that came with it (its ``status``)."""
        source, message = getattr(self.app, "status", ("", None))
        self.show(grid, source, message)

    def _status_changed(self, status: tuple[str, str | None]) -> None:
        self.show_status(*status)

    def on_screen_resume(self) -> None:
        if self.grid_view is not None and self._pending is not None:
            self.show(self.grid_view, *self._pending)

    def show_status(self, source: str, message: str | None) -> None:
        """Refresh the strip alone: the follower's mode, or an error while there is nothing else to show."""
        if self._strip.is_attached:  # not yet while the screen mounts
            self._strip.show(self.grid_view, source, message)

    def selected_cell_id(self) -> str | None:
        """The focused panel's cell (what s, r and w act on)."""
        panel = self.selected()
        return panel.cell_id if panel else None

    def selected(self) -> CellPanel | None:
        focused = self.focused
        return focused if isinstance(focused, CellPanel) else None
