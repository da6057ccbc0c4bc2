"""Turning job outcomes into queue state: done, failed, retried later, handed back, site paused,
a playlist's entries queued.

Every write matches the job's claim token, so an outcome whose lease was lost is dropped and
counted, never written over another daemon's result. Error texts come from sites: they are
stored with control characters escaped. A row that fails for good leaves no partial files
behind. Used by the supervisor only.
The counters, outcome tallies and histograms here are the one record of what happened: status
and the Prometheus endpoint read them as they are, so nothing is counted twice. Each kept write
also moves the row in the supervisor's cached queue counts, so counts and counters always agree.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import logging
import os
import random
import re
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import DownloadConfig
from ..errors import DatabaseRefused
from ..queue.jobs import ErrorKind, Job, Outcome, backoff_delay, job_temp_dir, site_of
from ..queue import playlists
from ..queue.store import Claimed, Store
from .egress import Egress
from ..text import printable

log = logging.getLogger(__name__)
MAX_FAILURES_KEPT = 1000  #: failures remembered for the one-shot summary (newest kept)
#: upper bounds (seconds) of the job duration histogram: from a small file to job_timeout's default
DURATION_BUCKETS_S = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600)
#: upper bounds (seconds) of the queue wait histogram (eligible -> started): a busy queue waits days
QUEUE_WAIT_BUCKETS_S = (1, 5, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
                        3 * 86400, 7 * 86400)


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    retried: int = 0
    stalled_killed: int = 0
    worker_restarts: int = 0
    recycled: int = 0
    lost_leases: int = 0
    downloaded_bytes: int = 0  #: bytes yt-dlp reported written (a resumed .part counts its first part again)


@dataclass
class Buckets:
    """A cumulative histogram kept where the events happen; the metrics endpoint reads it as is."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  #: per bucket (not cumulative); the last is +Inf
    total: float = 0.0  #: sum of every observed value

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # le is inclusive: value == bound fits
        self.total += value


@dataclass
class JobStats:
    """Outcome tallies and histograms for the metrics endpoint (not in the status reply)."""

    #: (outcome, error_kind) -> attempts that ended so; outcome is done, failed or retried, error_kind "" for done
    finished: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    #: (identity, outcome) of the attempts that ended under an egress identity
    by_identity: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    durations: Buckets = field(default_factory=lambda: Buckets(DURATION_BUCKETS_S))
    queue_waits: Buckets = field(default_factory=lambda: Buckets(QUEUE_WAIT_BUCKETS_S))


def move_count(counts: dict[str, int], src: str, dst: str, n: int = 1) -> None:
    """Move ``n`` rows between states in cached queue counts (left alone before the first count)."""
    if counts and n > 0:
        counts[src] = max(0, counts.get(src, 0) - n)
        counts[dst] = counts.get(dst, 0) + n


