"""The supervisor: one asyncio loop that claims jobs, dispatches them to slots and records outcomes.

Shared by the daemon and the one-shot ``fetch``. Each pass, in a fixed order: reap finished or
dead children, enforce stall and job timeouts, keep the database side current (lease renewal,
expired leases, counts, results held back during an outage), rebuild/recycle/resize slots (the
children's lives are ``pool.py``'s), watch the host (``health``: a full disk, an unusable
directory, children that cannot start pause claiming), then claim work for idle slots. All
database calls run on one dedicated thread, so a slow or absent database never stops the loop
from watching its children.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import logging
import os
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..config import Config, DownloadConfig
from ..queue.dblink import DB_CALL_TIMEOUT_S, DbLink
from ..errors import DatabaseGone, DatabaseUnavailable, HostFault, InvalidVideoId, SupervisorFailed
from ..queue.jobs import TEMP_DIR_NAME, Job, Outcome, lease_owner, site_of, url_for
from .breaker import CrashBreaker
from .health import Health
from .hostwatch import HostWatch
from .egress import Egress
from .recorder import Counters, JobStats, Recorder, move_count
from .pool import GROW_RECHECK_S, Pool
from .slots import Slot, reap_children
from ..queue.store import Claimed, Store

log = logging.getLogger(__name__)

BUSY_TICK_S = 0.25  # loop period while downloads run: bounds stall-detection latency
COUNTS_EVERY_S = 2.0
DB_FILE_EVERY_S = 1.0  # how often the SQLite file is checked to still be the one we opened
MAX_IDLE_S = 1.0  # the loop turns at least this often, even with nothing to do
PASS_FAILURE_LIMIT = 5  # failed passes within PASS_FAILURE_WINDOW_S that stop the supervisor
PASS_FAILURE_WINDOW_S = 60.0


class Supervisor:
    def __init__(self, cfg: Config, store: Store, *, node: str, one_shot: bool = False) -> None:
        self.cfg = cfg
        self.store = store
        self.node = node
        # the pid makes the lease owner unique per process: a one-shot fetch next to the daemon,
        # or a restarted daemon, must never renew (or release) another process's leases
        self.owner = lease_owner(node, os.getpid(), "fetch" if one_shot else "daemon")
        self.one_shot = one_shot
        self.generation = 1
        self.state = "starting"
        self.paused = False
        self.scanning = False  # a library scan runs: claiming now could fetch a file it is about to find
        self.started = False  # the first database pass is done
        self.stopping = False
        self.drain_deadline = 0.0
        self.counters = Counters()
        self.site_pauses: dict[str, float] = {}  # site -> monotonic end of pause
        self.link = DbLink()
        self.db_health = self.link.health
        self.db = self.link.call
        self.queue_counts: dict[str, int] = {}  # updated in place: the recorder moves rows in it
        self.oldest_queued_s = 0.0  # how long the longest-waiting eligible row has waited
        self.stats = JobStats()
        self.health = Health()  # host conditions: while any is active nothing is claimed
        self.hostwatch = HostWatch(self.health, on_result=functools.partial(self._on_done, None))
        self.pool = Pool(counters=self.counters, health=self.health, wake=self._on_done)
        self.fault: tuple[str, tuple[str, ...]] | None = None  # why a one-shot run stopped early, and names
        self.started_at = time.monotonic()
        self.last_turn = time.monotonic()
        self.drained = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_claim = 0.0
        self._renewed_at = self._expired_at = self._counts_at = self._pauses_at = self._file_at = 0.0
        self._lost: set[int] = set()
        self._failures: collections.deque[float] = collections.deque()  # monotonic times of failed passes
        self.egress = Egress(store, self.db, self.site_pauses)
        self.recorder = Recorder(store, self.db, self.counters, self.site_pauses, self.egress, stats=self.stats,
                                 queue_counts=self.queue_counts)

    # -- plumbing -------------------------------------------------------------------------------

    def healthy(self, now: float) -> bool:
        """Is the loop really turning? It turns at least every second, or is inside a database
        call, which times out after DB_CALL_TIMEOUT_S."""
        if now - self.last_turn < MAX_IDLE_S + 1.0:
            return True
        since = self.link.call_since
        return since is not None and now - since < DB_CALL_TIMEOUT_S + 1.0

    def wake(self, *, claim: bool = False) -> None:
        """Run a pass now (thread-safe only through loop.call_soon_threadsafe)."""
        if claim:
            self._next_claim = 0.0
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # while the forkserver still loads yt-dlp: the first claim must respect what these find
        await self._refresh(time.monotonic(), force=True)
        await self.hostwatch.first(self.cfg.download)
        self.pool.start_first(self.cfg.download, self.generation)  # the rest grow from the loop
        self.started = True
        if self.state == "starting":
            self.state = "paused" if self.paused else "running"
        try:
            while True:
                now = time.monotonic()
                self.last_turn = now
                # cleared before the pass, not after it: a job that ends while the pass awaits the
                # database sets it again, and the next pass reaps that job at once (cleared after,
                # the wake-up was lost and the job sat reaped by nobody for a whole tick)
                self._wake.clear()
                try:
                    if await self._pass(now):
                        break
                except DatabaseGone:
                    raise  # not a bad pass: every result from now on would be lost
                except Exception as exc:  # noqa: BLE001 - one bad pass must not leave downloads unattended
                    self._pass_failed(now, exc)
                try:
                    await asyncio.wait_for(self._wake.wait(), self._timeout(now))
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._shutdown()
        if self.fault is not None:
            raise HostFault(f"stopped: {self.fault[0]}; the rows it hit went back to the queue without "
                            "using an attempt", self.fault[1])

    async def _pass(self, now: float) -> bool:
        """One turn of the loop; True when the supervisor is done (stopped, or one-shot drained)."""
        await self._reap()
        for slot in self.slots:
            self.counters.downloaded_bytes += slot.new_bytes()
            slot.enforce_limits(now)
            if slot.unkillable(now):
                await self._give_up(slot)
        await self._refresh(now)
        self.pool.maintain(now, self.cfg.download, self.generation, stopping=self.stopping)
        self.hostwatch.tick(self.cfg.download, now)
        self.breaker.tick(now)
        if self.one_shot and not self.health.ok and not self.stopping:
            self.fault = (self.health.summary(), tuple(self.health.names()))  # reported, not waited out
            self.request_stop(quick=True)
        if self.stopping:
            if not any(s.busy for s in self.slots):
                return True
            if now >= self.drain_deadline:
                for s in self.slots:
                    if s.busy:
                        s.kill("daemon stopping", grace=self.cfg.download.kill_grace, now=now)
            return False
        await self._dispatch(now)
        # after the dispatch, so that no job waits for a child's start; the daemon keeps every
        # child ready for the next row, a one-shot run starts only those its rows need
        self.pool.grow(self.cfg.download, self.generation, now,
                       rows_waiting=self.queue_counts.get("queued", 0) if self.one_shot else None)
        return self.one_shot and self.drained

    def _pass_failed(self, now: float, exc: Exception) -> None:
        """A pass raised something unexpected (a bug, or an error nobody classified): log it with
        its traceback and go on, so the running downloads are still watched and recorded. If it
        keeps happening, stop for good with a clear error rather than spin while looking alive."""
        log.error("supervisor pass failed; carrying on", exc_info=exc)
        self._failures.append(now)
        while self._failures and now - self._failures[0] > PASS_FAILURE_WINDOW_S:
            self._failures.popleft()
        if len(self._failures) >= PASS_FAILURE_LIMIT:
            raise SupervisorFailed(f"the supervisor loop failed {len(self._failures)} times within "
                                   f"{PASS_FAILURE_WINDOW_S:.0f}s, last: {type(exc).__name__}: {exc}") from exc

    def _timeout(self, now: float) -> float:
        if any(s.busy for s in self.slots) or self.stopping:
            due = self._next_claim - now  # a token due before the tick is taken on time: lateness wastes budget
            if 0.0 < due < BUSY_TICK_S and not self.stopping and any(s.ready for s in self.slots):
                return max(0.02, due)
            if self.pool.grow_declined and not self.stopping:
                return GROW_RECHECK_S  # a download's ETA or the CPU gate may let the slot start by then
            return BUSY_TICK_S
        return max(0.02, min(self.cfg.database.poll_interval, self._next_claim - now, MAX_IDLE_S))

    def request_stop(self, *, quick: bool = False) -> None:
        now = time.monotonic()
        if not self.stopping:
            self.stopping = True
            self.state = "stopping"
            self.drain_deadline = now + (0.0 if quick else self.cfg.download.drain_timeout)
        elif quick:
            self.drain_deadline = now
        self.wake()

    # -- children -------------------------------------------------------------------------------

    @property
    def slots(self) -> list[Slot]:
        return self.pool.slots

    @property
    def breaker(self) -> CrashBreaker:
        return self.pool.breaker

    def _on_done(self, _fut: Any) -> None:
        """Runs on an executor's thread when a job ends or a child is ready: wake the loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(functools.partial(self.wake, claim=True))

    async def _reap(self) -> None:
        reaped = False
        for slot in self.slots:
            if not slot.busy or slot.future is None or not slot.future.done():
                continue
            reaped = True
            reason, pid, files = slot.kill_reason, slot.pid, slot.files()
            # a slot is free: claim for it in this pass (the wake-up of its end may have come while
            # the previous pass ran, before that pass's claim put the next one off by a poll)
            self._next_claim = 0.0
            self.counters.downloaded_bytes += slot.new_bytes()
            if reason != "daemon stopping":
                self.stats.durations.observe(time.monotonic() - slot.started_at)
            job, fut = slot.take_result()
            exc = fut.exception()
            if exc is None:
                outcome: Outcome = fut.result()
                if slot.kill_sent_at is not None:  # finished just as we killed it: the child is dying
                    slot.discard()
                else:
                    self.pool.after_job(slot, self.cfg.download, self.generation)
            else:
                cause = None if reason else slot.exit_cause()  # before child_died drops the executor
                if cause is not None:  # not a kill of ours: say how the child ended
                    exc = BrokenProcessPool(cause)
                self.pool.child_died(slot, pid)
            if job.row_id in self._lost:
                self._lost.discard(job.row_id)
                log.warning("job %s: lease lost to another daemon; result discarded", job.video_id)
                continue
            if exc is not None:
                outcome = self.pool.lost_child(slot, reason, exc, self.cfg.download)
            if outcome.condition is not None:  # the host, not the row: pause; the row is handed back
                self.hostwatch.job_fault(outcome.condition, outcome.error or "")
            elif outcome.kind is None and outcome.errno == errno.EADDRNOTAVAIL and job.identity:
                self.egress.fault(job.identity, outcome.error or "")  # the identity's, not the row's
            await self._record(job, dataclasses.replace(outcome, files=files))
        if reaped and not any(s.busy for s in self.slots):
            # the jobs' shared temporary directory, once no job of ours can be creating its own
            # directory in it (a child's os.makedirs fails when the parent goes meanwhile)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self.cfg.download.directory, TEMP_DIR_NAME))

    async def _give_up(self, slot: Slot) -> None:
        """The killed child outlives SIGKILL: record its job as the kill it was, now."""
        job, _ = slot.take_result()
        reason = self.pool.give_up(slot)
        if job.row_id in self._lost:
            self._lost.discard(job.row_id)
            return
        await self._record(job, self.pool.lost_child(slot, reason, None, self.cfg.download))

    # -- database side --------------------------------------------------------------------------

    async def _record(self, job: Job, outcome: Outcome) -> None:
        if not self.db_health.ok:
            self.db_health.pending.append((job, outcome))
            return
        try:
            await self._write_outcome(job, outcome)
        except DatabaseUnavailable as exc:
            self.link.down(exc)
            self.db_health.pending.append((job, outcome))

    async def _write_outcome(self, job: Job, o: Outcome) -> None:
        await self.recorder.write(job, o, self.cfg.download)

    async def _refresh(self, now: float, *, force: bool = False) -> None:
        """Lease renewal, expired leases, counts and held-back results, each on its own period."""
        h, lease = self.db_health, self.cfg.database.lease_duration
        if not h.ok and now < h.retry_at and not force:
            return
        try:
            if force or now - self._file_at >= DB_FILE_EVERY_S:
                self._file_at = now
                await self.db(self.store.file.check)  # DatabaseGone ends the run: see DbFile
            if not h.ok:
                await self.db(self.store.ping)
                self.link.up()
            while h.pending:
                job, outcome = h.pending[0]
                await self._write_outcome(job, outcome)
                h.pending.pop(0)
            if force or now - self._renewed_at >= lease / 3:
                kept = await self.db(self.store.renew, self.owner, lease)
                self._renewed_at = now
                for slot in self.slots:
                    if slot.job and (slot.job.row_id, slot.job.claim_token) not in kept \
                            and slot.kill_sent_at is None:
                        self._lost.add(slot.job.row_id)
                        slot.kill("lease lost", grace=self.cfg.download.kill_grace, now=now)
                await self._release_strays(kept)
            if force or now - self._expired_at >= min(lease / 2, 30.0):
                self._expired_at = now
                n = await self.db(self.store.requeue_expired, self.cfg.download.max_attempts)
                if n:
                    log.warning("returned %d rows with expired leases to the queue", n)
            if force or now - self._counts_at >= COUNTS_EVERY_S:
                self._counts_at = now
                await self._count()
                if self.cfg.download.identities or self.egress.buckets:
                    await self.egress.refresh(self.cfg.download)
            if force or now - self._pauses_at >= 10.0:
                self._pauses_at = now
                pauses = await self.db(self.store.site_pauses)
                self.site_pauses.clear()
                self.site_pauses.update({s: now + left for s, left in pauses.items()})
        except DatabaseUnavailable as exc:
            self.link.down(exc)

    async def _count(self) -> None:
        # update, never clear: the metrics thread may copy the dict at any moment (every state is a key)
        self.queue_counts.update(await self.db(self.store.counts))
        self.oldest_queued_s = await self.db(self.store.oldest_queued_age)

    async def _release_strays(self, kept: set[tuple[int, str]]) -> None:
        """Rows leased to this node that no slot runs: a claim whose answer never reached us
        (timed out, connection lost after commit). Renewal would keep them forever; hand them back."""
        ours = {(s.job.row_id, s.job.claim_token) for s in self.slots if s.job}
        ours.update((job.row_id, job.claim_token) for job, _ in self.db_health.pending)
        for row_id, token in kept - ours:
            log.warning("row %d is leased to %s but runs nowhere (a claim's answer was lost); releasing it",
                        row_id, self.owner)
            await self.db(self.store.release, row_id, token, reason="claim answer lost")

    async def _dispatch(self, now: float) -> None:
        idle = [s for s in self.slots if s.ready]
        if (not idle or self.paused or self.scanning or not self.db_health.ok or not self.health.ok
                or now < self._next_claim):
            return
        # the config of the claim goes with its jobs: a reload meanwhile must not change their identity
        cfg, generation = self.cfg, self.generation
        poll = cfg.database.poll_interval
        try:
            claimed, budget_in = await self.egress.claim(cfg, self.owner, len(idle), now)
            move_count(self.queue_counts, "queued", "running", len(claimed))
            if len(claimed) < len(idle):  # the next token of a budget may come before the next poll
                self._next_claim = now + (poll if budget_in is None else min(poll, budget_in))
                if self.one_shot and not claimed and not any(s.busy for s in self.slots):
                    left = await self.db(self.store.next_eligible_in)
                    self.drained = left is None
                    if left:  # (0: rows are eligible but wait for a budget or a pause: as above)
                        self._next_claim = now + min(max(left, budget_in or 0.0), poll)
            for c, slot in zip(claimed, idle):
                await self._start(c, slot, now, cfg.download, generation)
        except DatabaseUnavailable as exc:
            self.link.down(exc)

    async def _start(self, c: Claimed, slot: Slot, now: float, d: DownloadConfig, generation: int) -> None:
        try:
            url = url_for(c.video_id, c.url, d.url_template)
        except InvalidVideoId as exc:
            await self.recorder.invalid(c, str(exc))
            return
        site = site_of(url)
        if c.identity is None and self.site_pauses.get(site, 0.0) > now:  # (budgeted claims saw the pauses)
            await self.recorder.hand_back(c, delay_s=self.site_pauses[site] - now)
            return
        job = Job(row_id=c.row_id, video_id=c.video_id, url=url, attempt=c.attempt, claim_token=c.claim_token,
                  identity=c.identity)
        try:
            fut = slot.submit(job, d, generation)
        except RuntimeError as exc:  # the idle child died (BrokenProcessPool): hand the row back
            log.warning("slot %d: child lost before job %s could start (%s); rebuilding it",
                        slot.index, job.video_id, exc)
            slot.discard()
            self.counters.worker_restarts += 1
            self.breaker.death(d, now)
            await self.recorder.hand_back(c, reason="worker child lost before start")
            return
        self.stats.queue_waits.observe(c.queue_wait_s)
        fut.add_done_callback(self._on_done)
        log.debug("job %s started on slot %d (attempt %d, identity %s)", job.video_id, slot.index, job.attempt,
                  job.identity)

    # -- reload and stop ------------------------------------------------------------------------

    def apply_config(self, new: Config) -> None:
        """Switch to a validated config: new jobs use it, running jobs keep theirs."""
        self.cfg = new
        self.generation += 1
        self.pool.resize(new.download.workers, new.download, self.generation)
        self.wake(claim=True)

    async def _shutdown(self) -> None:
        pids = self.pool.stop_all()
        await asyncio.get_running_loop().run_in_executor(None, reap_children, pids, self.cfg.download.kill_grace)
        try:
            while self.db_health.pending:
                job, outcome = self.db_health.pending[0]
                await self._write_outcome(job, outcome)
                self.db_health.pending.pop(0)
            await self._count()
        except (DatabaseUnavailable, DatabaseGone) as exc:
            log.error("could not record %d results before exit (%s); their leases will expire",
                      len(self.db_health.pending), exc)
        self.link.close()
