"""CellPanel: one cell of the grid at a glance — state, progress, five curves, and what is wrong.

The panel is focusable: the focused panel is the selection that ``s`` (stop) and Enter (chart) act
on. Its border colour is the worst finding's severity, so a troubled cell stands out in a grid of
twelve before any text is read.
"""

from __future__ import annotations

from fractions import Fraction
from math import floor
from typing import NamedTuple

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.content import Content
from textual.css.styles import RulesMap
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.visual import RenderOptions
from textual.widget import Widget

from prefwatch.core.textsafe import plain
from prefwatch.tui.text import literal, same_content
from prefwatch.tui.widgets.chart import RowRaster, same_codes, strips_of
from prefwatch.view.model import PANEL_CURVES, UNSIGNED_CURVES, CellView, Curve, format_value

STATE_STYLES = {
    "queued": "$text-muted",
    "running": "$text-success",
    "finished": "$text-primary",
    "failed": "bold $text-error",
    "stopped": "$text-warning",
    "lost": "bold $text-warning",
    "stalled": "bold $text-warning",
    "unreadable": "bold $text-error",
}


class RowStyles(NamedTuple):
    """The rich styles a metric row is drawn with, looked up once per style change of its panel
    (a component style walks the ancestors: too slow for every line of every frame)."""

    base: Style = Style()
    label: Style = Style()
    value: Style = Style()
    nan: Style = Style()
    curve: Style = Style()


class MetricRow:
    """Label, latest value and a sparkline of one metric: a band of its panel's lines, drawn by the panel.

    Not a widget: a panel draws its status line, its five rows and its reason line itself (one
    widget), because Textual's cost per frame grows with the widgets refreshed (each is a message
    round and a render of its own), and a live grid refreshes every panel's value and status at
    every line. The row keeps its strips and tells the panel which of its lines changed.
    """

    LABEL_WIDTH = 10
    VALUE_WIDTH = 8
    GUTTER_WIDTH = LABEL_WIDTH + VALUE_WIDTH + 1

    def __init__(self, key: str, label: str) -> None:
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
        self.repaints = 0  # whole-row repaints (tests read it: a new value alone repaints its text only)
        self._styles = RowStyles()
        self._chart_top = Strip.blank(0)

    def show(self, cell: CellView) -> list[Region] | None:
        """Take this cell's curve; the regions of the row to repaint ([] for none, None for all of it).

        A new point rarely moves a dot of a 60-column chart spanning max_steps; then only the value
        is repainted, which is most of what a busy grid costs per frame.
        """
        curve = cell.curves[self.key]
        if self.key == "completion_tokens" and curve.latest is not None and curve.latest == curve.latest:
            text = f"{curve.latest:.1f}"  # a mean of token counts: one decimal says it
        else:
            text = format_value(curve.latest, signed=self.key not in UNSIGNED_CURVES)
        key = (text, len(curve), curve.latest, id(curve.values.base), cell.x_range)
        if key == self._data_key:
            return []
        self._data_key = key
        same_text = text == self.value_text
        self.value_text, self._curve, self._x_range = text, curve, cell.x_range
        width, height = self._strips_size
        self._codes_size = (0, 0)  # codes not computed for this curve: _draw computes them
        if self._strips is not None and width > self.GUTTER_WIDTH:
            chart = (cell.x_range, self._y_range, width - self.GUTTER_WIDTH, height)
            drawn = self._raster
            if drawn is None or not drawn.extended(curve, *chart):
                drawn = self._raster = RowRaster(curve, *chart)
                unchanged = same_codes(drawn.codes, self._codes)
            else:
                unchanged = True  # the new points light no new dot: no raster at all
            if unchanged:
                if same_text:
                    return []  # a new point at the same pixels, its value the same to the digits shown
                self._strips[0] = self._first_line(width)
                return [Region(0, 0, self.GUTTER_WIDTH, 1)]
            lines = changed_lines(self._codes, drawn.codes)
            self._codes, self._codes_size = drawn.codes, (width, height)  # _draw takes them: one raster, not two
            if lines is not None:
                # A dot or two moved (the curve reached a new pixel column): only the lines holding
                # them are repainted, and the value's; Textual's cost per frame grows with dirty lines.
                self._strips = self._draw(width, height)
                return [Region(0, y, width, 1) for y in sorted({0, *lines})]
        self._strips = None
        return None

    @property
    def _y_range(self) -> tuple[float, float] | None:
        return (0.0, 1.0) if self.key == "heldout_accuracy" else None

    def restyle(self, styles: RowStyles) -> None:
        """The panel's styles changed (focus, theme): the strips are drawn again with these."""
        self._styles = styles
        self._strips = None

    def lines(self, width: int, height: int, styles: RowStyles) -> list[Strip]:
        """The row's ``height`` lines at ``width`` cells, drawn when the data, the size or the styles changed."""
        self._styles = styles
        if self._strips is None or self._strips_size != (width, height):
            self._strips, self._strips_size = self._draw(width, height), (width, height)
        return self._strips

    def _draw(self, width: int, height: int) -> list[Strip]:
        self.repaints += 1
        base = self._styles.base
        chart_width = max(0, width - self.GUTTER_WIDTH)
        if self._codes is None or self._codes_size != (width, height):
            self._raster = None
            if self._curve is not None:
                self._raster = RowRaster(self._curve, self._x_range, self._y_range, chart_width, height)
            self._codes = self._raster.codes if self._raster is not None else []
        self._codes_size = (0, 0)
        charts = strips_of(self._codes, [self._styles.curve], base, chart_width, height)
        self._chart_top = charts[0] if charts else Strip.blank(chart_width, base)  # the value's line, redrawn alone
        blank = Strip.blank(self.GUTTER_WIDTH, base)
        rows = [Strip.join([self._gutter_strip() if row == 0 else blank, charts[row]]) for row in range(height)]
        return [row.adjust_cell_length(width, base) for row in rows]

    def _gutter_strip(self) -> Strip:
        styles = self._styles
        return Strip(
            [
                Segment(self.label[: self.LABEL_WIDTH].ljust(self.LABEL_WIDTH), styles.label),
                Segment(
                    self.value_text.rjust(self.VALUE_WIDTH) + " ",
                    styles.nan if self.value_text == "nan" else styles.value,
                ),
            ]
        )

    def _first_line(self, width: int) -> Strip:
        """The row's first line with a new value beside the same chart (no crop of the old line)."""
        return Strip.join([self._gutter_strip(), self._chart_top]).adjust_cell_length(width, self._styles.base)


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


