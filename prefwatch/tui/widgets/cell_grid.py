"""CellGrid: the panels laid out objectives × ranks, scrolling when they do not fit.

Rows share the height and columns the width while each panel keeps at least its minimum size;
below that the grid switches to fixed sizes and scrolls, so a 12-cell grid stays readable on a
small terminal and fills a large one.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import ScrollableContainer
from textual.widget import Widget
from textual.widgets import Static

from prefwatch.tui.widgets.cell_panel import CellPanel
from prefwatch.view.model import GridView, grid_positions

MIN_PANEL_WIDTH = 38
MIN_PANEL_HEIGHT = 9


class CellGrid(ScrollableContainer, can_focus=False, inherit_bindings=False):
    """Arrow keys (and h j k l) move the selection in grid order; the view scrolls to follow it.

    The container's own arrow-key scrolling is not inherited: it would take the keys first.
    """

    BINDINGS = [
        Binding("up,k", "move(-1, 0)", "Up", show=False, tooltip="select the cell above"),
        Binding("down,j", "move(1, 0)", "Down", show=False, tooltip="select the cell below"),
        Binding("left,h", "move(0, -1)", "Left", show=False, tooltip="select the cell to the left"),
        Binding("right,l", "move(0, 1)", "Right", show=False, tooltip="select the cell to the right"),
    ]

    DEFAULT_CSS = """
    CellGrid {
        layout: grid;
        grid-gutter: 0 0;
        height: 1fr;
    }
    CellGrid > .empty-slot { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows = self.columns = 1
        self._panels: dict[str, CellPanel] = {}
        self._positions: dict[str, tuple[int, int]] = {}
        self._rebuilding = False

    def build(self, grid: GridView) -> None:
        """Create the panels from a view; again (``show``) when cells appear or move (a run started in a
        tracker's store, a cell's objective read from its logs)."""
        positions, self.rows, self.columns = grid_positions(grid.cells, grid.objectives, grid.ranks)
        self._positions = positions
        by_position = {positions[c.id]: c for c in grid.cells}
        widgets: list[Widget] = []
        for row in range(self.rows):
            for column in range(self.columns):
                cell = by_position.get((row, column))
                if cell is None:
                    widgets.append(Static(classes="empty-slot"))
                else:
                    panel = CellPanel(cell, (row, column))
                    self._panels[cell.id] = panel
                    widgets.append(panel)
        self.styles.grid_size_columns = self.columns
        self.styles.grid_size_rows = self.rows
        self._fit()
        self.mount_all(widgets)

    @property
    def panels(self) -> dict[str, CellPanel]:
        return self._panels

    def show(self, grid: GridView) -> int:
        """Update the panels whose cell changed; returns how many were redrawn. Cells that appeared (or
        moved) lay the panels out again, the selected cell kept selected."""
        if self._rebuilding:
            return 0
        if grid_positions(grid.cells, grid.objectives, grid.ranks)[0] != self._positions:
            self._rebuilding = True
            self.app.call_later(self._rebuild, grid)
            return len(grid.cells)
        redrawn = 0
        for cell in grid.cells:
            panel = self._panels.get(cell.id)
            if panel is not None and panel.is_mounted:
                redrawn += panel.show(cell)
            elif panel is not None:
                panel.keep(cell)  # not mounted yet: it draws the newest view when it is
        return redrawn

    async def _rebuild(self, grid: GridView) -> None:
        focused = self.screen.focused
        selected = focused.cell_id if isinstance(focused, CellPanel) else None
        try:
            await self.remove_children()
            self._panels = {}
            self.build(getattr(self.screen, "grid_view", None) or grid)  # the newest view, not the one that asked
        finally:
            self._rebuilding = False
        panel = self._panels.get(selected) if selected is not None else None
        if panel is not None:
            self.call_after_refresh(panel.focus)
        else:
            self.call_after_refresh(self.focus_first)

    def panel_at(self, row: int, column: int) -> CellPanel | None:
        return next((p for p in self._panels.values() if p.position == (row, column)), None)

    def action_move(self, rows: int, columns: int) -> None:
        focused = self.screen.focused
        if not isinstance(focused, CellPanel):
            self.focus_first()
            return
        row, column = focused.position
        while 0 <= row < self.rows and 0 <= column < self.columns:
            row, column = row + rows, column + columns
            panel = self.panel_at(row, column)
            if panel is not None:
                panel.focus()
                self.scroll_to_widget(panel, animate=False)
                return

    def focus_first(self) -> None:
        if self._panels and not isinstance(self.screen.focused, CellPanel):
            min(self._panels.values(), key=lambda p: p.position).focus()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        width, height = self.size
        fits_rows = height >= self.rows * MIN_PANEL_HEIGHT or height == 0
        fits_columns = width >= self.columns * MIN_PANEL_WIDTH or width == 0
        self.styles.grid_rows = "1fr" if fits_rows else str(MIN_PANEL_HEIGHT)
        self.styles.grid_columns = "1fr" if fits_columns else str(MIN_PANEL_WIDTH)
        self.styles.height = "1fr"
