"""The supervisor's eye on the host: the download directory and its free space, probed on a
thread of their own and turned into health conditions that begin and end by themselves.

A probe runs on a fresh daemon thread, so a hung mount (NFS, a dead USB disk) stalls the probe,
never the loop, and never the process's exit; a probe that does not finish in time is itself a
condition. Free space is cheap to ask (statvfs), so it is asked every couple of seconds; the
directory is really written to (a file created and removed) only every half minute while all is
well, and every couple of seconds while a condition of ours is active.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import DownloadConfig
from .health import DISK_SPACE, DOWNLOAD_DIRECTORY, Health
from .hostprobe import Fault, human_size, probe_directory, probe_space

log = logging.getLogger(__name__)

SPACE_EVERY_S = 2.0  #: seconds between free-space probes
DIRECTORY_EVERY_S = 30.0  #: seconds between write probes of the directory while all is well
ACTIVE_EVERY_S = 2.0  #: seconds between write probes while a condition of ours is active
PROBE_TIMEOUT_S = 10.0  #: a probe still running after this long is a condition of its own
#: after a job hit ENOSPC/EDQUOT, free space must grow by this many bytes before claiming resumes...
RESUME_MARGIN = 1024 * 1024
#: ...or this many seconds must pass (a full quota does not show in statvfs): one more try, uncharged
FAULT_RETRY_S = 300.0


@dataclass(frozen=True)
class ProbeResult:
    started: float  #: monotonic
    directory_probed: bool
    directory: Fault | None
    free: int | None
    space: Fault | None


def _probe(directory: str, min_free: int, write: bool, started: float) -> ProbeResult:
    fault = probe_directory(directory) if write else None
    free, space = probe_space(directory, min_free)
    return ProbeResult(started, write, fault, free, space)


class HostWatch:
    """Sets and clears the ``download_directory`` and ``disk_space`` conditions. Loop-only."""

    def __init__(self, health: Health, on_result: Callable[[], None] = lambda: None) -> None:
        self.health = health
        self.on_result = on_result  # called on the probe's thread when a result is ready
        self._pending: concurrent.futures.Future[ProbeResult] | None = None
        self._pending_since = 0.0
        self._directory_at = self._space_at = float("-inf")
        self._job_fault = False  # disk_space began with a job's ENOSPC/EDQUOT, not the threshold
        self._fault_at = 0.0  # monotonic time of that
        self._baseline: int | None = None  # free bytes at the first probe that started after it

    def job_fault(self, condition: str, detail: str) -> None:
        """A job failed because of the host: the condition begins now; probe again soon."""
        began = self.health.set(condition, detail)
        if condition == DISK_SPACE and began:
            self._job_fault, self._baseline, self._fault_at = True, None, time.monotonic()
        self._directory_at = self._space_at = float("-inf")

    async def first(self, cfg: DownloadConfig) -> None:
        """Probe once and wait for the answer, so that the first claim already respects it."""
        self.tick(cfg, time.monotonic())
        deadline = time.monotonic() + PROBE_TIMEOUT_S + 0.5
        while self._pending is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            self.tick(cfg, time.monotonic())

    def tick(self, cfg: DownloadConfig, now: float) -> None:
        """Apply a finished probe; start the next one when one is due (never two at once)."""
        if self._pending is not None:
            if not self._pending.done():
                if now - self._pending_since > PROBE_TIMEOUT_S:
                    self.health.set(DOWNLOAD_DIRECTORY, f"probing {cfg.directory} has not finished for "
                                                        f"{PROBE_TIMEOUT_S:.0f}s (a hung mount?)")
                    self._directory_at = float("-inf")  # once it returns, a write probe decides at once
                return
            done, self._pending = self._pending, None
            if done.exception() is None:
                self._apply(done.result(), cfg)
            else:  # a bug in a probe must not stop the loop; the next probe tries again
                log.error("host probe failed: %r", done.exception())
        ours = self.health.active(DISK_SPACE) or self.health.active(DOWNLOAD_DIRECTORY)
        write = now - self._directory_at >= (ACTIVE_EVERY_S if ours else DIRECTORY_EVERY_S)
        if not write and now - self._space_at < SPACE_EVERY_S:
            return
        self._space_at = now
        if write:
            self._directory_at = now
        self._start(cfg, write, now)

    def _start(self, cfg: DownloadConfig, write: bool, now: float) -> None:
        fut: concurrent.futures.Future[ProbeResult] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(_probe(cfg.directory, cfg.min_free_space, write, now))
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                fut.set_exception(exc)
            self.on_result()

        self._pending, self._pending_since = fut, now
        threading.Thread(target=run, name="videofetchd-probe", daemon=True).start()

    def _apply(self, r: ProbeResult, cfg: DownloadConfig) -> None:
        h = self.health
        if r.directory_probed:
            if r.directory is not None and r.directory.condition == DISK_SPACE:  # no inode left
                self.job_fault(DISK_SPACE, r.directory.detail)
            elif r.directory is not None:
                h.set(DOWNLOAD_DIRECTORY, r.directory.detail)
            else:
                h.clear(DOWNLOAD_DIRECTORY, f"{cfg.directory} is writable")
        if self._job_fault and self._baseline is None and r.started >= self._fault_at:
            self._baseline = r.free  # how full the disk was when the job hit it
        if r.space is not None:
            h.set(DISK_SPACE, r.space.detail)
            return
        cond = h.active(DISK_SPACE)
        if cond is None:
            return
        free = "?" if r.free is None else human_size(r.free)
        if not self._job_fault:
            h.clear(DISK_SPACE, f"{free} free")
            return
        grown = r.free is not None and self._baseline is not None and r.free >= self._baseline + RESUME_MARGIN
        if grown or time.monotonic() - cond.since_mono >= FAULT_RETRY_S:
            h.clear(DISK_SPACE, f"{free} free" if grown else "trying again")
            self._job_fault, self._baseline = False, None
