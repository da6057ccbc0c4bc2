"""Worker slots: one single-process ``ProcessPoolExecutor`` per slot, parent side.

Killing a child of a shared ``ProcessPoolExecutor`` fails every in-flight future of that pool, so
each slot owns its own executor: a hung or dead child costs only its own job, and only its slot
is rebuilt. Children come from a forkserver that has ``yt_dlp`` preloaded, so a rebuild costs tens
of milliseconds, and they live for many jobs (recycled by job count or RSS, between jobs only).
"""

from __future__ import annotations

import logging
import gc
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil

from . import child
from .forkstart import TEMPDIR_PREFIX, mp_context, start_forkserver  # noqa: F401  (start_forkserver: re-exported)
from .liveness import IoMeter
from ..config import DownloadConfig
from ..queue.jobs import PHASE_NAMES, PHASE_POSTPROCESSING, Job

log = logging.getLogger(__name__)
IO_QUIET_S = 1.0  #: seconds without a hook report before the kernel's I/O counters are asked
IO_EVERY_S = 0.25  #: at most this often per slot
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Progress:
    phase: str
    downloaded_bytes: int
    total_bytes: int | None
    speed_bps: float | None
    eta_s: float | None
    last_progress_age_s: float
    postprocessing: bool


class Slot:
    """One worker child and the job it runs. Only the supervisor's loop calls these methods."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.shared: Any = mp_context().Array("d", child.SHARED_LEN, lock=False)
        self.files_buf: Any = mp_context().Array("c", child.FILES_LEN, lock=False)
        self.executor: ProcessPoolExecutor | None = None
        self.future: Future[Any] | None = None
        self.job: Job | None = None
        self.job_cfg: DownloadConfig | None = None
        self.started_at = 0.0
        self.kill_sent_at: float | None = None
        self.kill_reason: str | None = None
        self.sigkill_at: float | None = None
        self.warm_seen_at: float | None = None  # monotonic: when the warming child first showed its pid
        self.retiring = False  # shrink after a reload: remove once idle
        self.dormant = False  # no child yet: started when rows wait for one (Pool.grow)
        self.generation = -1
        self.warm_future: Future[Any] | None = None
        self.io = IoMeter()  # the kernel's view of the running job's bytes (see liveness)
        self.io_beat = 0.0  # monotonic: the last time those counters moved
        self._io_checked = 0.0
        self.bytes_seen = 0  # the child's downloaded-bytes figure when new_bytes() last read it

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, cfg: DownloadConfig, generation: int) -> None:
        """Create the child now and warm its YoutubeDL, so the first job starts at once."""
        self.shared[child.PID] = 0
        self.executor = ProcessPoolExecutor(max_workers=1, mp_context=mp_context(),
                                            initializer=child.init_child,
                                            initargs=(self.shared, os.getpid(), self.files_buf))
        self.generation = generation
        self.warm_future = self.executor.submit(child.warm, cfg, generation)
        self.kill_sent_at = self.kill_reason = self.sigkill_at = self.warm_seen_at = None

    def discard(self) -> None:
        """Drop the executor without waiting (its child is dead or idle)."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self.future = self.warm_future = None
        self.job = None
        self.shared[child.PID] = 0  # never signal a pid that may have been reused

    def stop_child(self) -> None:
        """Ask an idle child to exit (recycling, shrinking, daemon stop)."""
        pid = self.pid
        self.discard()
        if pid:
            signal_group(pid, signal.SIGTERM)

    @property
    def pid(self) -> int:
        return int(self.shared[child.PID])

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def state(self) -> str:
        """For status and metrics: busy, idle, dormant (no child until work needs one), or
        restarting (its child is starting, or being replaced)."""
        if self.busy:
            return "busy"
        if self.dormant:
            return "dormant"
        return "idle" if self.executor is not None and self.pid else "restarting"

    @property
    def ready(self) -> bool:
        """Idle with a warmed-up child: a job sent now starts at once (the stall clock is fair)."""
        return (self.executor is not None and self.job is None and not self.retiring
                and (self.warm_future is None
                     or (self.warm_future.done() and self.warm_future.exception() is None)))

    def child_lost(self) -> bool:
        """Did the idle child die (warm-up failed, or killed while idle)?"""
        if self.warm_future is not None and self.warm_future.done() and self.warm_future.exception():
            return True
        pid = self.pid
        if not pid:
            return False
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except (psutil.Error, OSError):
            return True

    @property
    def jobs_done(self) -> int:
        return int(self.shared[child.JOBS])

    def rss(self) -> int:
        """The child's resident set size, asked after every job (recycling): one small read of
        /proc, a tenth of what a psutil.Process costs."""
        if not self.pid:
            return 0
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0

    # -- jobs -----------------------------------------------------------------------------------

    def submit(self, job: Job, cfg: DownloadConfig, generation: int) -> Future[Any]:
        assert self.executor is not None and self.job is None
        now = time.monotonic()
        self.shared[child.BEAT] = now  # the stall clock starts at dispatch
        self.shared[child.DONE_BYTES] = 0
        self.shared[child.TOTAL_BYTES] = 0
        self.bytes_seen = 0
        self.files_buf.raw = bytes(child.FILES_LEN)
        self.job, self.job_cfg, self.started_at = job, cfg, now
        self.io, self.io_beat, self._io_checked = IoMeter(), now, 0.0
        self.future = self.executor.submit(child.run_job, job, cfg, generation)
        return self.future

    def files(self) -> tuple[str, ...]:
        """The file names the current (or just finished) job has written, as the child reported them."""
        raw: bytes = self.files_buf.raw
        used = raw.split(b"\0\0", 1)[0]  # NUL-terminated names, then zeros: stop at the first gap
        return tuple(p.decode("utf-8", "surrogateescape") for p in used.split(b"\0") if p)

    def take_result(self) -> tuple[Job, Future[Any]]:
        """Detach the finished job; the slot becomes idle."""
        assert self.job is not None and self.future is not None
        job, fut = self.job, self.future
        self.job = self.future = self.job_cfg = None
        return job, fut

    def progress(self, now: float | None = None) -> Progress:
        s = self.shared
        now = time.monotonic() if now is None else now
        phase = int(s[child.PHASE])
        total = int(s[child.TOTAL_BYTES])
        speed, eta = float(s[child.SPEED]), float(s[child.ETA])
        return Progress(phase=PHASE_NAMES.get(phase, "idle") if self.busy else "idle",
                        downloaded_bytes=int(s[child.DONE_BYTES]) if self.busy else 0,
                        total_bytes=total or None, speed_bps=speed or None,
                        eta_s=eta if eta >= 0 else None,
                        last_progress_age_s=max(0.0, now - max(float(s[child.BEAT]), self.io_beat)),
                        postprocessing=phase == PHASE_POSTPROCESSING)

    def watch_io(self, now: float) -> None:
        """While yt-dlp's hook is quiet, ask the kernel whether the job's processes still move
        bytes (a large read on a slowed link, an external downloader, ffmpeg); if so, that is
        progress too. Costs a few /proc reads per quiet busy slot and tick."""
        if (not self.busy or now - float(self.shared[child.BEAT]) < IO_QUIET_S
                or now - self._io_checked < IO_EVERY_S or not self.pid):
            return
        self._io_checked = now
        if self.io.moved(self.pid):
            self.io_beat = now

    def enforce_limits(self, now: float) -> None:
        """Kill a busy child whose job stalled (no progress for stall_timeout, postprocess_timeout
        while ffmpeg works) or outlived job_timeout; finish a kill under way after its grace."""
        d = self.job_cfg
        if self.job is None or d is None:
            return
        if self.kill_sent_at is not None:
            self.kill(self.kill_reason or "", grace=d.kill_grace, now=now)
            return
        self.watch_io(now)
        p = self.progress(now)
        limit, name = ((d.postprocess_timeout, "postprocess_timeout") if p.postprocessing
                       else (d.stall_timeout, "stall_timeout"))
        if p.last_progress_age_s > limit:
            what = "post-processing made no progress" if p.postprocessing else "no progress"
            self.kill(f"{what} for {p.last_progress_age_s:.1f}s ({name} {limit:g}s)", grace=d.kill_grace, now=now)
        elif now - self.started_at > d.job_timeout:
            self.kill(f"running longer than job_timeout {d.job_timeout:g}s", grace=d.kill_grace, now=now)

    def exit_cause(self) -> str | None:
        """How the child of a broken executor ended ("killed by SIGKILL (signal 9)", "exited with
        status 1"), for the row's error; None when it cannot be told. The executor's thread reaps
        the child (the forkserver sends its wait status) before it ends, so it is waited for a
        moment first: call this before ``discard``."""
        ex = self.executor
        if ex is None:
            return None
        thread = getattr(ex, "_executor_manager_thread", None)
        if thread is not None:
            thread.join(1.0)
        for proc in list((getattr(ex, "_processes", None) or {}).values()):
            code = proc.exitcode
            if code is None:
                continue
            if code < 0:
                try:
                    name = signal.Signals(-code).name
                except ValueError:
                    name = f"signal {-code}"
                return f"killed by {name} (signal {-code})"
            return f"exited with status {code}"
        return None

    def new_bytes(self) -> int:
        """Bytes downloaded since the last call. yt-dlp's figure restarts at zero for each file of a
        job (video, then audio), so a figure below the last one is a new file's."""
        done = int(self.shared[child.DONE_BYTES]) if self.busy else 0
        new = done - self.bytes_seen if done >= self.bytes_seen else done
        self.bytes_seen = done
        return new

    def kill(self, reason: str, *, grace: float, now: float) -> None:
        """SIGTERM the child's process group now, SIGKILL once ``grace`` has passed."""
        pid = self.pid
        if not pid:
            return
        if self.kill_sent_at is None:
            self.kill_sent_at, self.kill_reason = now, reason
            log.warning("slot %d: %s; sending SIGTERM to process group %d", self.index, reason, pid)
            signal_group(pid, signal.SIGTERM)
        elif self.sigkill_at is None and now - self.kill_sent_at >= grace:
            log.warning("slot %d: child %d ignored SIGTERM for %.1fs; sending SIGKILL", self.index, pid, grace)
            signal_group(pid, signal.SIGKILL)  # once: a SIGKILL stays pending until it takes
            self.sigkill_at = now

    def unkillable(self, now: float) -> bool:
        """Has the child outlived a SIGKILL by kill_grace? Only uninterruptible sleep does that (a
        hung mount or device, a frozen cgroup): the kernel delivers the signal when, if ever, the
        sleep ends."""
        d = self.job_cfg
        return (self.sigkill_at is not None and d is not None and now - self.sigkill_at >= d.kill_grace
                and self.future is not None and not self.future.done() and pid_alive(self.pid))

    def warm_hung(self, now: float, limit: float) -> bool:
        """Has the child been warming up for more than ``limit`` seconds since it started (its
        pid shows once the interpreter is up, so a slow forkserver does not count)?"""
        warm = self.warm_future
        if self.executor is None or warm is None or warm.done() or not self.pid:
            return False
        if self.warm_seen_at is None:
            self.warm_seen_at = now
        return now - self.warm_seen_at > limit


