"""Logging setup shared by the daemon and the one-shot fetch: one line per event on stderr.

Under systemd (``JOURNAL_STREAM`` set) the journal adds timestamps, so we do not. Messages carry
text from outside (IDs, URLs, file names, sites' error texts): control characters in them are
escaped, so a log line can neither drive the reader's terminal nor forge another line.
"""

from __future__ import annotations

import logging
import os
import sys

from .text import printable, printable_block


class SafeFormatter(logging.Formatter):
    """Escapes control characters in the message (newlines included: one event, one line);
    a traceback keeps its line breaks, and only the rest of it is escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802 - logging's name
        return printable_block(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return printable_block(super().formatStack(stack_info))


def setup_logging(level: str = "info", *, verbose: bool = False) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else level.upper())
