"""HelpScreen: the keys, and what the colours mean.

The keys are read from the bindings themselves (each Binding's tooltip says what it does), so the
help cannot drift from what the keys do: a new binding shows up here, a removed one disappears.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.content import Content
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import Static

KEY_WIDTH = 18  # the column of keys; what they do follows


def key_rows(bindings: Iterable[BindingType]) -> list[tuple[list[str], str]]:
    """One row per action, in the order bound: every key that triggers it, and what it does (the
    binding's tooltip, else its footer description)."""
    rows: dict[str, tuple[list[str], str]] = {}
    for binding in Binding.make_bindings(bindings):
        keys, _ = rows.setdefault(binding.action, ([], binding.tooltip or binding.description))
        label = format_key(binding.key)
        if label not in keys:
            keys.append(label)
    return list(rows.values())


def help_sections(app: App[object]) -> list[tuple[str, list[tuple[list[str], str]]]]:
    """The keys of each place in the monitor, from the bindings of the classes that handle them."""
    from prefwatch.tui.screens.cell import CellScreen
    from prefwatch.tui.screens.compare import CompareScreen
    from prefwatch.tui.widgets.cell_grid import CellGrid
    from prefwatch.tui.widgets.cell_panel import CellPanel

    palette = [
        Binding(
            app.COMMAND_PALETTE_BINDING,
            "command_palette",
            "Palette",
            tooltip="command palette: every action, the theme, screenshots",
        )
    ]
    grid = key_rows(
        [*CellGrid.BINDINGS, *CellPanel.BINDINGS, *app.BINDINGS, *(palette if app.ENABLE_COMMAND_PALETTE else [])]
    )
    return [
        ("Keys", grid),
        ("In a cell's charts (enter)", key_rows(CellScreen.BINDINGS)),
        ("In compare (c)", key_rows(CompareScreen.BINDINGS)),
        ("Here", key_rows(HelpScreen.BINDINGS)),
    ]


def keys_text(sections: list[tuple[str, list[tuple[list[str], str]]]]) -> Content:
    """The sections as literal text (a key such as [ is not markup)."""
    parts = []
    for title, rows in sections:
        parts.append(Content.styled(title, "bold"))
        for keys, text in rows:
            parts.append(Content(f"  {' '.join(keys):<{KEY_WIDTH}} {text}"))
        parts.append(Content(""))
    return Content("\n").join(parts)


LEGEND = """\
[b]A cell panel[/b]
  border             [$warning]yellow[/]: a warning finding   [$error]red[/]: an error finding or a read error
  chosen, rejected   train rewards of the chosen and rejected answers
  margin             train reward margin (chosen − rejected)
  ho margin          held-out margin at each evaluation
  ho acc             held-out accuracy: share of held-out pairs ranked right (per pair where logged)
  bottom line        the worst finding's message
  green column       the held-out accuracy peak (cell charts)

[b]The strip[/b]
  the verdict (which objective, which rank, decisive or not), its first reason,
  and the mean held-out accuracy per objective and per rank.

A cell that finishes, fails, stalls or is lost, or a new finding, rings the terminal bell and
shows a notification (live mode).

The monitor only reads the run directory; it never writes into a cell.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 92; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close", tooltip="close this help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(keys_text(help_sections(self.app)), id="keys")
            yield Static(LEGEND, id="legend")  # our own text: markup is intended here, no log text in it

    def action_close(self) -> None:
        self.dismiss(None)