class Recorder:
    def __init__(self, store: Store, db: Callable[..., Awaitable[Any]], counters: Counters,
                 site_pauses: dict[str, float], egress: Egress, *, stats: JobStats | None = None,
                 queue_counts: dict[str, int] | None = None) -> None:
        self.store = store
        self.egress = egress
        self.db = db
        self.counters = counters
        self.site_pauses = site_pauses  # shared with the supervisor: site -> monotonic end of pause
        self.stats = stats if stats is not None else JobStats()
        self.queue_counts = queue_counts if queue_counts is not None else {}  # shared with the supervisor
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
            error = f"result refused by the database: {exc}"
            kept = await self.db(self.store.retry_later, job.row_id, job.claim_token, error=error,
                                 kind=ErrorKind.TRANSIENT.value, delay_s=d.retry_backoff, max_attempts=d.max_attempts)
            if not kept:
                self.counters.lost_leases += 1
            elif job.attempt >= d.max_attempts:
                self.failed(job, error, ErrorKind.TRANSIENT)
            else:
                self._tally("retried", ErrorKind.TRANSIENT.value, "queued", job.identity)
                self.counters.retried += 1

    async def _write(self, job: Job, o: Outcome, d: DownloadConfig) -> None:
        st, token = self.store, job.claim_token
        if o.error:
            o = dataclasses.replace(o, error=printable(o.error))
        final = False
        if o.ok and o.reused and o.file_path:
            other = await self.db(st.download_owner, o.file_path, job.row_id)
            if other is not None:  # yt-dlp found "its" file: another video's, of the same name
                o = dataclasses.replace(o, ok=False, kind=ErrorKind.PERMANENT, error=printable(
                    f"the output file {o.file_path} is video {other}'s already: download.output_template "
                    f"gives both the same name (yt-dlp's ID of both is {o.ytdlp_id!r}); "
                    "put %(videofetchd_id)s in it to tell them apart"))
        if o.ok and o.entries:
            kept, added = await self.db(playlists.expand, st, job.row_id, token, o.entries, extractor=o.extractor)
            self.counters.completed += kept
            if kept:  # the playlist's row is done once, like a download; its new rows are queued
                self._tally("done", "", "done", job.identity)
                if self.queue_counts:
                    self.queue_counts["queued"] = self.queue_counts.get("queued", 0) + added
                log.info("job %s: a playlist of %d entries, queued as rows (%d new)", job.video_id,
                         len(o.entries), added)
        elif o.ok:
            kept = await self.db(st.finish, job.row_id, token, file_path=o.file_path or "",
                                 file_size=o.file_size or 0, extractor=o.extractor, ytdlp_id=o.ytdlp_id)
            self.counters.completed += kept
            if kept:
                self._tally("done", "", "done", job.identity)
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
            if kept:
                move_count(self.queue_counts, "running", "queued")
        elif o.kind in (ErrorKind.PERMANENT, ErrorKind.INVALID):
            kept = await self.db(st.fail, job.row_id, token, error=o.error or "", kind=o.kind.value)
            if kept:
                self.failed(job, o.error or "", o.kind)
            final = True
        elif o.kind is ErrorKind.THROTTLED:  # the site, or one identity on it, pauses; the row waits, uncharged
            delay = await self.egress.throttled(job, d, o.error or "throttled")
            kept = await self.db(st.release, job.row_id, token, delay_s=delay, reason=o.error)
            if kept:
                self._tally("retried", o.kind.value, "queued", job.identity)
        else:
            delay = backoff_delay(job.attempt, d.retry_backoff, d.retry_backoff_max, self._rng)
            kept = await self.db(st.retry_later, job.row_id, token, error=o.error or "",
                                 kind=o.kind.value, delay_s=delay, max_attempts=d.max_attempts)
            if kept and job.attempt >= d.max_attempts:
                self.failed(job, o.error or "", o.kind)
                final = True
            elif kept:
                self._tally("retried", o.kind.value, "queued", job.identity)
                self.counters.retried += 1
                log.warning("job %s failed (attempt %d/%d, %s): %s; retry in %.0fs", job.video_id,
                            job.attempt, d.max_attempts, o.kind.value, o.error, delay)
        if not kept:
            self.counters.lost_leases += 1
            log.warning("job %s: lease was lost; its result was not recorded", job.video_id)
        elif final:  # with the lease lost, another daemon may be writing those files now
            loop = asyncio.get_running_loop()
            removed = await loop.run_in_executor(None, remove_leftovers, o.files, d.directory, job.video_id)
            if removed:
                log.info("job %s: removed %d partial files: %s", job.video_id, len(removed),
                         ", ".join(printable(os.path.basename(p)) for p in removed[:5]))

    async def invalid(self, c: Claimed, error: str) -> None:
        """A claimed row that cannot even be started (its ID makes no URL): failed for good."""
        if await self.db(self.store.fail, c.row_id, c.claim_token, error=error, kind=ErrorKind.INVALID.value):
            self.failed(Job(c.row_id, c.video_id, c.url or "", c.attempt, c.claim_token), error, ErrorKind.INVALID)

    async def hand_back(self, c: Claimed, **how: Any) -> None:
        """Give a claimed row that never started back to the queue, uncharged (``store.release``)."""
        if await self.db(self.store.release, c.row_id, c.claim_token, **how):
            move_count(self.queue_counts, "running", "queued")

    def _tally(self, outcome: str, kind: str, new_status: str, identity: str | None) -> None:
        self.stats.finished[(outcome, kind)] += 1
        if identity is not None:
            self.stats.by_identity[(identity, outcome)] += 1
        move_count(self.queue_counts, "running", new_status)

    def failed(self, job: Job, error: str, kind: ErrorKind) -> None:
        """A row failed for good (its write was kept)."""
        self._tally("failed", kind.value, "failed", job.identity)
        self.counters.failed += 1
        self.failures.append((job.video_id, error))
        log.error("job %s failed for good (attempt %d): %s", job.video_id, job.attempt, error)


_FORMAT_PIECE = re.compile(r"\.f[0-9]+(?:-[0-9]+)?\.[A-Za-z0-9]+$")  # yt-dlp's per-format file before a merge


def remove_leftovers(files: Sequence[str], directory: str, video_id: str | None = None) -> list[str]:
    """Remove what a job that failed for good left behind: its temporary directory (every
    ``.part``, fragment, format piece and half-written post-processor output of the job is
    there; see ``download``), and, for files a job wrote straight into ``directory`` (a
    videofetchd before temporary directories), the ``.part``, ``.ytdl``, ``.part-FragN`` and
    ``.temp.`` files of every file it wrote, and unmerged format pieces. A finished file in
    ``directory`` is kept (a later scan may still find it). Returns the paths removed."""
    removed: list[str] = []
    if video_id is not None:
        temp = job_temp_dir(directory, video_id)
        try:
            with os.scandir(temp) as it:
                removed += [e.path for e in it]
            shutil.rmtree(temp)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("job %s: cannot remove its temporary directory %s: %s", video_id, printable(temp),
                        exc.strerror or exc)
        files = [f for f in files if not f.startswith(temp + os.sep)]
    root = os.path.realpath(directory)
    wanted: dict[str, set[str]] = {}  # directory -> names to remove
    frag_prefixes: dict[str, set[str]] = {}
    for path in files:
        parent, name = os.path.split(path[:-5] if path.endswith(".part") else path)
        real = os.path.realpath(parent)
        if real != root and not real.startswith(root + os.sep):
            continue
        stem, dot, ext = name.rpartition(".")
        names = {name + ".part", name + ".ytdl", f"{stem}.temp.{ext}" if dot else name + ".temp"}
        if _FORMAT_PIECE.search(name):
            names.add(name)
        wanted.setdefault(parent, set()).update(names)
        frag_prefixes.setdefault(parent, set()).add(name + ".part-Frag")
    for parent, names in wanted.items():
        prefixes = tuple(frag_prefixes[parent])
        try:
            with os.scandir(parent) as it:
                present = [e.name for e in it if e.name in names or e.name.startswith(prefixes)]
        except OSError:
            continue
        for name in present:
            try:
                os.unlink(os.path.join(parent, name))
                removed.append(os.path.join(parent, name))
            except OSError:
                pass
    return removed
