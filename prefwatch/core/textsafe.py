"""Text that comes from logs or job output is data: make it safe to show literally.

Cell ids, metric names, finding messages and job output can hold anything a folder name or a training
script can hold: ``[bold]`` (Rich markup), ESC sequences that would recolour or move the cursor of the
user's terminal, and bidirectional overrides that make text read differently from what it is. Markup is
never interpreted as long as callers build ``rich.text.Text`` or Textual ``Content`` from these strings
(never markup strings); ``plain`` makes the rest visible.
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; tab is turned into a space separately.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Unicode "format" characters that reorder or hide text (bidi overrides, zero-width marks).
_FORMAT = re.compile(r"[\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def plain(value: object) -> str:
    """``value`` as one line of visible characters: controls are shown as escapes (``\\x1b``)."""
    text = str(value).replace("\t", " ")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _FORMAT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# What CommonMark, GitHub's Markdown and the HTML they let through could read as markup in a line of
# data: emphasis and code (* _ ` ~), links and images ([ ]), HTML and entities (< > &), tables (|),
# headings, mentions and issue references (# @), and what autolinks a bare address (the ":" of "://",
# the "." of "www.x" or "evil.com"). Each is escaped with a backslash, which CommonMark defines for
# every ASCII punctuation character and renders as the character itself. An "_" inside a word is left
# alone: CommonMark never reads it as emphasis, and "non_finite" stays readable in the raw text.
_MARKDOWN = re.compile(r"[\\`*\[\]<>&|~#@]|(?<![^\W_])_|_(?![^\W_])|:(?=//)|(?<=[^\W_])\.(?=[^\W\d_])")
# At the start of a list item, what would open a block inside it: a nested list ("- x", "+ x", "1. x").
_MARKDOWN_START = re.compile(r"^(?:(\d{1,9})([.)])|([-+]))(?=\s|$)")


def markdown_literal(value: object) -> str:
    """``value`` as Markdown that renders as exactly its text, on one line: no markup, HTML, link or
    image can come from it (``plain`` first: controls shown as escapes)."""
    text = _MARKDOWN.sub(lambda m: "\\" + m.group(), plain(value))
    return _MARKDOWN_START.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", text)


def markdown_code(value: object) -> str:
    """``value`` as a Markdown code span, which renderers show literally (no markup, HTML, entity or link
    is read inside one): fenced by one backtick more than its longest run of them, padded with a space
    where it starts or ends with a backtick or a space (the renderer takes one off each side)."""
    text = plain(value)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