def row_spans(content_height: int, rows: int = len(PANEL_CURVES)) -> list[tuple[int, int]]:
    """(first line, height) of each metric row in a panel's content: the status line above, the
    reason line below, the rows sharing the rest equally, each 1 to 8 lines tall.

    Placed as Textual's vertical layout places ``height: 1fr; min-height: 1; max-height: 8``
    widgets between two of ``height: 1`` (the panel was laid out that way when its rows were
    widgets): the same size of 1fr, and each row's top at the floor of the running total.
    """
    share = Fraction(content_height - 2, rows) if content_height > 2 else Fraction(1)
    share = min(max(share, Fraction(1)), Fraction(MAX_ROW_HEIGHT))
    spans, top = [], Fraction(1)
    for _ in range(rows):
        bottom = top + share
        spans.append((floor(top), floor(bottom) - floor(top)))
        top = bottom
    return spans


MAX_ROW_HEIGHT = 8
STATUS_RULES = RulesMap()  # as a Static of one line: wrapped, its first line shown
REASON_RULES = RulesMap(text_wrap="nowrap", text_overflow="ellipsis")  # cut with an ellipsis


class CellPanel(Widget, can_focus=True):
    """A grid cell: id in the border, state and step, the five curves, and the reason for its colour.

    One widget drawn with the line API: line 0 the status, then the metric rows (``MetricRow``),
    then the reason. A refresh repaints only the lines (or the value's cells) that changed.
    """

    COMPONENT_CLASSES = {
        "metric-row--label",
        "metric-row--value",
        "metric-row--nan",
        "metric-row--curve",
        "cell-panel--reason-warn",
        "cell-panel--reason-error",
    }

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
    CellPanel > .metric-row--label { color: $text-muted; }
    CellPanel > .metric-row--nan { color: $text-error; text-style: bold; }
    CellPanel > .metric-row--curve { color: $accent; }
    CellPanel > .cell-panel--reason-warn { color: $text-warning; }
    CellPanel > .cell-panel--reason-error { color: $text-error; }
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
        self.rows = [MetricRow(key, label) for key, label in PANEL_CURVES]
        self.status = Content("")  # the status line on screen
        self.reason = Content("")  # the reason line on screen
        self._lines: dict[
            str, tuple[int, Strip]
        ] = {}  # the status and reason strips drawn, until they or the styles change
        self._row_styles: RowStyles | None = None
        self._content_size = (0, 0)  # taken once per frame (render_lines), not once per line
        self._spans: tuple[int, list[tuple[int, int]]] = (-1, [])
        self.border_title = literal(cell.id)

    def on_mount(self) -> None:
        self.show(self._view, force=True)

    @property
    def view(self) -> CellView:
        return self._view

    def keep(self, cell: CellView) -> None:
        """Hold a view that came before the panel was mounted: on_mount draws it."""
        self._view = cell

    def row(self, key: str) -> MetricRow:
        return next(row for row in self.rows if row.key == key)

    def show(self, cell: CellView, force: bool = False) -> bool:
        """Draw this cell; skipped (False) when nothing it shows has changed since the last call.

        The lines that changed are repainted in one refresh of the panel: the status line, each
        row's changed lines (often only its value's cells), the reason line.
        """
        self._view = cell
        if not force and cell.version == self._shown_version:
            return False
        self._shown_version = cell.version
        severity = cell.severity
        restyled = self.has_class("-warn") != (severity == "warn") or self.has_class("-error") != (severity == "error")
        self.set_class(severity == "warn", "-warn")
        self.set_class(severity == "error", "-error")
        width, height = self._content_size
        spans = self._row_spans(height)
        dirty: list[Region] | None = []
        status, reason = status_line(cell), literal(cell.reason or "")
        if not same_content(status, self.status):
            self.status = status
            self._lines.pop("status", None)
            dirty = _add(dirty, [Region(0, 0, width, 1)])
        for row, (top, _) in zip(self.rows, spans):
            changed = row.show(cell)
            dirty = _add(dirty, None if changed is None else [region.translate((0, top)) for region in changed])
        if not same_content(reason, self.reason):
            self.reason = reason
            self._lines.pop("reason", None)
            dirty = _add(dirty, [Region(0, self._reason_line(spans), width, 1)])
        if dirty is None or restyled or not width:
            self.refresh()  # a class change restyles (and repaints) the whole panel anyway
        elif dirty:
            self.refresh(*dirty)
        return True

    def action_open(self) -> None:
        self.post_message(self.Selected(self.cell_id))

    def on_click(self) -> None:
        self.focus()

    # ---- drawing -------------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._row_styles = None

    def render_lines(self, crop: Region) -> list[Strip]:
        # The content size once per frame: ``size`` looks the widget up on its screen, and
        # render_line runs for every dirty line.
        width, height = self.outer_size
        gutter = self.styles.gutter
        self._content_size = (max(0, width - gutter.width), max(0, height - gutter.height))
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        width, height = self._content_size
        spans = self._row_spans(height)
        if y == 0:
            return self._text_line("status", width)
        for row, (top, rows) in zip(self.rows, spans):
            if top <= y < top + rows:
                return row.lines(width, rows, self._styles())[y - top]
        if y == self._reason_line(spans):
            return self._text_line("reason", width)
        return Strip.blank(width, self._styles().base)

    def _row_spans(self, height: int) -> list[tuple[int, int]]:
        if self._spans[0] != height:
            self._spans = (height, row_spans(height))
        return self._spans[1]

    @staticmethod
    def _reason_line(spans: list[tuple[int, int]]) -> int:
        top, height = spans[-1]
        return top + height

    def _text_line(self, name: str, width: int) -> Strip:
        """The status or the reason line, rendered as a Static of one line would render it."""
        drawn = self._lines.get(name)
        if drawn is not None and drawn[0] == width:
            return drawn[1]
        if name == "status":
            strips = self.status.render_strips(
                width, 1, self.visual_style, RenderOptions(self._get_style, STATUS_RULES)
            )
        else:
            severity = "warn" if self.has_class("-warn") else "error" if self.has_class("-error") else None
            style = self.get_visual_style(f"cell-panel--reason-{severity}") if severity else self.visual_style
            strips = self.reason.render_strips(width, 1, style, RenderOptions(self._get_style, REASON_RULES))
        line = strips[0] if strips else Strip.blank(0)
        self._lines[name] = (width, line)
        return line

    def _styles(self) -> RowStyles:
        """The rows' styles, looked up once per style change (rich_style walks the ancestors: slow)."""
        if self._row_styles is None:
            base = self.rich_style
            part = self.get_component_rich_style
            self._row_styles = RowStyles(
                base=base,
                label=base + part("metric-row--label", partial=True),
                value=base + part("metric-row--value", partial=True),
                nan=base + part("metric-row--nan", partial=True),
                curve=part("metric-row--curve", partial=True),
            )
            for row in self.rows:
                row.restyle(self._row_styles)
        return self._row_styles


def _add(dirty: list[Region] | None, regions: list[Region] | None) -> list[Region] | None:
    """Dirty regions so far plus ``regions``; None (the whole panel) absorbs everything."""
    if dirty is None or regions is None:
        return None
    return dirty + regions


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
