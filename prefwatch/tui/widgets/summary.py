"""SummaryStrip: the grid's verdict in three lines, always on screen under the panels."""

from __future__ import annotations

from typing import NamedTuple

from textual.content import Content
from textual.widgets import Static

from prefwatch.analysis.bands import SPREAD
from prefwatch.tui.text import literal, same_content
from prefwatch.view.model import GridView


class SummaryFacts(NamedTuple):
    """What the strip shows of a grid view. The strip compares them with the last ones shown and
    builds its text only when they differ: most refreshes change a step, not the verdict."""

    name: str
    cells: int
    counts: tuple[tuple[str, int], ...]
    machines: tuple[str, ...]
    headline: str
    reason: str | None
    effects: tuple[tuple[str, str], ...]
    needs: tuple[str, ...]
    seeds: tuple[str, ...]

    @classmethod
    def of(cls, grid: GridView) -> SummaryFacts:
        return cls(
            grid.name,
            len(grid.cells),
            tuple(grid.counts().items()),
            tuple(grid.machines),
            grid.headline,
            grid.reason,
            tuple(grid.effects.items()),
            tuple(grid.needs),
            tuple(grid.seeds),
        )


class SummaryStrip(Static):
    """Line 1: grid, source and cell states. Line 2: verdict headline and its first reason. Line 3: main effects."""

    _shown: tuple[SummaryFacts | None, str, str | None] | None = None  # what the strip was given last
    _text: Content | None = None  # and the text it shows

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
        facts = SummaryFacts.of(grid) if grid is not None else None
        shown = (facts, source, message)
        if shown == self._shown:
            return  # the same text again is not built, nor repainted
        height = 4 if facts is not None and facts.seeds else 3  # a line for the seeds' spread
        if self.styles.height is None or self.styles.height.value != height:
            self.styles.height = height
        text = facts_text(facts, source, message)
        if not same_content(text, self._text):
            self.update(text, layout=False)
            self._text = text
        self._shown = shown


def summary_text(grid: GridView | None, source: str, message: str | None = None) -> Content:
    return facts_text(SummaryFacts.of(grid) if grid is not None else None, source, message)


def facts_text(grid: SummaryFacts | None, source: str, message: str | None = None) -> Content:
    if grid is None:
        return literal(message or "reading logs…", "$text-muted")
    counts = ", ".join(f"{n} {state}" for state, n in grid.counts)
    first = Content("").join(
        [
            literal(grid.name, "bold"),
            literal(f"  {source}  ", "$text-muted"),
            literal(f"{grid.cells} cells: {counts}"),
            *(literal(f"  · {line}", "$text-muted") for line in grid.machines),
        ]
    )
    verdict = [literal("verdict ", "$text-muted"), literal(grid.headline, "bold $text-accent")]
    if grid.reason:
        verdict.append(literal(f" · {grid.reason}"))
    effects = "  ".join(f"{factor}: {value}" for factor, value in grid.effects)
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