def reap_children(pids: list[int], grace: float) -> None:
    """Wait for children just asked to stop, SIGKILL what is left after ``grace``, and stop
    multiprocessing's helpers once all are gone. Blocking: run it on a thread."""
    wait_gone(pids, grace)
    survivors = [pid for pid in pids if pid_alive(pid)]
    for pid in survivors:
        signal_group(pid, signal.SIGKILL)
    wait_gone(survivors, 2.0)
    if not any(pid_alive(pid) for pid in pids):
        stop_helpers()


def stop_helpers() -> None:
    """Stop multiprocessing's forkserver and resource tracker once every slot is gone, so that a
    clean daemon exit leaves no process behind for systemd to SIGKILL."""
    from multiprocessing import forkserver, resource_tracker
    from multiprocessing.synchronize import SemLock
    # An executor's queues (and their semaphores) live as long as its management thread; a
    # tracker stopped before they are gone reports them "leaked", and their finalizers then fail
    # at exit with tracebacks. Executors of dead children (discard()) finish within moments: wait
    # for them, and leave the tracker to exit with us if some semaphore is still alive anyway.
    deadline = time.monotonic() + 2.0
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ExecutorManagerThread":
            thread.join(max(0.0, deadline - time.monotonic()))
    gc.collect()
    helpers = [getattr(forkserver, "_forkserver", None)]
    if not any(isinstance(o, SemLock) for o in gc.get_objects()):
        helpers.append(getattr(resource_tracker, "_resource_tracker", None))
    for helper in helpers:
        stop = getattr(helper, "_stop", None)  # private, but the only way short of exiting
        if stop is not None:
            try:
                stop()
            except (OSError, ChildProcessError, AttributeError):
                pass


def remove_stale_tempdirs() -> list[str]:
    """Remove our temporary directories whose process is gone (SIGKILL, the OOM killer); returns
    them. Only this user's, only those named with a pid that no longer runs."""
    root, removed = tempfile.gettempdir(), []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        pid = entry.name[len(TEMPDIR_PREFIX):].partition("-")[0]
        if not entry.name.startswith(TEMPDIR_PREFIX) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
        except OSError:
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie waiting to be reaped)?"""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until the given (just signalled) children have exited, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            psutil.Process(pid).wait(max(0.0, deadline - time.monotonic()))
        except (psutil.Error, OSError):
            pass


def signal_group(pid: int, sig: int) -> None:
    """Signal the child's process group (ffmpeg and other helpers included); the child leads it."""
    if pid <= 0:  # killpg(0) would signal our own group
        return
    try:
        os.killpg(pid, sig)
    except OSError:  # gone already (ESRCH), or not a group leader yet: signal the process alone
        try:
            os.kill(pid, sig)
        except OSError:
            pass
