"""Text that comes from logs or job output is data: make it safe to show literally.

Rich markup is never interpreted as long as callers build ``rich.text.Text`` from these strings (not
markup strings); what remains is terminal control: escape sequences and control characters, which
would move the cursor or recolour the screen. ``plain`` replaces them with visible stand-ins.
"""

from __future__ import annotations

import re

# ESC, CSI and other C0/C1 controls except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    char = match.group(0)
    return "␛" if char == "\x1b" else f"\\x{ord(char):02x}"


def plain(text: object) -> str:
    """A string with every control character made visible (ESC shows as ␛), safe to print."""
    return _CONTROL.sub(_visible, str(text))
