"""CellScreen: one cell large — margins train vs held-out, held-out accuracy, rewards, findings, output.

Train and held-out margin share one chart and one scale: the gap between them is the
over-optimisation the review looks for, and it only reads right on a common axis.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Input, Log, Static

from prefwatch.core import metrics as m
from prefwatch.core.textsafe import plain
from prefwatch.files import rundir, safe
from prefwatch.tui import closer
from prefwatch.tui.text import literal, terminal_line
from prefwatch.tui.updates import follow_cell
from prefwatch.tui.widgets.cell_panel import status_line
from prefwatch.tui.widgets.chart import BrailleChart
from prefwatch.view.model import CellView, Curve, format_value

CURVE_COLOURS = ("$accent", "$warning", "$success", "$secondary")  # as BrailleChart's component classes
TAIL_BYTES = 64 * 1024
TAIL_LINES = 200
LAST_EVALS = 3  # the range table's change column: over the last N evaluations


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

    def show(self, cell: CellView, markers: list[tuple[float, str]] | None = None) -> None:
        curves = [cell.curves[key] for key, _ in self.keys]
        y_range = self.fixed or finite_range(curves)
        parts = [literal(self.title, "bold")]
        for index, ((_, label), curve) in enumerate(zip(self.keys, curves)):
            parts.append(literal(f"  ━ {label} ", CURVE_COLOURS[index % 4]))
            parts.append(literal(format_value(curve.latest)))
        if y_range:
            parts.append(literal(f"   scale {format_value(y_range[0])} … {format_value(y_range[1])}", "$text-muted"))
        self.query_one(".legend", Static).update(Content("").join(parts))
        self.query_one(BrailleChart).set_curves(curves, cell.x_range, y_range, markers=markers or ())


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
    """Opened with Enter on a panel; escape goes back to the grid. Follows the cell live.

    The top chart shows one metric at a time, train and held-out overlaid: ``[`` and ``]`` pick it,
    ``/`` filters the list by a regular expression. ``e`` cycles the EMA smoothing (the raw curves
    stay, dimmed), ``L`` a log scale, ``o`` a scale from the 1st to the 99th percentile (a spike
    does not flatten the curve), ``t`` steps or wall time on the x axis. Left and right move a
    cursor that reads exact values; the held-out accuracy peak is marked. ``x`` exports the view's
    data as CSV and JSON, ``S`` the screen as SVG.
    """

    DEFAULT_CSS = """
    CellScreen > #header { height: 1; padding: 0 1; background: $panel; }
    CellScreen > #controls { height: 1; padding: 0 1; color: $text-muted; }
    CellScreen > #charts { height: 2fr; padding: 0 1; }
    CellScreen #main-chart { height: 2fr; }
    CellScreen #main { height: 1fr; }
    CellScreen > #table { height: auto; padding: 0 1; }
    CellScreen > #findings { height: auto; max-height: 4; padding: 0 1; }
    CellScreen > #output { height: 1fr; min-height: 3; border-top: solid $panel-lighten-2; }
    CellScreen > #filter { dock: bottom; display: none; }
    CellScreen > #filter.-shown { display: block; }
    """

    # Nothing takes the focus on opening: the screen's keys (left and right move the cursor) must reach
    # the screen, not the output log or the hidden filter field.
    AUTO_FOCUS = ""

    BINDINGS = [
        Binding("escape,backspace", "back", "Back", tooltip="back to the grid"),
        Binding("left_square_bracket", "metric(-1)", "Prev metric", key_display="[", tooltip="previous metric"),
        Binding("right_square_bracket", "metric(1)", "Next metric", key_display="]", tooltip="next metric"),
        Binding("slash", "filter", "Filter", key_display="/", tooltip="filter the metrics by a regular expression"),
        Binding(
            "e",
            "smoothing",
            "Smooth",
            tooltip="EMA smoothing: off, 0.6, 0.9, 0.99 (the raw curve stays, dimmed)",
        ),
        Binding("L", "log_scale", "Log", tooltip="log scale"),
        Binding("o", "robust", "Robust y", tooltip="y scale from the 1st to the 99th percentile"),
        Binding("t", "time_axis", "Step/time", tooltip="x axis: step or wall time"),
        Binding("left", "cursor(-1)", "Cursor", show=False, tooltip="cursor one column left: exact values"),
        Binding("right", "cursor(1)", "Cursor", show=False, tooltip="cursor one column right"),
        Binding("shift+left", "cursor(-10)", "Cursor ×10", show=False, tooltip="cursor ten columns left"),
        Binding("shift+right", "cursor(10)", "Cursor ×10", show=False, tooltip="cursor ten columns right"),
        Binding("x", "export", "Export", tooltip="export the view's data as CSV and JSON"),
        Binding("S", "screenshot", "SVG", tooltip="the screen as SVG"),
    ]

    # The chart's settings: setting one (a key, the command palette, a test) draws the chart again.
    metric: var[str] = var("", init=False)
    pattern: var[str] = var("", init=False)  # the metric list's filter (a regular expression)
    smoothing: var[float] = var(0.0, init=False)
    log_scale: var[bool] = var(False, init=False)
    robust: var[bool] = var(False, init=False)
    time_axis: var[bool] = var(False, init=False)
    cursor: var[int | None] = var(None, init=False)  # chart column, None until the first left/right
    SETTINGS = ("metric", "pattern", "smoothing", "log_scale", "robust", "time_axis", "cursor")

    def __init__(self, cell: CellView, export_dir: Path | None = None) -> None:
        super().__init__()
        self.cell = cell
        self.export_dir = export_dir
        self._output_size: int | None = None
        names = list(cell.metrics)
        self.metric = m.MARGINS if m.MARGINS in names else (names[0] if names else "")

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="controls")
        with Vertical(id="charts"):
            with Vertical(id="main-chart"):
                yield Static(classes="legend", id="main-legend")
                yield BrailleChart(id="main")
            yield ChartBlock("held-out accuracy", [("heldout_accuracy", "accuracy")], fixed=(0.0, 1.0))
        yield Static(id="table")
        yield Static(id="findings")
        output = Log(id="output", highlight=False, max_lines=TAIL_LINES * 5)
        # Never focused, not even by the screen's auto-focus before on_mount: left and right move the
        # chart's cursor, and a focused Log would take them to scroll itself.
        output.can_focus = False
        yield output
        yield Input(placeholder="filter metrics by regular expression (enter to apply, escape to close)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.show_cell(self.cell)
        follow_cell(self, lambda: self.cell, self.show_cell)
        for setting in self.SETTINGS:
            self.watch(self, setting, self._draw_metric, init=False)

    def selected_cell_id(self) -> str:
        """This screen's cell (what s, r and w act on)."""
        return self.cell.id

    # ---- what is picked ----------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return closer.matching(list(self.cell.metrics), self.pattern)

    def picked(self) -> dict[str, Curve]:
        """The picked metric's curves by split ("train", "eval"), on the chosen x axis, log applied."""
        result = {}
        for split, curve in self.cell.metrics.get(self.metric, {}).items():
            values = closer.log_values(curve.values) if self.log_scale else curve.values
            x = curve.steps
            if self.time_axis:
                if curve.times is None:
                    continue
                keep = np.isfinite(curve.times)
                x, values = curve.times[keep], values[keep]
                result[split] = Curve(x, values, curve.times[keep])
            else:
                result[split] = Curve(x, values, curve.times)
        return result

    def x_range(self, curves: dict[str, Curve]) -> tuple[float, float]:
        if not self.time_axis:
            return self.cell.x_range
        xs = [c.steps for c in curves.values() if len(c)]
        if not xs:
            return 0.0, 1.0
        low, high = min(float(x[0]) for x in xs), max(float(x[-1]) for x in xs)
        return low, high if high > low else low + 1.0

    # ---- drawing -----------------------------------------------------------------------------------

    def show_cell(self, cell: CellView) -> None:
        self.cell = cell
        if self.metric not in cell.metrics and cell.metrics:
            names = self.names or list(cell.metrics)
            self.metric = m.MARGINS if m.MARGINS in names else names[0]
        header = [literal(cell.id, "bold"), Content("  "), status_line(cell)]
        self.query_one("#header", Static).update(Content("").join(header))
        self._draw_metric()
        marker = [(float(cell.peak_step), "peak")] if cell.peak_step is not None else []
        for block in self.query(ChartBlock):
            block.show(cell, marker)
        self.query_one("#findings", Static).update(findings_text(cell))
        self._show_output(cell.directory / rundir.STDOUT_FILE)

    def _draw_metric(self) -> None:
        curves = self.picked()
        smooth = self.smoothing > 0
        drawn: list[Curve] = []
        classes: list[str] = []
        for index, split in enumerate(("train", "eval")):
            curve = curves.get(split)
            if curve is None:
                continue
            if smooth:
                drawn.append(curve)
                classes.append(f"raw-{index}")
            values = closer.ema(curve.values, self.smoothing) if smooth else curve.values
            drawn.append(Curve(curve.steps, values, curve.times))
            classes.append(f"curve-{index}")
        x_range = self.x_range(curves)
        y_range = closer.robust_range(drawn) if self.robust else finite_range(drawn)
        chart = self.query_one("#main", BrailleChart)
        markers = []
        peak_x = self._peak_x(curves)
        if peak_x is not None:
            markers.append((peak_x, "peak"))
        cursor_x = self._cursor_x(x_range, chart.size.width)
        if cursor_x is not None:
            markers.append((cursor_x, "cursor"))
        chart.set_curves(drawn, x_range, y_range, classes, markers)
        self.query_one("#main-legend", Static).update(self._legend(curves, y_range, cursor_x))
        self.query_one("#controls", Static).update(self._controls())
        self.query_one("#table", Static).update(self._table(curves))

    def _peak_x(self, curves: dict[str, Curve]) -> float | None:
        """The held-out accuracy peak on the step axis (the accuracy chart below marks it too)."""
        peak = self.cell.peak_step
        return None if peak is None or self.time_axis else float(peak)

    def _cursor_x(self, x_range: tuple[float, float], width: int) -> float | None:
        if self.cursor is None or width <= 1:
            return None
        self.cursor = max(0, min(width - 1, self.cursor))
        low, high = x_range
        return low + (high - low) * self.cursor / (width - 1)

    def _legend(self, curves: dict[str, Curve], y_range: tuple[float, float] | None, cursor: float | None) -> Content:
        parts = [literal(self.metric or "(no metrics)", "bold")]
        labels = {"train": "train", "eval": "held-out"}
        for index, split in enumerate(("train", "eval")):
            curve = curves.get(split)
            if curve is None:
                continue
            parts.append(literal(f"  ━ {labels[split]} ", CURVE_COLOURS[index]))
            if cursor is not None:
                point = closer.value_at(curve, cursor)
                parts.append(literal(format_value(point[1]) if point else "–"))
            else:
                parts.append(literal(format_value(curve.latest)))
        if cursor is not None:
            where = format_time(cursor) if self.time_axis else f"step {cursor:.0f}"
            parts.append(literal(f"   cursor {where}", "$text-accent"))
        if y_range:
            scale = f"   scale {format_value(y_range[0])} … {format_value(y_range[1])}"
            parts.append(literal(scale + (" (log10)" if self.log_scale else ""), "$text-muted"))
        return Content("").join(parts)

    def _controls(self) -> Content:
        names = self.names
        index = names.index(self.metric) + 1 if self.metric in names else 0
        items = [
            f"metric {index}/{len(names)}" + (f" matching /{self.pattern}/" if self.pattern else ""),
            f"x: {'wall time' if self.time_axis else 'step'}",
            f"smoothing {self.smoothing:g}" if self.smoothing else "smoothing off",
            "log" if self.log_scale else "linear",
            "y: 1st–99th pct" if self.robust else "y: full range",
        ]
        return literal("  ·  ".join(items))

    def _table(self, curves: dict[str, Curve]) -> Content:
        header = f"{'':10}{'min':>10}{'max':>10}{'last':>10}{f'Δ last {LAST_EVALS} ev':>14}"
        rows = [literal(header, "$text-muted")]
        evals = curves.get("eval")
        since = None
        if evals is not None and len(evals) > 1:
            since = float(evals.steps[-min(LAST_EVALS + 1, len(evals))])
        for label, split in (("train", "train"), ("held-out", "eval")):
            curve = curves.get(split)
            if split == "train" and curve is not None and since is not None and not self.time_axis:
                n = int(len(curve) - np.searchsorted(curve.steps, since))
            else:
                n = LAST_EVALS
            row = closer.range_row(label, curve, n)
            cells = row.cells()
            rows.append(literal(f"{cells[0]:10}{cells[1]:>10}{cells[2]:>10}{cells[3]:>10}{cells[4]:>14}"))
        peak = self.cell.peak_step
        if peak is not None:
            accuracy = closer.value_at(self.cell.curves["heldout_accuracy"], float(peak))
            value = f" (accuracy {format_value(accuracy[1], signed=False)})" if accuracy else ""
            rows.append(literal(f"best held-out step {peak}{value}", "$text-success"))
        return Content("\n").join(rows)

    def _show_output(self, path: Path) -> None:
        """Show the tail of the job's output once, then only when the file has grown (read in a worker)."""
        self._read_output(path)

    @work(thread=True, exclusive=True, group="output")
    def _read_output(self, path: Path) -> None:
        """Stat and read the output off the UI thread: a slow or network file system must not freeze it."""
        try:
            size = path.stat().st_size
        except OSError:
            size = -1
        if size == self._output_size:
            return
        lines = read_tail(path) if size >= 0 else ["(no output file)"]
        try:
            self.app.call_from_thread(self._write_output, path, size, lines)
        except RuntimeError:  # the app closed meanwhile
            pass

    def _write_output(self, path: Path, size: int, lines: list[str]) -> None:
        if not self.is_mounted:
            return
        self._output_size = size
        log = self.query_one("#output", Log)
        log.clear()
        log.border_title = literal(path.name)
        log.write_lines(lines)

    # ---- actions -----------------------------------------------------------------------------------

    def action_back(self) -> None:
        field = self.query_one("#filter", Input)
        if field.has_class("-shown"):
            field.remove_class("-shown")
            self.set_focus(None)
            return
        self.app.pop_screen()

    def action_metric(self, delta: int) -> None:
        names = self.names
        if not names:
            return
        index = names.index(self.metric) if self.metric in names else -delta if delta > 0 else 0
        self.metric = names[(index + delta) % len(names)]

    def action_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.add_class("-shown")
        field.value = self.pattern
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.pattern = event.value.strip()
        event.input.remove_class("-shown")
        self.set_focus(None)
        names = self.names
        if names and self.metric not in names:
            self.metric = names[0]
        if not names:
            self.notify(plain(f"no metric matches /{self.pattern}/"), severity="warning", markup=False)

    def action_smoothing(self) -> None:
        steps = closer.SMOOTHING_STEPS
        self.smoothing = steps[(steps.index(self.smoothing) + 1) % len(steps)] if self.smoothing in steps else 0.0

    def action_log_scale(self) -> None:
        self.log_scale = not self.log_scale

    def action_robust(self) -> None:
        self.robust = not self.robust

    def action_time_axis(self) -> None:
        self.time_axis = not self.time_axis

    def action_cursor(self, delta: int) -> None:
        width = self.query_one("#main", BrailleChart).size.width
        if self.cursor is None:
            self.cursor = width - 1
        else:
            self.cursor = max(0, min(width - 1, self.cursor + delta))

    def _export_dir(self) -> Path:
        return Path(self.export_dir) if self.export_dir is not None else Path.cwd()

    def action_export(self) -> None:
        """Write the picked metric's data (raw and smoothed, both splits) as CSV and JSON."""
        curves = self.picked()
        rows = closer.export_rows({k: curves.get(k) for k in ("train", "eval")}, self.smoothing)
        stem = f"prefwatch-{closer.safe_name(self.cell.id)}-{closer.safe_name(self.metric)}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder = self._export_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
            csv_path.write_text(closer.to_csv(rows))
            json_path.write_text(closer.to_json(self.cell.id, self.metric, self.smoothing, rows))
        except OSError as exc:
            self.notify(plain(f"export failed: {exc}"), severity="error", markup=False)
            return
        self.notify(plain(f"wrote {csv_path} and {json_path.name}"), title="Exported", markup=False)

    def action_screenshot(self) -> None:
        folder = self._export_dir()
        name = f"prefwatch-{closer.safe_name(self.cell.id)}-{time.strftime('%Y%m%d-%H%M%S')}.svg"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = self.app.save_screenshot(name, path=str(folder))
        except OSError as exc:
            self.notify(plain(f"screenshot failed: {exc}"), severity="error", markup=False)
            return
        self.notify(plain(f"wrote {path}"), title="Screenshot", markup=False)


def format_time(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


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
        with safe.open_read(path) as f:
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
