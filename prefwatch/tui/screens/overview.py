"""OverviewScreen: every cell of a large sweep at once, one row each, sortable and grouped by factor.

A 64-cell sweep does not fit as panels (eight show at 120×36). The overview is a table: the
cell's factors, its state and step, held-out accuracy as a heat map, the margin gap (late train
margin minus held-out margin: what was learned that does not carry over) and the worst finding.
Rows are updated in place when their cell's version changes; the order is redone only when it
changes. Enter opens a cell; ``o`` opens the selected row's group (its cells compared).
"""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from prefwatch.core.factors import level_text, varying
from prefwatch.core.textsafe import plain
from prefwatch.tui.updates import follow_view
from prefwatch.view.model import CellView, GridView, format_value

SORTS = {"name": "name", "accuracy": "held-out accuracy", "gap": "margin gap", "state": "state"}
STATE_ORDER = ("unreadable", "failed", "lost", "stalled", "stopped", "running", "queued", "idle", "finished")
# Held-out accuracy heat map: (lower bound, style), best first.
HEAT = ((0.7, "bold black on green"), (0.6, "black on yellow"), (0.5, "black on dark_orange"), (-1.0, "white on red"))
COLUMNS = (
    ("group", 9),
    ("cell", 26),
    ("state", 9),
    ("step", 7),
    ("ho acc", 6),
    ("gap", 8),
    ("finding", 40),
)


def factor_names(grid: GridView) -> list[str]:
    """Factors that vary across the grid's cells, in the order a sweep is usually read: objective, rank,
    β, learning rate, any other setting, base model, data set, held-out set, then seed."""
    return varying([cell.factors for cell in grid.cells], skip=())


def factor_value(cell: CellView, factor: str | None) -> Any:
    if factor is None:
        return None
    if factor in ("objective", "rank", "seed"):
        return getattr(cell, factor)
    return cell.factors.get(factor)


def factor_text(value: Any, factor: str | None) -> str:
    if value is None:
        return "–" if factor else ""
    if factor == "rank":
        return f"r{value}"
    if factor == "seed":
        return f"seed {value}"
    if factor == "heldout":
        return f"{value} pairs"
    return level_text(factor or "", value)


def sort_key(cell: CellView, sort: str, group: str | None) -> tuple[Any, ...]:
    """Rows grouped by the factor first (numbers as numbers, unknown last), then by the chosen sort;
    best first for accuracy, largest gap first (the most suspicious), troubled states first."""
    value = factor_value(cell, group)
    first = (value is None, value if isinstance(value, (int, float)) else 0, str(value))
    if sort == "accuracy":
        acc = cell.heldout_accuracy
        second: tuple[Any, ...] = (acc is None or not math.isfinite(acc), -(acc or 0.0))
    elif sort == "gap":
        gap = cell.margin_gap
        second = (gap is None or not math.isfinite(gap), -(gap or 0.0))
    elif sort == "state":
        second = (STATE_ORDER.index(cell.state) if cell.state in STATE_ORDER else len(STATE_ORDER),)
    else:
        second = ()
    return (*first, *second)


def heat(accuracy: float | None) -> Text:
    if accuracy is None or not math.isfinite(accuracy):
        return Text(format_value(accuracy, signed=False), justify="right")
    style = next(style for low, style in HEAT if accuracy >= low)
    return Text(f"{accuracy:.2f}", style=style, justify="right")


def row_cells(cell: CellView, group: str | None) -> list[Text]:
    """One table row; every text is literal (Text, never markup): ids and findings come from files."""
    finding = cell.reason or ""
    severity = {"error": "bold red", "warn": "yellow"}.get(cell.severity or "", "")
    progress = f"{cell.step}" if not cell.max_steps else f"{cell.step}/{cell.max_steps}"
    return [
        Text(plain(factor_text(factor_value(cell, group), group)), style="bold"),
        Text(plain(cell.id)),
        Text(plain(cell.status if cell.state != "stalled" else "stalled"), style=severity if cell.severity else ""),
        Text(progress, justify="right"),
        heat(cell.heldout_accuracy),
        Text(format_value(cell.margin_gap), justify="right"),
        Text(plain(finding), style=severity),
    ]


