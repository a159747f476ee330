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
