"""sd_notify glue: READY/RELOADING/STOPPING/STATUS/WATCHDOG/EXTEND_TIMEOUT_USEC.

A no-op outside systemd (no ``NOTIFY_SOCKET``). Only the daemon's main process calls this:
systemd drops notifications from other pids under ``NotifyAccess=main``. Messages are forced
to ASCII because the sdnotify package encodes latin-1 and silently drops anything else.
"""

from __future__ import annotations

import os
import time

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self._last_status = ""

    def send(self, *fields: str) -> None:
        if self._sd is not None:
            text = "\n".join(fields).encode("ascii", "replace").decode("ascii")
            self._sd.notify(text)

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        """Send STATUS= only when it changed: one line, ASCII, IDs and numbers only."""
        line = text.replace("\n", " ")
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_period() -> float | None:
    """Seconds between pings (half of WatchdogSec=), or None when the watchdog is off for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2 / 1_000_000)
    except ValueError:
        return None
