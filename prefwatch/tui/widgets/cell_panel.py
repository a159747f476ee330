"""CellPanel: one cell of the grid at a glance — state, progress, five curves, and what is wrong.

The panel is focusable: the focused panel is the selection that ``s`` (stop) and Enter (chart) act
on. Its border colour is the worst finding's severity, so a troubled cell stands out in a grid of
twelve before any text is read.
"""

from __future__ import annotations

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from prefwatch.textsafe import plain
from prefwatch.tui.model import PANEL_CURVES, CellView, Curve, format_value
from prefwatch.tui.text import literal, same_content
from prefwatch.tui.widgets.chart import RowRaster, same_codes, strips_of

STATE_STYLES = {
    "queued": "$text-muted",
    "running": "$text-success",
    "finished": "$text-primary",
    "failed": "bold $text-error",
    "stopped": "$text-warning",
    "lost": "bold $text-warning",
    "stalled": "bold $text-warning",
}


class MetricRow(Widget):
    """Label, latest value and a sparkline of one metric, drawn as one widget.

    One widget rather than three (two Statics and a chart): a panel has five rows and a grid a
    dozen panels, and Textual's cost per frame grows with the widgets it composes. The row grows
    in height when the panel has room, and its chart with it.
    """

    COMPONENT_CLASSES = {"metric-row--label", "metric-row--value", "metric-row--nan", "metric-row--curve"}

    DEFAULT_CSS = """
    MetricRow {
        height: 1fr;
        min-height: 1;
        max-height: 8;
    }
    MetricRow > .metric-row--label { color: $text-muted; }
    MetricRow > .metric-row--nan { color: $text-error; text-style: bold; }
    MetricRow > .metric-row--curve { color: $accent; }
    """

    LABEL_WIDTH = 10
    VALUE_WIDTH = 8

    def __init__(self, key: str, label: str) -> None:
        super().__init__(classes=f"metric-{key}")
        self.key = key
        self.label = plain(label)
        self.value_text = "–"
        self._curve: Curve | None = None
        self._x_range: tuple[float, float] = (0.0, 1.0)
        self._data_key: tuple[object, ...] = ()
        self._strips: list[Strip] | None = None
        self._strips_size: tuple[int, int] = (0, 0)
        self._codes: list[np.ndarray] | None = None
        self._codes_size: tuple[int, int] = (0, 0)  # the size the codes were computed for, when fresh
        self._raster: RowRaster | None = None  # the codes on screen and what they were computed from
        self._row_styles: dict[str, Style] | None = None
        self.repaints = 0  # whole-row repaints (tests read it: a new value alone repaints its text only)

    def show(self, cell: CellView) -> None:
        """Take this cell's curve and repaint what changed: nothing, the value's text, or the whole row.

        A new point rarely moves a dot of a 60-column chart spanning max_steps; then only the value
        is repainted (a region refresh), which is most of what a busy grid costs per frame.
        """
        curve = cell.curves[self.key]
        text = format_value(curve.latest, signed=self.key != "heldout_accuracy")
        key = (text, len(curve), curve.latest, id(curve.values.base), cell.x_range)
        if key == self._data_key:
            return
        self._data_key = key
        same_text = text == self.value_text
        self.value_text, self._curve, self._x_range = text, curve, cell.x_range
        width, height = self.outer_size
        self._codes_size = (0, 0)  # codes not computed for this curve: _draw computes them
        if self._strips is not None and self._strips_size == (width, height) and width > self.gutter_width:
            chart = (cell.x_range, self._y_range, width - self.gutter_width, height)
            drawn = self._raster
            if drawn is None or not drawn.extended(curve, *chart):
                drawn = self._raster = RowRaster(curve, *chart)
                unchanged = same_codes(drawn.codes, self._codes)
            else:
                unchanged = True  # the new points light no new dot: no raster at all
            if unchanged:
                if same_text:
                    return  # a new point at the same pixels, its value the same to the digits shown
                self._strips[0] = self._first_line(self._strips[0], width)
                self.refresh(Region(0, 0, self.gutter_width, 1))
                return
            lines = changed_lines(self._codes, drawn.codes)
            self._codes, self._codes_size = drawn.codes, (width, height)  # _draw takes them: one raster, not two
            if lines is not None:
                # A dot or two moved (the curve reached a new pixel column): only the lines holding
                # them are repainted, and the value's; Textual's cost per frame grows with dirty lines.
                self._strips = self._draw(width, height)
                self.refresh(*(Region(0, y, width, 1) for y in sorted({0, *lines})))
                return
        self._strips = None
        self.refresh()

    @property
    def gutter_width(self) -> int:
        return self.LABEL_WIDTH + self.VALUE_WIDTH + 1

    @property
    def _y_range(self) -> tuple[float, float] | None:
        return (0.0, 1.0) if self.key == "heldout_accuracy" else None

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips = None
        self._row_styles = None

    def _style(self, name: str) -> Style:
        """The row's styles, looked up once per style change (rich_style walks the ancestors: slow)."""
        if self._row_styles is None:
            base = self.rich_style
            part = self.get_component_rich_style
            self._row_styles = {
                "base": base,
                "label": base + part("metric-row--label", partial=True),
                "value": base + part("metric-row--value", partial=True),
                "nan": base + part("metric-row--nan", partial=True),
                "curve": part("metric-row--curve", partial=True),
            }
        return self._row_styles[name]

    def render_line(self, y: int) -> Strip:
        # outer_size, not size: the row has no border or padding, and ``size`` looks the widget up
        # on its screen, once per line of every row of every panel in a frame.
        width, height = self.outer_size
        if self._strips is None or self._strips_size != (width, height):
            self._strips, self._strips_size = self._draw(width, height), (width, height)
        return self._strips[y] if y < len(self._strips) else Strip.blank(width, self._style("base"))

    def _draw(self, width: int, height: int) -> list[Strip]:
        self.repaints += 1
        base = self._style("base")
        chart_width = max(0, width - self.gutter_width)
        if self._codes is None or self._codes_size != (width, height):
            self._raster = None
            if self._curve is not None:
                self._raster = RowRaster(self._curve, self._x_range, self._y_range, chart_width, height)
            self._codes = self._raster.codes if self._raster is not None else []
        self._codes_size = (0, 0)
        charts = strips_of(self._codes, [self._style("curve")], base, chart_width, height)
        blank = Strip.blank(self.gutter_width, base)
        rows = [Strip.join([self._gutter_strip() if row == 0 else blank, charts[row]]) for row in range(height)]
        return [row.adjust_cell_length(width, base) for row in rows]

    def _gutter_strip(self) -> Strip:
        value_style = self._style("nan" if self.value_text == "nan" else "value")
        return Strip(
            [
                Segment(self.label[: self.LABEL_WIDTH].ljust(self.LABEL_WIDTH), self._style("label")),
                Segment(self.value_text.rjust(self.VALUE_WIDTH) + " ", value_style),
            ]
        )

    def _first_line(self, old: Strip, width: int) -> Strip:
        chart = old.crop(self.gutter_width, width)
        return Strip.join([self._gutter_strip(), chart]).adjust_cell_length(width, self._style("base"))


