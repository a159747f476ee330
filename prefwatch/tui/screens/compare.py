"""CompareScreen: one metric across every cell of the grid.

Rewards of different objectives live on different scales (DPO's are reference-relative log-ratios,
SimPO's length-normalised and shifted by its margin), so a reward or margin gets one chart per
objective; accuracies are comparable across all cells and share one chart on a 0–1 scale.
"""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Static

from prefwatch.analysis import bands
from prefwatch.core import metrics as m
from prefwatch.core.decide import UNKNOWN
from prefwatch.core.factors import setting_name
from prefwatch.tui.screens.cell import CURVE_COLOURS, finite_range
from prefwatch.tui.text import literal
from prefwatch.tui.updates import follow_view
from prefwatch.tui.widgets.chart import BrailleChart
from prefwatch.view.model import CellView, Curve, GridView, format_value

SPLIT_LABELS = {"train": "train", "eval": "held-out"}


def comparable_across_objectives(metric: str) -> bool:
    """Accuracies (shares of pairs ranked right) mean the same for every objective; rewards do not."""
    return "accurac" in metric


def metric_names(grid: GridView) -> list[str]:
    return sorted({name for cell in grid.cells for name in cell.metrics})


def groups(grid: GridView, metric: str) -> list[tuple[str, list[CellView]]]:
    """(title, cells) per chart: all cells for an accuracy, else one group per objective."""
    if comparable_across_objectives(metric):
        return [("all cells", list(grid.cells))]
    by_objective: dict[str, list[CellView]] = {}
    for cell in grid.cells:
        by_objective.setdefault(cell.objective or UNKNOWN, []).append(cell)  # never a bare "?"
    return list(by_objective.items())


class CompareScreen(Screen[None]):
    """``c`` on the grid: [ and ] pick the metric, v switches train / held-out, escape goes back."""

    DEFAULT_CSS = """
    CompareScreen > #title { height: 1; padding: 0 1; background: $panel; }
    CompareScreen > #charts { height: 1fr; padding: 0 1; }
    CompareScreen .group { height: 1fr; }
    CompareScreen .legend { height: auto; }
    CompareScreen BrailleChart { height: 1fr; }
    """

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back", tooltip="back to the grid"),
        Binding("left_square_bracket", "metric(-1)", "Prev metric", key_display="[", tooltip="previous metric"),
        Binding("right_square_bracket", "metric(1)", "Next metric", key_display="]", tooltip="next metric"),
        Binding("v", "split", "Train/held-out", tooltip="train or held-out curves"),
        Binding("b", "bands", "Seeds: band/each", tooltip="several seeds: one band per setting, or each seed"),
    ]

    # What is compared: setting one (a key, a test) draws the charts again.
    metric: var[str] = var("", init=False)
    split: var[str] = var("train", init=False)  # "train" or "eval" (held-out)
    bands: var[bool] = var(True, init=False)  # several seeds of a setting: a mean line and its min–max band

    def __init__(self, grid: GridView, group: str | None = None) -> None:
        """``group``: the label of a group of cells (``grid`` holds only them), which newer views of
        the grid are cut to as well; None: every cell."""
        super().__init__()
        self.grid = grid
        self.group = group
        self._members = frozenset(c.id for c in grid.cells)
        names = metric_names(grid)
        self.metric = m.MARGINS if m.MARGINS in names else (names[0] if names else "")

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        slots = max(1, len({c.objective for c in self.grid.cells}))
        with Vertical(id="charts"):
            for _ in range(slots):  # one per objective at most; an accuracy uses the first alone
                yield Vertical(Static(classes="legend"), BrailleChart(), classes="group")
        yield Footer()

    def on_mount(self) -> None:
        self.show_grid(self.grid)
        follow_view(self, self._follow, self.grid)
        for setting in ("metric", "split", "bands"):
            self.watch(self, setting, lambda: self.show_grid(self.grid), init=False)

    def _follow(self, grid: GridView) -> None:
        """A newer view of the grid: drawn whole, or cut to the group's cells."""
        if self.group is not None:
            cells = [c for c in grid.cells if c.id in self._members]
            grid = replace(grid, cells=cells, name=f"{grid.name} ({self.group})")
        self.show_grid(grid)

    def show_grid(self, grid: GridView) -> None:
        self.grid = grid
        chosen = groups(grid, self.metric)
        slots = list(self.query(".group"))
        for i, slot in enumerate(slots):
            slot.display = i < len(chosen)
        names = metric_names(grid)
        index = names.index(self.metric) + 1 if self.metric in names else 0
        self.query_one("#title", Static).update(
            literal(f"compare  {self.metric}  ({SPLIT_LABELS[self.split]})  metric {index}/{len(names)}", "bold")
        )
        fixed = (0.0, 1.0) if comparable_across_objectives(self.metric) else None
        for (title, cells), group in zip(chosen, slots):
            curves: list[Curve] = []
            classes: list[str] = []
            parts = [literal(title, "bold")]
            k = -1
            for label, members in self.lines(cells):
                found = [
                    c for c in (cell.metrics.get(self.metric, {}).get(self.split) for cell in members) if c is not None
                ]
                if not found:
                    continue
                k += 1
                if len(members) == 1:
                    curves.append(found[0])
                    classes.append(f"curve-{k % 4}")
                    latest = format_value(found[0].latest)
                else:
                    b = bands.band([(c.steps, c.values) for c in found])
                    curves += [Curve(b.steps, b.low), Curve(b.steps, b.high), Curve(b.steps, b.mean)]
                    classes += [f"raw-{k % 4}", f"raw-{k % 4}", f"curve-{k % 4}"]
                    latest = f"{format_value(b.mean[-1] if len(b) else None)} [{format_value(b.low[-1] if len(b) else None)}–{format_value(b.high[-1] if len(b) else None)}]"
                parts.append(literal(f"  ━ {label} ", CURVE_COLOURS[k % len(CURVE_COLOURS)]))
                parts.append(literal(latest))
            if any(c.startswith("raw") for c in classes):
                parts.append(literal(f"  band: {bands.SPREAD} (b: each seed)", "$text-muted"))
            x_end = max((c.x_range[1] for c in cells), default=1.0)
            y_range = fixed or finite_range(curves)
            if not curves:
                parts.append(literal("  (not logged)", "$text-muted"))
            group.query_one(".legend", Static).update(Content("").join(parts))
            group.query_one(BrailleChart).set_curves(curves, (0.0, x_end), y_range, classes)

    def lines(self, cells: list[CellView]) -> list[tuple[str, list[CellView]]]:
        """(label, cells) per line: a setting's seeds together when bands are on, else each cell alone."""
        if not self.bands:
            return [(cell.id, [cell]) for cell in cells]
        found = bands.settings(
            cells, lambda c: c.setting, lambda c: c.seed, lambda c: setting_name(c.factors, self.grid.swept)
        )
        seeded = {id(c): s for s in found for c in s.cells}
        out: list[tuple[str, list[CellView]]] = []
        for cell in cells:
            setting = seeded.get(id(cell))
            if setting is None:
                out.append((cell.id, [cell]))
            elif setting.cells[0] is cell:
                out.append((setting.label, list(setting.cells)))
        return out

    def action_bands(self) -> None:
        self.bands = not self.bands

    def action_metric(self, delta: int) -> None:
        names = metric_names(self.grid)
        if not names:
            return
        index = names.index(self.metric) if self.metric in names else 0
        self.metric = names[(index + delta) % len(names)]

    def action_split(self) -> None:
        self.split = "eval" if self.split == "train" else "train"
