"""Text from outside, made safe to print: control characters become visible escapes.

Video IDs, URLs, file names, HTTP reason phrases and yt-dlp's error messages come from sites, queue
writers and file systems that may be hostile. Printed raw, an ESC or OSC sequence in one of them
repaints or retitles the operator's terminal, and a newline forges log lines. Everything that
prints such text (status, list, export, scan reports, the log) passes it through ``printable``.
Standard library only and imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import re

#: C0 controls, DEL, C1 controls, the Unicode line/paragraph separators and the bidirectional
#: overrides and isolates (which can reorder what a terminal shows)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_BLOCK = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _SHORT.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: object) -> str:
    """``text`` on one line with every control character escaped (``\\x1b``, ``\\n``, ``\\u202e``).

    Idempotent on its own output (an escape is plain printable text), so text stored escaped and
    escaped again when printed shows the same. Backslashes already in the text are left alone:
    the result is for eyes, not for parsing back.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():  # the common case: no regular expression at all
        return s
    return _UNSAFE.sub(_escape, s)


def printable_block(text: str) -> str:
    """Like ``printable`` but keeps line breaks: for multi-line output we compose ourselves."""
    if text.isprintable():
        return text
    return _UNSAFE_IN_BLOCK.sub(_escape, text)
