"""Theme lookup without copies, through Textual's public theme API only."""

from __future__ import annotations

from functools import cached_property

from textual.app import App
from textual.theme import Theme


class ThemedApp(App[int]):
    """An app whose ``get_theme`` reads the themes as registered, without copying them.

    Textual's ``get_theme`` builds ``available_themes`` (a copy of every registered theme) once or
    twice a call, and it runs for each line of every frame (via ``ansi_theme``): the copies were a
    tenth of the monitor's drawing. Every theme, the built-in ones included, comes in through
    ``register_theme`` (and leaves through ``unregister_theme``), so the app keeps its own index of
    them there and answers from it: the same answers, no private attribute of Textual read.
    """

    @cached_property
    def theme_index(self) -> dict[str, Theme]:
        """The registered themes by name (filled by ``register_theme``, from Textual's own start)."""
        return {}

    def register_theme(self, theme: Theme) -> None:
        super().register_theme(theme)
        self.theme_index[theme.name] = theme

    def unregister_theme(self, theme_name: str) -> None:
        super().unregister_theme(theme_name)
        self.theme_index.pop(theme_name, None)

    def get_theme(self, theme_name: str) -> Theme | None:
        """The first registered theme of ``theme_name`` (names separated by commas), as Textual's."""
        for name in theme_name.split(","):
            theme = self.theme_index.get(name.strip())
            if theme is not None:
                return theme
        return None
