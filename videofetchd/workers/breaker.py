"""The crash breaker: worker children that keep dying pause claiming instead of spinning.

Two cases, two health conditions. Children that die while they work (the OOM killer, a crashing
extractor): ``crash_limit`` deaths within ``crash_window`` pause claiming for ``crash_window``
(``workers_crashing``). Children that die before their first job, i.e. the interpreter cannot
start them at all (a script without a main guard, a broken install, no memory or no pids left):
``crash_limit`` such failures in a row mean no child can start (``workers_cannot_start``); slots
are then rebuilt only after a growing delay, and the first child that starts clears it. The
one-shot fetch stops at once instead (see the supervisor). Loop-only, no I/O.
"""

from __future__ import annotations

import collections
import logging

from ..config import DownloadConfig
from .health import WORKERS_CANNOT_START, WORKERS_CRASHING, Health

log = logging.getLogger("videofetchd.supervisor")
START_RETRY_S = 5.0  #: first delay before children are started again once none can start; doubles


class CrashBreaker:
    def __init__(self, health: Health) -> None:
        self.health = health
        self.deaths: collections.deque[float] = collections.deque()  # monotonic times within crash_window
        self.pause_until = 0.0  # monotonic end of a workers_crashing pause
        self.start_failures = 0  # children in a row that died before their first job
        self.rebuild_at = 0.0  # monotonic: while none can start, no slot is rebuilt before this

    def death(self, cfg: DownloadConfig, now: float) -> None:
        """A child died unexpectedly (while working, or idle after it had started)."""
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > cfg.crash_window:
            self.deaths.popleft()
        if len(self.deaths) >= cfg.crash_limit and now >= self.pause_until:
            self.pause_until = now + cfg.crash_window
            self.health.set(WORKERS_CRASHING, f"{len(self.deaths)} worker children died within "
                                              f"{cfg.crash_window:.0f}s; claiming paused for {cfg.crash_window:.0f}s")

    def start_failed(self, cfg: DownloadConfig, error: str, now: float) -> None:
        """A child died before its first job (its warm-up failed)."""
        self.start_failures += 1
        if self.start_failures < cfg.crash_limit:
            log.info("a worker child died while starting (%d in a row): %s", self.start_failures, error)
            return
        delay = min(cfg.crash_window, START_RETRY_S * 2 ** min(self.start_failures - cfg.crash_limit, 10))
        self.rebuild_at = now + delay
        self.health.set(WORKERS_CANNOT_START, f"{self.start_failures} worker children in a row died before their "
                                              f"first job: {error}")
        log.debug("no worker child can start; trying again in %.0fs", delay)

    def started(self) -> None:
        """A child warmed up: children can start."""
        self.start_failures = 0
        self.rebuild_at = 0.0
        self.health.clear(WORKERS_CANNOT_START, "a worker child started")

    def may_rebuild(self, now: float) -> bool:
        return now >= self.rebuild_at

    @property
    def cannot_start(self) -> bool:
        return self.health.active(WORKERS_CANNOT_START) is not None

    def tick(self, now: float) -> None:
        if self.health.active(WORKERS_CRASHING) and now >= self.pause_until:
            self.health.clear(WORKERS_CRASHING, "the crash pause is over")
