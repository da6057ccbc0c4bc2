"""Exception hierarchy and exit codes.

Library code raises these and never calls ``sys.exit``; the two CLIs (``cli.py`` and ``ctl.py``)
are the only places where an exception becomes a message on stderr and an exit code.
This module imports nothing from the package.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1  #: some jobs failed (one-shot fetch), or an unexpected error
EXIT_USAGE = 2  #: bad command line or bad input (argparse uses 2 too)
EXIT_NOT_RUNNING = 3  #: LSB "program is not running" (videofetchctl status)
#: EX_TEMPFAIL: the database is unreachable at start or its file vanished, another daemon holds
#: the control socket, or metrics.listen cannot be bound; systemd may retry
EXIT_TEMPFAIL = 75
EXIT_CONFIG = 78  #: EX_CONFIG: the configuration is invalid; RestartPreventExitStatus=78
EXIT_INTERRUPTED = 130  #: 128 + SIGINT: a videofetchctl command stopped by Ctrl-C


def exit_now(code: int) -> NoReturn:
    """End the process after a one-shot ``fetch``: atexit handlers run and output is flushed as
    at any exit, but the interpreter does not then tear down every object one by one (30-60 ms
    after a fetch, which the user waits for, and the kernel frees it all anyway). Only when the
    command is done: no thread may still be working."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class VideofetchdError(Exception):
    """Base class of every error videofetchd reports to a user."""

    exit_code = EXIT_FAILURE


class ConfigError(VideofetchdError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = EXIT_CONFIG


class ListenUnavailable(VideofetchdError):
    """An address to listen on (``metrics.listen``) cannot be bound at start: the port is taken
    (an old instance still stopping, another program) or the address is not up yet. EX_TEMPFAIL,
    so that systemd's Restart= tries again; the message names the address."""

    exit_code = EXIT_TEMPFAIL


class DatabaseUnavailable(VideofetchdError):
    """The database could not be opened or reached."""

    exit_code = EXIT_TEMPFAIL


class DatabaseRefused(VideofetchdError):
    """The database refused a value (a constraint, a type): the write is wrong, not the database.

    Retrying the same write cannot help, so callers must not treat it as an outage (which would
    hold it back and retry it forever)."""


class SupervisorFailed(VideofetchdError):
    """The supervisor loop kept failing; the daemon stops (non-zero) for systemd to restart it."""


class DatabaseGone(VideofetchdError):
    """The SQLite database file was deleted or replaced while it was open: results written from
    now on would land in a file nobody can reach, so the daemon stops (a restart opens a fresh one)."""

    exit_code = EXIT_TEMPFAIL


class AlreadyRunning(VideofetchdError):
    """Another videofetchd answers on the control socket (its socket is never taken over)."""

    exit_code = EXIT_TEMPFAIL


class HostFault(VideofetchdError):
    """A host condition (full disk, unusable download directory, worker processes that cannot
    start) stopped a one-shot fetch; the rows it hit went back to the queue uncharged."""

    def __init__(self, message: str, conditions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.conditions = conditions  #: the health condition names that were active


class InvalidVideoId(VideofetchdError):
    """A video ID or URL given by a user cannot be queued safely."""

    exit_code = EXIT_USAGE


class NotRunning(VideofetchdError):
    """No daemon answers on the control socket."""

    exit_code = EXIT_NOT_RUNNING


class ControlError(VideofetchdError):
    """The daemon answered a control request with an error."""