def changed_lines(old: list[np.ndarray] | None, new: list[np.ndarray]) -> list[int] | None:
    """The text lines whose braille codes differ (None when the charts are not comparable line by line)."""
    if old is None or len(old) != len(new) or any(a.shape != b.shape for a, b in zip(old, new)):
        return None
    if not new:
        return []
    differ = np.zeros(new[0].shape[0], dtype=bool)
    for a, b in zip(old, new):
        differ |= (a != b).any(axis=1)
    return [int(y) for y in np.flatnonzero(differ)]


class CellPanel(Vertical, can_focus=True):
    """A grid cell: id in the border, state and step, the five curves, and the reason for its colour."""

    DEFAULT_CSS = """
    CellPanel {
        border: round $panel-lighten-2;
        border-title-color: $text;
        border-title-style: bold;
        padding: 0 1;
        height: 1fr;
        width: 1fr;
        min-height: 9;
    }
    CellPanel:focus { border: heavy $accent; background: $boost; }
    CellPanel.-warn { border: round $warning; }
    CellPanel.-warn:focus { border: heavy $warning; }
    CellPanel.-error { border: round $error; }
    CellPanel.-error:focus { border: heavy $error; }
    CellPanel > .cell-status { height: 1; }
    CellPanel > .cell-reason { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    CellPanel.-warn > .cell-reason { color: $text-warning; }
    CellPanel.-error > .cell-reason { color: $text-error; }
    """

    class Selected(Message):
        """Enter on a panel: open its chart screen."""

        def __init__(self, cell_id: str) -> None:
            super().__init__()
            self.cell_id = cell_id

    BINDINGS = [Binding("enter", "open", "Chart", tooltip="charts of the selected cell (escape to come back)")]

    def __init__(self, cell: CellView, position: tuple[int, int]) -> None:
        super().__init__()
        self.cell_id = cell.id
        self.position = position
        self._view = cell
        self._shown_version: tuple[object, ...] | None = None
        self._status = Static(classes="cell-status")
        self._rows = [MetricRow(key, label) for key, label in PANEL_CURVES]
        self._reason = Static(classes="cell-reason")
        self._shown_text: tuple[Content | None, Content | None] = (None, None)  # status and reason on screen
        self.border_title = literal(cell.id)

    def compose(self) -> ComposeResult:
        yield self._status
        yield from self._rows
        yield self._reason

    def on_mount(self) -> None:
        self.show(self._view, force=True)

    @property
    def view(self) -> CellView:
        return self._view

    def keep(self, cell: CellView) -> None:
        """Hold a view that came before the panel was mounted: on_mount draws it."""
        self._view = cell

    def show(self, cell: CellView, force: bool = False) -> bool:
        """Draw this cell; skipped (False) when nothing it shows has changed since the last call."""
        self._view = cell
        if not force and cell.version == self._shown_version:
            return False
        self._shown_version = cell.version
        status, reason = status_line(cell), literal(cell.reason or "")
        shown_status, shown_reason = self._shown_text
        if not same_content(status, shown_status):
            self._status.update(status, layout=False)
        for row in self._rows:
            row.show(cell)
        if not same_content(reason, shown_reason):
            self._reason.update(reason, layout=False)
        self._shown_text = (status, reason)
        self.set_class(cell.severity == "warn", "-warn")
        self.set_class(cell.severity == "error", "-error")
        return True

    def action_open(self) -> None:
        self.post_message(self.Selected(self.cell_id))

    def on_click(self) -> None:
        self.focus()


def status_line(cell: CellView) -> Content:
    """``running  step 120/400`` with the state coloured; built from parts, never parsed as markup."""
    state = literal(cell.status, STATE_STYLES.get(cell.state, ""))
    progress = f"step {cell.step}/{cell.max_steps}" if cell.max_steps else f"step {cell.step}"
    parts = [state, Content("  "), literal(progress)]
    if cell.seed is not None:
        parts.append(literal(f"  seed {cell.seed}", "$text-muted"))
    if cell.rejected:
        lines = "line" if cell.rejected == 1 else "lines"
        parts.append(literal(f"  {cell.rejected} bad {lines}", "$text-warning"))
    if cell.system:
        parts.append(literal(f"  {cell.system}", "$text-muted"))
    return Content("").join(parts)
