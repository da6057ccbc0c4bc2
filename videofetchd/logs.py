"""Logging setup shared by the daemon and the one-shot fetch: one line per event on stderr.

Under systemd (``JOURNAL_STREAM`` set) the journal adds timestamps, so we do not.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info", *, verbose: bool = False) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else level.upper())
