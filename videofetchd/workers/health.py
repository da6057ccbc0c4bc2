"""Host health: named conditions that pause claiming until they clear.

A condition belongs to the host, not to a row: the download directory is gone, the disk is full,
worker processes cannot start. While any condition is active no new job is claimed, and a row
whose job failed because of one goes back to the queue without being charged an attempt. Each
condition has a name (stable: status, metrics and scripts key on it), a detail for people and the
time it began; it is logged once when it begins and once when it ends, never on every probe.

This module only keeps the set. Whoever detects a condition sets it and whoever can tell that it
is over clears it (``workers.hostwatch`` for the disk and the directory, the supervisor for its
children). It must not probe anything itself, so that adding a condition never changes the loop.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("videofetchd.health")

#: the names used today; others may be added (they are plain strings)
DISK_SPACE = "disk_space"  #: free space below download.min_free_space, or ENOSPC/EDQUOT during a job
DOWNLOAD_DIRECTORY = "download_directory"  #: missing and not creatable, not a directory, not writable
WORKERS_CANNOT_START = "workers_cannot_start"  #: worker children die before their first job
WORKERS_CRASHING = "workers_crashing"  #: crash_limit children died within crash_window (the crash breaker)
WORKER_UNKILLABLE = "worker_unkillable"  #: a killed child outlives SIGKILL (uninterruptible sleep)


@dataclass
class Condition:
    name: str
    detail: str
    since: float  #: epoch seconds (wall clock) when it began
    since_mono: float  #: monotonic time when it began, for durations

    def to_dict(self) -> dict[str, Any]:
        when = datetime.datetime.fromtimestamp(self.since, datetime.timezone.utc).isoformat(timespec="seconds")
        return {"name": self.name, "detail": self.detail, "since": when,
                "for_s": round(time.monotonic() - self.since_mono, 1)}


class Health:
    """The active conditions. Only the supervisor's loop calls these methods (no lock)."""

    def __init__(self) -> None:
        self._active: dict[str, Condition] = {}

    @property
    def ok(self) -> bool:
        """No condition is active: claiming may go on."""
        return not self._active

    def active(self, name: str) -> Condition | None:
        return self._active.get(name)

    def names(self) -> list[str]:
        return sorted(self._active)

    def conditions(self) -> list[Condition]:
        return [self._active[n] for n in sorted(self._active)]

    def set(self, name: str, detail: str) -> bool:
        """Begin ``name`` (True), or update the detail of an active one silently (False)."""
        current = self._active.get(name)
        if current is not None:
            current.detail = detail
            return False
        self._active[name] = Condition(name, detail, time.time(), time.monotonic())
        log.error("host condition %s: %s; no new jobs are claimed until it clears", name, detail)
        return True

    def clear(self, name: str, why: str = "") -> bool:
        """End ``name`` if it is active (True)."""
        cond = self._active.pop(name, None)
        if cond is None:
            return False
        lasted = time.monotonic() - cond.since_mono
        rest = f"; still active: {', '.join(self.names())}" if self._active else "; claiming resumes"
        log.warning("host condition %s cleared after %.0fs%s%s", name, lasted, f" ({why})" if why else "", rest)
        return True

    def to_dict(self) -> dict[str, Any]:
        """The ``health`` object of the status reply."""
        return {"ok": self.ok, "conditions": [c.to_dict() for c in self.conditions()]}

    def summary(self) -> str:
        """One line for errors and the one-shot fetch: every condition with its detail."""
        return "; ".join(f"{c.name}: {c.detail}" for c in self.conditions())
