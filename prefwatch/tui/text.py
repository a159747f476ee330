"""Text that comes from logs is data: shown literally, never as markup, never as terminal control.

Cell ids, metric names, finding messages and job output can hold anything a folder name or a
training script can hold: ``[bold]`` (Rich markup), ESC sequences that would recolour or move the
cursor of the user's terminal, and bidirectional overrides that make text read differently from
what it is. Every such string goes through ``printable`` and is wrapped in ``Content`` (literal).
"""

from __future__ import annotations

import re

from textual.content import Content

# C0 and C1 controls and DEL; tab is turned into a space separately.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Unicode "format" characters that reorder or hide text (bidi overrides, zero-width marks).
_FORMAT = re.compile(r"[\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def printable(value: object) -> str:
    """``value`` as one line of visible characters: controls are shown as escapes (``\\x1b``)."""
    text = str(value).replace("\t", " ")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _FORMAT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def literal(value: object, style: str = "") -> Content:
    """Content showing ``value`` exactly as written (after ``printable``), optionally styled as a whole."""
    content = Content(printable(value))
    return content.stylize(style) if style else content


def terminal_line(raw: str) -> str:
    """What a terminal would leave on screen of one output line: the text after its last carriage
    return (progress bars redraw themselves with ``\\r``), with ANSI colour sequences removed."""
    text = raw.rstrip("\r").rsplit("\r", 1)[-1]
    text = _ANSI.sub("", text)
    return printable(text)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")

