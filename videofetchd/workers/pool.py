"""The worker slots and the lives of their children: start, warm-up, recycling, resizing, death.

The supervisor decides what runs where and records what came of it; this module keeps the
children that do the work alive and says what a child's end means for its job: a kill of ours
(stall, timeout, stop) is that kill; any other death is a crash, counted by the crash breaker; a
child that outlives SIGKILL is given up on (``stuck.py``); one still warming up after
``stall_timeout`` has hung. Loop-only: executor threads only set a flag and wake the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..config import DownloadConfig
from ..queue.jobs import ErrorKind, Outcome
from .breaker import CrashBreaker
from .health import Health
from .recorder import Counters
from .slots import Slot, signal_group
from .stuck import Unkillable
from .upgrade import recycle_stale

log = logging.getLogger("videofetchd.supervisor")
WARM_HUNG_MIN_S = 10.0  #: a warm-up that takes longer than this (and stall_timeout) has hung
LIVENESS_EVERY_S = 1.0  #: how often idle children are checked to be alive
CPU_WINDOW_S = 0.15  #: the window over which CpuGate measures the machine's CPU use
MACHINE_BUSY = 0.75  #: of the cores: this busy while short jobs end, the CPU is what limits them
SHORT_JOBS_S = 1.0  #: a job ended this recently: jobs are short, and the CPU may be what limits them
FIRST_JOB_S = 0.25  #: no child beyond one per core this soon after the first, unless a job ended
TAIL_S = 0.5  #: a one-shot run starts no child when the running ones will have drained the queue by then
PACE_JOBS = 16  #: the pace of finished jobs is measured over this many
PAYS_OFF = 1.05  #: a child beyond one per core must raise that pace by this factor
GROW_RECHECK_S = 0.05  #: a held-back slot is reconsidered this soon (the loop's tick is 0.25 s)
_TICKS = os.sysconf("SC_CLK_TCK")


class CpuGate:
    """Is every core busy already while jobs end one after another? Users size ``workers`` for
    their bandwidth, not their cores: with files that take no time to arrive (small ones on a
    fast link) the work is CPU-bound, and a child more only shares the same cores (on the 2-core
    benchmark 8 children were 13 % slower than 4). So beyond one child per core, a one-shot run
    starts another only unless jobs are ending (one ended within ``SHORT_JOBS_S``) and the
    machine's cores were ``MACHINE_BUSY`` busy over the last ``CPU_WINDOW_S`` (/proc/stat: a core
    another program keeps busy is no more ours), and not in the first ``FIRST_JOB_S`` before a
    job ended. One window lets one child start: the next waits for a window that sees it work
    (one dip on the busy line had let four start in a row). And a child beyond one per core must
    pay: once ``PACE_JOBS`` more jobs have ended, their pace must beat the pace before it by
    ``PAYS_OFF``, or no child more starts while jobs stay short (the busy line alone let 8
    workers reach five children where 4 stopped at four, and be 4 % slower). Long downloads that
    wait for bytes start every slot within a quarter second."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self._mark: tuple[float, float] | None = None  # (monotonic, busy CPU seconds of the machine)
        self._bound = True  # not measured yet
        self.rate: float | None = None  #: busy cores of the machine over the last window measured
        self.job_ended_at = float("-inf")  #: monotonic; set by ``job_ended``
        self.started_at = time.monotonic()  #: when the first child was up (set by the pool)
        self._ends: deque[float] = deque(maxlen=PACE_JOBS)  # when the last jobs ended (monotonic)
        self._pace_before: float | None = None  # jobs/s before the last child beyond one per core
        self._since_grew: int | None = None  # jobs ended since then (None: nothing to judge)
        self.saturated = False  #: a child more did not pay: none more while jobs are short

    def grew(self) -> None:
        """A child beyond one per core was started on the last measurement: the next one waits
        for a window measured afresh, with this child at work (one measurement, one child), and
        for the verdict on whether this one paid."""
        self._mark = None
        self._bound = True
        self._pace_before = self.pace()
        self._since_grew = 0

    def job_ended(self, now: float) -> None:
        self.job_ended_at = now
        self._ends.append(now)
        if self._since_grew is not None:
            self._since_grew += 1

    def pace(self) -> float | None:
        """Jobs per second over the last ``PACE_JOBS`` ends (None: not known)."""
        span = self._ends[-1] - self._ends[0] if len(self._ends) > 1 else 0.0
        return (len(self._ends) - 1) / span if span > 0 else None

    def _judge(self) -> bool:
        """Still judging the last child (hold the next); sets ``saturated`` when it did not pay.
        Judged on the second ``PACE_JOBS`` jobs after its start: the first pay for its fork."""
        if self._since_grew is None:
            return False
        if self._since_grew < 2 * PACE_JOBS:
            return True
        after, before = self.pace(), self._pace_before
        self.saturated = before is not None and after is not None and after < before * PAYS_OFF
        self._since_grew = None
        return False

    def drains_within(self, waiting: int, seconds: float, now: float) -> bool:
        """Will the running children have taken the ``waiting`` rows within ``seconds``, at the
        pace of the last jobs? A child started now would come too late to take its share: it
        would only cost its start (a fork and its copy-on-write faults, ~40 ms of CPU) in the
        last moments of a one-shot run. False while the pace is unknown or old (long jobs)."""
        if len(self._ends) < 2 or now - self._ends[-1] > SHORT_JOBS_S:
            return False
        span = self._ends[-1] - self._ends[0]
        return span <= 0 or waiting * span < (len(self._ends) - 1) * seconds

    def bound(self, now: float, started: int) -> bool:
        if started < self.cores:
            return False
        if self.job_ended_at == float("-inf") and now - self.started_at < FIRST_JOB_S:
            return True  # the first jobs run: more forks now only slow them (and the first file)
        if now - self.job_ended_at > SHORT_JOBS_S:
            return False
        if self._judge() or self.saturated:
            return True
        if self._mark is None or now - self._mark[0] >= CPU_WINDOW_S:
            busy = _machine_busy_seconds()
            if busy is None:
                self._bound = False  # no /proc/stat: go by the worker count, as before
            elif self._mark is not None:
                self.rate = max(0.0, busy - self._mark[1]) / (now - self._mark[0])
                self._bound = self.rate >= MACHINE_BUSY * self.cores
            self._mark = (now, busy or 0.0)
        return self._bound


