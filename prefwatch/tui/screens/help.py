"""HelpScreen: the keys, and what the colours mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]Keys[/b]
  arrows / h j k l   select a cell
  enter              charts of the selected cell (escape to come back)
  s                  stop the selected cell (asks first; launched grids only)
  X                  stop the whole grid (asks first)
  r                  restart a failed, stopped or lost cell from its last checkpoint (asks first)
  c                  compare one metric across all cells ([ ] metric, v train / held-out)
  T                  light or dark theme (more in the command palette, ctrl+p)
  space + - < >      a timed replay: play/pause, faster, slower, jump back/forward (home, end)
  ?                  this help
  q                  quit the monitor — the jobs keep running

[b]In a cell's charts[/b] (enter)
  [ ]                previous / next metric (train and held-out overlaid)
  /                  filter the metrics by a regular expression
  e                  EMA smoothing off, 0.6, 0.9, 0.99 (debiased; the raw curve stays, dimmed)
  L                  log scale          o   y scale from the 1st to the 99th percentile
  t                  x axis: step or wall time
  left / right       cursor: exact values at a step (shift: ten columns)
  x                  export the view's data as CSV and JSON   S   the screen as SVG
  escape             back to the grid

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

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP)  # our own text: markup is intended here, no log text in it

    def action_close(self) -> None:
        self.dismiss(None)