class OverviewScreen(Screen[None]):
    """``o`` on the grid (the first screen of a grid of more than 16 cells): every cell, one row each."""

    DEFAULT_CSS = """
    OverviewScreen > #overview-title { height: 1; padding: 0 1; background: $panel; }
    OverviewScreen > DataTable { height: 1fr; }
    """

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Panels"),
        Binding("a", "sort('accuracy')", "By accuracy"),
        Binding("g", "sort('gap')", "By gap"),
        Binding("n", "sort('name')", "By name"),
        Binding("t", "sort('state')", "By state"),
        Binding("f", "group", "Group"),
        Binding("o", "open_group", "Open group"),
    ]

    # How the rows are ordered: setting one (a key, a test) orders them again.
    sort: var[str] = var("name", init=False)  # a key of SORTS
    group: var[str | None] = var(None, init=False)  # the factor the rows are grouped by (None: no groups)

    def __init__(self, grid: GridView) -> None:
        super().__init__()
        self.grid_view = grid
        self._versions: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []
        self._texts: dict[str, list[Text]] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="overview-title", markup=False)
        table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True)
        for label, width in COLUMNS:
            table.add_column(label, key=label, width=width)
        yield table
        yield Footer()

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one(DataTable)

    def on_mount(self) -> None:
        factors = factor_names(self.grid_view)
        self.group = factors[0] if factors else None
        self.show_grid(self.grid_view, force=True)
        self.table.focus()
        follow_view(self, self.show_grid, self.grid_view)
        self.watch(self, "sort", self._sorted, init=False)
        self.watch(self, "group", self._grouped, init=False)

    def _sorted(self) -> None:
        self._reorder()
        self._title()

    def _grouped(self) -> None:
        self.show_grid(self.grid_view, force=True)

    def show_grid(self, grid: GridView, force: bool = False) -> int:
        """Update the rows whose cell changed (all with ``force``); returns how many were rewritten."""
        self.grid_view = grid
        found = self.query(DataTable)
        if not found:
            return 0  # not composed yet (or closing): on_mount draws the newest view
        table = found.first()
        changed = 0
        for cell in grid.cells:
            version = (cell.version, self.group)
            if not force and self._versions.get(cell.id) == version:
                continue
            self._versions[cell.id] = version
            changed += 1
            values = row_cells(cell, self.group)
            shown = self._texts.get(cell.id)
            if shown is not None and cell.id in table.rows:
                # Only the cells whose text changed (mostly the step): each update re-renders the table.
                for (label, _), value, old in zip(COLUMNS, values, shown):
                    if value.plain != old.plain or value.style != old.style:
                        table.update_cell(cell.id, label, value)
            else:
                table.add_row(*values, key=cell.id)
            self._texts[cell.id] = values
        if changed or force:
            self._reorder()
        self._title()
        return changed

    def _reorder(self) -> None:
        by_id = {cell.id: cell for cell in self.grid_view.cells}
        index = {cell.id: i for i, cell in enumerate(self.grid_view.cells)}
        order = sorted(by_id, key=lambda i: (*sort_key(by_id[i], self.sort, self.group), index[i]))
        if order == self._order:
            return
        self._order = order
        # Rows are found by the text of their cell column (what row_cells wrote: plain(id)).
        position = {plain(cell_id): i for i, cell_id in enumerate(order)}
        selected = self.selected_id()
        self.table.sort("cell", key=lambda text: position.get(text.plain, len(position)))
        if selected is not None:
            self.table.move_cursor(row=self.table.get_row_index(selected))

    def _title(self) -> None:
        grid = self.grid_view
        counts = ", ".join(f"{n} {state}" for state, n in sorted(grid.counts().items()))
        group = f" · grouped by {self.group}" if self.group else ""
        text = (
            f"{grid.name}: {len(grid.cells)} cells ({counts}) · sorted by {SORTS[self.sort]}{group} · {grid.headline}"
        )
        self.query_one("#overview-title", Static).update(Text(plain(text)))

    def selected_id(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:  # an empty or not yet laid out table
            return None
        return None if key.value is None else str(key.value)

    def selected_cell_id(self) -> str | None:
        """The cell of the row under the cursor (what s, r and w act on)."""
        return self.selected_id()

    def selected(self) -> CellView | None:
        cell_id = self.selected_id()
        return self.grid_view.cell(cell_id) if cell_id else None

    def action_sort(self, sort: str) -> None:
        self.sort = sort

    def action_group(self) -> None:
        """Cycle grouping through the factors that vary (and none)."""
        options: list[str | None] = [*factor_names(self.grid_view), None]
        self.group = options[(options.index(self.group) + 1) % len(options)] if self.group in options else options[0]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        cell = self.grid_view.cell(str(event.row_key.value))
        if cell is not None:
            from prefwatch.tui.screens.cell import CellScreen

            self.app.push_screen(CellScreen(cell, getattr(self.app, "export_dir", None)))

    def action_open_group(self) -> None:
        """The selected row's group (its cells: same value of the grouping factor), compared."""
        cell = self.selected()
        if cell is None:
            return
        from dataclasses import replace

        from prefwatch.tui.screens.compare import CompareScreen

        value = factor_value(cell, self.group)
        members = [c for c in self.grid_view.cells if self.group is None or factor_value(c, self.group) == value]
        label = f"{self.group} {factor_text(value, self.group)}" if self.group else "all"
        self.app.push_screen(
            CompareScreen(replace(self.grid_view, cells=members, name=f"{self.grid_view.name} ({label})"), label)
        )