def _machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (the first line of /proc/stat, less idle and
    iowait), or None when it cannot be read."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS  # user..steal, less idle and iowait
    except (OSError, ValueError, IndexError):
        return None


class Pool:
    def __init__(self, *, counters: Counters, health: Health, wake: Callable[[Any], None]) -> None:
        self.slots: list[Slot] = []
        self.counters = counters
        self.breaker = CrashBreaker(health)
        self.unkillable = Unkillable(health)
        self._wake = wake  # called on an executor's thread: must only schedule a loop pass
        self._warmed = False  # a child finished its warm-up (set from the executor's thread)
        self._checked_at = 0.0
        self.cpu = CpuGate()
        self.grow_declined = False  #: the last ``grow`` held a slot back for now (a one-shot run)

    # -- starting -------------------------------------------------------------------------------

    def add(self, index: int, cfg: DownloadConfig, generation: int, *, start: bool = True) -> None:
        slot = Slot(index)
        if start:
            self.start(slot, cfg, generation)
        else:
            slot.dormant = True
        self.slots.append(slot)

    def start_first(self, cfg: DownloadConfig, generation: int) -> None:
        """Start one child; the other slots stay dormant until ``grow`` wakes them, one per loop
        pass. A child's start blocks until the forkserver has loaded yt-dlp, and each costs a
        fork: the first job goes out as soon as one child is ready, not after the last one has
        started, and a one-shot run of three rows starts three children, not ``workers``."""
        for i in range(cfg.workers):
            self.add(i, cfg, generation, start=i == 0)
        self.cpu.started_at = time.monotonic()  # (the first start waited for the forkserver)

    def grow(self, cfg: DownloadConfig, generation: int, now: float, *, rows_waiting: int | None) -> None:
        """Wake one dormant slot once every child is up (none still starting: children that
        cannot start do not pile up). ``rows_waiting`` None: always (the daemon keeps every child
        ready for the next row). Else (a one-shot run, the rows still queued) only while rows
        wait, no child is idle, the children are not keeping every core busy already
        (``CpuGate``), and they will not have taken every row before a new one could help; and
        every slot the rows need at once while downloads say they will take a while."""
        self.grow_declined = False
        dormant = [s for s in self.slots if s.dormant and not s.retiring]
        if not dormant or rows_waiting == 0:
            return
        started = 0
        for s in self.slots:
            if s.dormant or s.retiring:
                continue
            if s.executor is None or not (s.ready or s.busy) or (rows_waiting is not None and s.ready):
                return  # starting or restarting; or idle, in a one-shot run
            started += 1
        wake = 1
        if rows_waiting is not None and self._downloads_take_long(now):
            wake = min(len(dormant), rows_waiting)  # bytes, not cores, limit them: every slot at once
        elif rows_waiting is not None:
            if self.cpu.bound(now, started) or self.cpu.drains_within(rows_waiting, TAIL_S, now):
                self.grow_declined = True  # for now: ask again soon (``GROW_RECHECK_S``), not a tick later
                return
            if started >= self.cpu.cores:
                self.cpu.grew()
        for slot in dormant[:wake]:
            slot.dormant = False
            self.start(slot, cfg, generation)

    def _downloads_take_long(self, now: float) -> bool:
        """Does a running download expect to take longer than ``SHORT_JOBS_S`` yet (yt-dlp's
        ETA)? Then it waits for bytes, and so will the next rows' likely: a one-shot run starts
        its other children now, all of them, instead of one per loop pass after FIRST_JOB_S (a
        ramp of 0.4 s that cost the 8-worker bandwidth benchmark 3 % of its window)."""
        for s in self.slots:
            if s.busy:
                eta = s.progress(now).eta_s
                if eta is not None and eta > SHORT_JOBS_S:
                    return True
        return False

    def start(self, slot: Slot, cfg: DownloadConfig, generation: int) -> None:
        slot.start(cfg, generation)
        assert slot.warm_future is not None
        slot.warm_future.add_done_callback(self._on_warm)

    def _on_warm(self, fut: Future[Any]) -> None:
        """Runs on the executor's thread once a child has warmed up (or died trying)."""
        if not fut.cancelled() and fut.exception() is None:
            self._warmed = True
        self._wake(fut)  # ready for work: dispatch at once

    def resize(self, want: int, cfg: DownloadConfig, generation: int) -> None:
        """Add dormant slots up to ``want`` (``grow`` starts them as work asks); shrink as slots
        go idle (they retire)."""
        active = [s for s in self.slots if not s.retiring]
        for slot in active[want:]:
            slot.retiring = True
        next_index = max((s.index for s in self.slots), default=-1) + 1
        for i in range(max(0, want - len(active))):
            self.add(next_index + i, cfg, generation, start=False)

    # -- a job's end ------------------------------------------------------------------------------

    def after_job(self, slot: Slot, cfg: DownloadConfig, generation: int) -> None:
        """Recycle a child between jobs when it has done enough or grown too big."""
        self.cpu.job_ended(time.monotonic())
        rss = slot.rss()
        if slot.jobs_done >= cfg.recycle_after_jobs or rss > cfg.recycle_rss:
            log.info("slot %d: recycling child %d after %d jobs (RSS %d MiB)", slot.index, slot.pid,
                     slot.jobs_done, rss >> 20)
            slot.stop_child()
            self.start(slot, cfg, generation)
            self.counters.recycled += 1

    def child_died(self, slot: Slot, pid: int) -> None:
        """The child of a finished job is gone: make sure nothing of its group writes on."""
        signal_group(pid, signal.SIGKILL)  # an orphaned ffmpeg must not write on into the .part
        slot.discard()  # rebuilt by maintain() unless stopping or retiring
        self.counters.worker_restarts += 1

    def give_up(self, slot: Slot) -> str:
        """The killed child outlives SIGKILL: drop it without waiting for a death that may never
        come, so the slot gets a new child (see stuck.py); returns the kill's reason."""
        reason = slot.kill_reason or "killed"
        self.unkillable.add(slot.pid, slot.index, reason)
        slot.discard()
        self.counters.worker_restarts += 1
        return f"{reason}; the child outlived SIGKILL"

    def lost_child(self, slot: Slot, reason: str | None, exc: BaseException | None, cfg: DownloadConfig) -> Outcome:
        """The outcome of a job whose child died: killed by us (stop, stall, timeout) or not."""
        if reason == "daemon stopping":
            return Outcome(False, error="daemon stopped", kind=None)  # handed back, not counted
        if reason is not None:
            kind = ErrorKind.TIMEOUT if "job_timeout" in reason else ErrorKind.STALLED
            if kind is ErrorKind.STALLED:
                self.counters.stalled_killed += 1
            return Outcome(False, error=f"killed: {reason}", kind=kind)
        self.breaker.death(cfg, time.monotonic())
        log.warning("slot %d: child died (%s); its job will be retried", slot.index, exc)
        return Outcome(False, error=f"worker child died: {exc}", kind=ErrorKind.CRASHED)

    # -- every pass -------------------------------------------------------------------------------

    def maintain(self, now: float, cfg: DownloadConfig, generation: int, *, stopping: bool) -> None:
        """Retire slots a reload removed, replace children that died idle or hung warming up, and
        start children where a slot has none (unless no child can start just now)."""
        for slot in [s for s in self.slots if s.retiring and not s.busy]:  # (dormant ones too)
            slot.stop_child()
            log.info("slot %d retired after reload", slot.index)
            self.slots.remove(slot)
        recycle_stale(self, cfg, generation, now)  # children of a forkserver from before a yt-dlp upgrade
        if self._warmed:
            self._warmed = False
            self.breaker.started()
        check = now - self._checked_at >= LIVENESS_EVERY_S
        if check:
            self._checked_at = now
            if self.unkillable.pids:
                self.unkillable.tick()
        warm_limit = max(WARM_HUNG_MIN_S, cfg.stall_timeout)
        for slot in self.slots:
            if slot.warm_hung(now, warm_limit):
                log.warning("slot %d: child %d has been warming up for %.0fs; killing it", slot.index, slot.pid,
                            now - (slot.warm_seen_at or now))
                self.child_died(slot, slot.pid)
                self.breaker.start_failed(cfg, f"warm-up hung for more than {warm_limit:g}s "
                                               "(a cookie file or proxy on a hung mount?)", now)
            warm = slot.warm_future
            failed = warm is not None and warm.done() and not warm.cancelled() and warm.exception() is not None
            if slot.executor is not None and not slot.busy and (failed or (check and slot.child_lost())):
                if failed:
                    self.breaker.start_failed(cfg, str(warm.exception() if warm else "") or "no reason given", now)
                else:
                    log.warning("slot %d: idle child %d died; restarting it", slot.index, slot.pid)
                    self.breaker.death(cfg, now)
                slot.discard()
                self.counters.worker_restarts += 1
            if (slot.executor is None and not slot.dormant and not stopping and not slot.retiring
                    and self.breaker.may_rebuild(now)):
                self.start(slot, cfg, generation)

    def stop_all(self) -> list[int]:
        """Ask every child to exit; returns their pids, for the caller to reap."""
        pids = [s.pid for s in self.slots if s.pid]
        for slot in self.slots:
            slot.stop_child()
        return pids
