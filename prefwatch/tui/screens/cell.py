"""CellScreen: one cell large — margins train vs held-out, held-out accuracy, rewards, findings, output.

Train and held-out margin share one chart and one scale: the gap between them is the
over-optimisation the review looks for, and it only reads right on a common axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Log, Static

from prefwatch import rundir
from prefwatch.tui.model import CellView, Curve, format_value
from prefwatch.tui.text import literal, terminal_line
from prefwatch.tui.widgets.cell_panel import status_line
from prefwatch.tui.widgets.chart import BrailleChart

CURVE_COLOURS = ("$accent", "$warning", "$success", "$secondary")  # as BrailleChart's component classes
TAIL_BYTES = 64 * 1024
TAIL_LINES = 200


class ChartBlock(Vertical):
    """A legend line (names in their curve colours, latest values, the scale) above a BrailleChart."""

    DEFAULT_CSS = """
    ChartBlock { height: 1fr; min-height: 3; }
    ChartBlock > .legend { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    ChartBlock > BrailleChart { height: 1fr; }
    """

    def __init__(self, title: str, keys: list[tuple[str, str]], fixed: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.title = title
        self.keys = keys
        self.fixed = fixed

    def compose(self) -> ComposeResult:
        yield Static(classes="legend")
        yield BrailleChart()

    def show(self, cell: CellView) -> None:
        curves = [cell.curves[key] for key, _ in self.keys]
        y_range = self.fixed or finite_range(curves)
        parts = [literal(self.title, "bold")]
        for index, ((_, label), curve) in enumerate(zip(self.keys, curves)):
            parts.append(literal(f"  ━ {label} ", CURVE_COLOURS[index % 4]))
            parts.append(literal(format_value(curve.latest)))
        if y_range:
            parts.append(literal(f"   scale {format_value(y_range[0])} … {format_value(y_range[1])}", "$text-muted"))
        self.query_one(".legend", Static).update(Content("").join(parts))
        self.query_one(BrailleChart).set_curves(curves, cell.x_range, y_range)


def finite_range(curves: list[Curve]) -> tuple[float, float] | None:
    lows, highs = [], []
    for curve in curves:
        finite = curve.values[np.isfinite(curve.values)]
        if len(finite):
            lows.append(float(finite.min()))
            highs.append(float(finite.max()))
    if not lows:
        return None
    low, high = min(lows), max(highs)
    if high - low < 1e-12:
        return low - 0.5, high + 0.5
    return low, high


class CellScreen(Screen[None]):
    """Opened with Enter on a panel; escape goes back to the grid. Follows the cell live."""

    DEFAULT_CSS = """
    CellScreen > #header { height: 1; padding: 0 1; background: $panel; }
    CellScreen > #charts { height: 2fr; padding: 0 1; }
    CellScreen > #findings { height: auto; max-height: 5; padding: 0 1; }
    CellScreen > #output { height: 1fr; min-height: 3; border-top: solid $panel-lighten-2; }
    """

    BINDINGS = [Binding("escape,backspace", "app.pop_screen", "Back")]

    def __init__(self, cell: CellView) -> None:
        super().__init__()
        self.cell = cell
        self._output_size: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Vertical(id="charts"):
            yield ChartBlock("margin", [("margin", "train"), ("heldout_margin", "held-out")])
            yield ChartBlock("held-out accuracy", [("heldout_accuracy", "accuracy")], fixed=(0.0, 1.0))
            yield ChartBlock("train rewards", [("chosen", "chosen"), ("rejected", "rejected")])
        yield Static(id="findings")
        yield Log(id="output", highlight=False, max_lines=TAIL_LINES * 5)
        yield Footer()

    def on_mount(self) -> None:
        self.show_cell(self.cell)

    def show_cell(self, cell: CellView) -> None:
        self.cell = cell
        header = [literal(cell.id, "bold"), Content("  "), status_line(cell)]
        self.query_one("#header", Static).update(Content("").join(header))
        for block in self.query(ChartBlock):
            block.show(cell)
        self.query_one("#findings", Static).update(findings_text(cell))
        self._show_output(cell.directory / rundir.STDOUT_FILE)

    def _show_output(self, path: Path) -> None:
        """Show the tail of the job's output once, then only when the file has grown."""
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size == self._output_size:
            return
        self._output_size = size
        log = self.query_one("#output", Log)
        log.clear()
        log.border_title = literal(path.name)
        lines = read_tail(path) if size >= 0 else ["(no output file)"]
        log.write_lines(lines)


def findings_text(cell: CellView) -> Content:
    if not cell.findings and not cell.read_error:
        return literal("no findings", "$text-muted")
    styles = {"error": "$text-error", "warn": "$text-warning", "info": "$text-muted"}
    lines = [
        Content("").join([literal(f"{f.severity:5} ", styles.get(f.severity, "")), literal(f.message)])
        for f in cell.findings
    ]
    if cell.read_error:
        lines.append(literal(f"read error: {cell.read_error}", "$text-error"))
    return Content("\n").join(lines)


def read_tail(path: Path, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a job's output, as a terminal would leave them (see text.terminal_line)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except OSError as exc:
        return [f"({path.name}: {exc.strerror or exc})"]
    lines = data.decode("utf-8", errors="replace").split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is cut
    if lines and lines[-1] == "":
        lines.pop()
    return [terminal_line(line) for line in lines[-max_lines:]]
