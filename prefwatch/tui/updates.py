"""How the feed's refreshes reach the screens: one message to the app, one reactive the screens watch.

The feed (``prefwatch.view.feed``, no Textual) hands each refresh to ``GridUpdated``, posted from its
thread; the message carries the view itself, so nothing is shared between the threads. While updates
wait in the app's queue a newer one replaces an older one (``can_replace``): a screen slower than the
logs draws the newest view and skips the rest. The app then sets its ``view`` reactive, and every
screen that shows the grid follows it with ``follow_view``: no screen is called by its type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.screen import Screen

from prefwatch.view.feed import Update
from prefwatch.view.model import CellView, GridView


class GridUpdated(Message):
    """A refresh from the feed: a view of the grid (or only the strip's words) and any news."""

    def __init__(self, update: Update) -> None:
        super().__init__()
        self.update = update

    def can_replace(self, message: Message) -> bool:
        """Whether the newer ``message``, queued right behind this one, supersedes it: yes, unless this
        one carries news (each event is told once) or a view that the newer one lacks (words only)."""
        if not isinstance(message, GridUpdated) or self.update.news is not None:
            return False
        return message.update.view is not None or self.update.view is None


def follow_view(screen: Screen[Any], show: Callable[[GridView], object], shown: GridView | None = None) -> None:
    """Call ``show`` with each new view of the grid while ``screen`` is on the app's stack.

    Called once the screen is mounted; ``shown`` is the view the screen drew already (the one it was
    made with): a newer one that came while the screen was made is drawn at once.
    """

    def changed(view: GridView | None) -> None:
        if view is not None and screen in screen.app.screen_stack:
            show(view)

    if hasattr(screen.app, "view"):  # an app that shows no grid (a screen tested alone) has none
        screen.watch(screen.app, "view", changed, init=False)
        if screen.app.view is not shown:
            changed(screen.app.view)


def follow_cell(screen: Screen[Any], cell: Callable[[], CellView], show: Callable[[CellView], object]) -> None:
    """Call ``show`` with the newer view of the screen's cell (``cell()``: the one shown) when it changed."""

    def changed(view: GridView) -> None:
        shown = cell()
        newer = view.cell(shown.id)
        if newer is not None and newer.version != shown.version:
            show(newer)

    follow_view(screen, changed)  # a newer view of the cell made while the screen was made: drawn now
