"""CompareScreen: one metric across every cell of the grid.

Rewards of different objectives live on different scales (DPO's are reference-relative log-ratios,
SimPO's length-normalised and shifted by its margin), so a reward or margin gets one chart per
objective; accuracies are comparable across all cells and share one chart on a 0–1 scale.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from prefwatch import metrics as m
from prefwatch.tui.model import CellView, Curve, GridView, format_value
from prefwatch.tui.screens.cell import CURVE_COLOURS, finite_range
from prefwatch.tui.text import literal
from prefwatch.tui.widgets.chart import BrailleChart

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
        by_objective.setdefault(cell.objective or "?", []).append(cell)
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
    ]

    def __init__(self, grid: GridView) -> None:
        super().__init__()
        self.grid = grid
        names = metric_names(grid)
        self.metric = m.MARGINS if m.MARGINS in names else (names[0] if names else "")
        self.split = "train"

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        slots = max(1, len({c.objective for c in self.grid.cells}))
        with Vertical(id="charts"):
            for _ in range(slots):  # one per objective at most; an accuracy uses the first alone
                yield Vertical(Static(classes="legend"), BrailleChart(), classes="group")
        yield Footer()

    def on_mount(self) -> None:
        self.show_grid(self.grid)

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
            parts = [literal(title, "bold")]
            for cell in cells:
                curve = cell.metrics.get(self.metric, {}).get(self.split)
                if curve is None:
                    continue
                colour = CURVE_COLOURS[len(curves) % len(CURVE_COLOURS)]
                curves.append(curve)
                parts.append(literal(f"  ━ {cell.id} ", colour))
                parts.append(literal(format_value(curve.latest)))
            x_end = max((c.x_range[1] for c in cells), default=1.0)
            y_range = fixed or finite_range(curves)
            classes = [f"curve-{i % 4}" for i in range(len(curves))]
            if not curves:
                parts.append(literal("  (not logged)", "$text-muted"))
            group.query_one(".legend", Static).update(Content("").join(parts))
            group.query_one(BrailleChart).set_curves(curves, (0.0, x_end), y_range, classes)

    def action_metric(self, delta: int) -> None:
        names = metric_names(self.grid)
        if not names:
            return
        index = names.index(self.metric) if self.metric in names else 0
        self.metric = names[(index + delta) % len(names)]
        self.show_grid(self.grid)

    def action_split(self) -> None:
        self.split = "eval" if self.split == "train" else "train"
        self.show_grid(self.grid)
