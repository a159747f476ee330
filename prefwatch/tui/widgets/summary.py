"""SummaryStrip: the grid's verdict in three lines, always on screen under the panels."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from prefwatch.bands import SPREAD
from prefwatch.tui.model import GridView
from prefwatch.tui.text import literal, same_content


class SummaryStrip(Static):
    """Line 1: grid, source and cell states. Line 2: verdict headline and its first reason. Line 3: main effects."""

    _shown: Content | None = None  # what the strip shows: the same text again is not repainted

    DEFAULT_CSS = """
    SummaryStrip {
        height: 3;
        padding: 0 1;
        background: $panel;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    def show(self, grid: GridView | None, source: str, message: str | None = None) -> None:
        height = 4 if grid is not None and grid.seeds else 3  # a line for the seeds' spread
        if self.styles.height is None or self.styles.height.value != height:
            self.styles.height = height
        text = summary_text(grid, source, message)
        if not same_content(text, self._shown):
            self.update(text, layout=False)
            self._shown = text


def summary_text(grid: GridView | None, source: str, message: str | None = None) -> Content:
    if grid is None:
        return literal(message or "reading logs…", "$text-muted")
    counts = ", ".join(f"{n} {state}" for state, n in grid.counts().items())
    first = Content("").join(
        [
            literal(grid.name, "bold"),
            literal(f"  {source}  ", "$text-muted"),
            literal(f"{len(grid.cells)} cells: {counts}"),
            *(literal(f"  · {line}", "$text-muted") for line in grid.machines),
        ]
    )
    verdict = [literal("verdict ", "$text-muted"), literal(grid.headline, "bold $text-accent")]
    if grid.reason:
        verdict.append(literal(f" · {grid.reason}"))
    effects = "  ".join(f"{factor}: {value}" for factor, value in grid.effects.items())
    third = [literal("held-out accuracy by ", "$text-muted"), literal(effects)] if effects else []
    if not effects and grid.needs:
        third = [literal("needs ", "$text-muted"), literal("; ".join(grid.needs))]
    if message:
        third = [literal(message, "$text-warning")]
    lines = [first, Content("").join(verdict), Content("").join(third)]
    if grid.seeds:
        label = f"seeds, held-out acc. mean [{SPREAD}] "
        lines.append(Content("").join([literal(label, "$text-muted"), literal("  ·  ".join(grid.seeds))]))
    return Content("\n").join(lines)
