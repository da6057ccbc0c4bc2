"""Turning job outcomes into queue state: done, failed, retried later, handed back, site paused.

Every write matches the job's claim token, so an outcome whose lease was lost is dropped and
counted, never written over another daemon's result. Used by the supervisor only.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..config import DownloadConfig
from ..errors import DatabaseRefused
from ..queue.jobs import ErrorKind, Job, Outcome, backoff_delay, site_of
from ..queue.store import Store
from .egress import Egress

log = logging.getLogger(__name__)
MAX_FAILURES_KEPT = 1000  #: failures remembered for the one-shot summary (newest kept)


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    retried: int = 0
    stalled_killed: int = 0
    worker_restarts: int = 0
    recycled: int = 0
    lost_leases: int = 0


class Recorder:
    def __init__(self, store: Store, db: Callable[..., Awaitable[Any]], counters: Counters,
                 site_pauses: dict[str, float], egress: Egress) -> None:
        self.store = store
        self.egress = egress
        self.db = db
        self.counters = counters
        self.site_pauses = site_pauses  # shared with the supervisor: site -> monotonic end of pause
        self.failures: collections.deque[tuple[str, str]] = collections.deque(maxlen=MAX_FAILURES_KEPT)
        self._rng = random.Random()

    async def write(self, job: Job, o: Outcome, d: DownloadConfig) -> None:
        """Record one outcome; raises DatabaseUnavailable (the caller keeps it for later).

        When the database refuses the outcome itself (a value it cannot store), the attempt is
        recorded as a transient failure with that reason instead: holding such a result back would
        retry the same write forever, and a row whose results are always refused ends failed."""
        try:
            await self._write(job, o, d)
        except DatabaseRefused as exc:
            log.error("job %s: the database refused its result (%s)", job.video_id, exc)
            kept = await self.db(self.store.retry_later, job.row_id, job.claim_token,
                                 error=f"result refused by the database: {exc}", kind=ErrorKind.TRANSIENT.value,
                                 delay_s=d.retry_backoff, max_attempts=d.max_attempts)
            if not kept:
                self.counters.lost_leases += 1

    async def _write(self, job: Job, o: Outcome, d: DownloadConfig) -> None:
        st, token = self.store, job.claim_token
        if o.ok:
            kept = await self.db(st.finish, job.row_id, token, file_path=o.file_path or "",
                                 file_size=o.file_size or 0, extractor=o.extractor)
            self.counters.completed += kept
            if kept:
                log.info("job %s done: %s (%d bytes)", job.video_id, o.file_path, o.file_size or 0)
            site = site_of(job.url)
            if site in self.site_pauses:
                await self.db(st.clear_site, site)
            await self.egress.succeeded(job)
        elif o.kind is None:  # daemon stopping, or a host condition: hand the row back, attempt not counted
            kept = await self.db(st.release, job.row_id, token, reason=o.error or "daemon stopped")
            if o.condition is not None:
                log.warning("job %s handed back without using an attempt (host condition %s)", job.video_id,
                            o.condition)
        elif o.kind in (ErrorKind.PERMANENT, ErrorKind.INVALID):
            kept = await self.db(st.fail, job.row_id, token, error=o.error or "", kind=o.kind.value)
            self.failed(job, o.error or "")
        elif o.kind is ErrorKind.THROTTLED:  # the site, or one identity on it, pauses; the row waits, uncharged
            delay = await self.egress.throttled(job, d, o.error or "throttled")
            kept = await self.db(st.release, job.row_id, token, delay_s=delay, reason=o.error)
        else:
            delay = backoff_delay(job.attempt, d.retry_backoff, d.retry_backoff_max, self._rng)
            kept = await self.db(st.retry_later, job.row_id, token, error=o.error or "",
                                 kind=o.kind.value, delay_s=delay, max_attempts=d.max_attempts)
            if job.attempt >= d.max_attempts:
                self.failed(job, o.error or "")
            else:
                self.counters.retried += 1
                log.warning("job %s failed (attempt %d/%d, %s): %s; retry in %.0fs", job.video_id,
                            job.attempt, d.max_attempts, o.kind.value, o.error, delay)
        if not kept:
            self.counters.lost_leases += 1
            log.warning("job %s: lease was lost; its result was not recorded", job.video_id)

    def failed(self, job: Job, error: str) -> None:
        self.counters.failed += 1
        self.failures.append((job.video_id, error))
        log.error("job %s failed for good (attempt %d): %s", job.video_id, job.attempt, error)
