"""Text from logs in the monitor: every such string goes through ``prefwatch.core.textsafe.plain``
and is wrapped in ``Content`` (literal), never parsed as markup."""

from __future__ import annotations

import re

from textual.content import Content

from prefwatch.core.textsafe import plain


def literal(value: object, style: str = "") -> Content:
    """Content showing ``value`` exactly as written (after ``plain``), optionally styled as a whole."""
    content = Content(plain(value))
    return content.stylize(style) if style else content


def same_content(a: object, b: object) -> bool:
    """Whether two Contents show the same text in the same styles (Content's own ``==`` compares
    the text only). A widget updated with what it already shows is skipped: each update is a
    repaint and a message through Textual, several per panel at every refresh."""
    if not isinstance(a, Content) or not isinstance(b, Content):
        return False
    return a.plain == b.plain and list(a.spans) == list(b.spans)


def terminal_line(raw: str) -> str:
    """What a terminal would leave on screen of one output line: the text after its last carriage
    return (progress bars redraw themselves with ``\\r``), with ANSI colour sequences removed."""
    text = raw.rstrip("\r").rsplit("\r", 1)[-1]
    text = _ANSI.sub("", text)
    return plain(text)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
