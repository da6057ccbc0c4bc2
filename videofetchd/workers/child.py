"""Worker child: the code that runs inside each slot's single-process executor.

The child leads its own process group (so a kill reaches ffmpeg too), ignores SIGINT/SIGHUP (the
parent owns those), dies with its forkserver parent (PR_SET_PDEATHSIG), and reports progress by
writing a few doubles into shared memory that the parent reads on its own schedule. Progress is
written only from yt-dlp's hooks, i.e. from real bytes: a timer thread here would hide a hang.
It never touches the database, and imports yt-dlp only through ``download`` (preloaded into the
forkserver by ``preload``), so the parent that imports this module for its entry points stays small.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import select
import signal
import threading
import time
from collections.abc import MutableSequence
from typing import TYPE_CHECKING, Any

from ..config import DownloadConfig
from ..queue.jobs import PHASE_DOWNLOADING, PHASE_IDLE, ErrorKind, Job, Outcome
from .hostprobe import host_outcome, identity_outcome, os_errno

if TYPE_CHECKING:
    from .download import Downloader

# Layout of the per-slot shared array of doubles.
PID, BEAT, PHASE, DONE_BYTES, TOTAL_BYTES, SPEED, ETA, ROW_ID, JOBS = range(9)
SHARED_LEN = 9
#: bytes of the per-slot buffer of the current job's file names (NUL-separated UTF-8): the parent
#: reads them to clean up after a row that failed for good, even when it had to kill the child
FILES_LEN = 8192
_PR_SET_PDEATHSIG = 1

_shared: MutableSequence[float] | None = None
_files: Any = None
_downloaders: dict[str | None, Downloader] = {}  #: per egress identity, for the generation below
_generation = -1
#: built in the forkserver before any child forks (see prebuild): the config it was built for and
#: the warm YoutubeDL, which each child adopts for its first generation instead of building its own
_prebuilt: tuple[DownloadConfig, Downloader] | None = None


class _SharedReporter:
    """Writes progress into the shared array; a beat only when bytes or the phase change."""

    def __init__(self, shared: MutableSequence[float], files: Any) -> None:
        self.shared = shared
        self.files_buf = files

    def files(self, paths: list[str]) -> None:
        """Publish the job's file names; those that do not fit are left out (never cut in half)."""
        data = b""
        for p in paths:
            raw = p.encode("utf-8", "surrogateescape") + b"\0"
            if len(data) + len(raw) >= FILES_LEN:
                break
            data += raw
        self.files_buf.raw = data.ljust(FILES_LEN, b"\0")

    def phase(self, phase: int) -> None:
        self.shared[PHASE] = phase
        self.shared[BEAT] = time.monotonic()

    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None:
        s = self.shared
        if downloaded != s[DONE_BYTES] or s[PHASE] != PHASE_DOWNLOADING:
            s[BEAT] = time.monotonic()
        s[PHASE] = PHASE_DOWNLOADING
        s[DONE_BYTES], s[TOTAL_BYTES], s[SPEED], s[ETA] = downloaded, total, speed, eta


def _exit_with(supervisor_pid: int) -> None:
    """Exit as soon as the supervisor process is gone.

    A forkserver child's parent is the forkserver, and the child itself holds the forkserver's
    "alive" pipe and both ends of its own call queue: without this, an idle child of a daemon
    that was SIGKILLed would wait forever, and keep its forkserver alive too. This thread never
    reports progress; it only watches for the supervisor's death.
    """
    try:
        fd = os.pidfd_open(supervisor_pid)
    except (OSError, AttributeError):
        fd = -1
    if fd >= 0:
        select.select([fd], [], [])  # readable once the process has exited
    else:
        while os.getppid() != 1 and _alive(supervisor_pid):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def init_child(shared: MutableSequence[float], supervisor_pid: int, files: Any) -> None:
    """ProcessPoolExecutor initializer: runs once in each new child."""
    global _shared, _files
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
        os.environ.pop(name, None)  # only the main process may talk to systemd
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: orphans then finish their current job and exit on the closed pipe
    threading.Thread(target=_exit_with, args=(supervisor_pid,), name="supervisor-watch", daemon=True).start()
    _shared, _files = shared, files
    shared[PID] = os.getpid()
    shared[JOBS] = 0
    shared[PHASE] = PHASE_IDLE
    shared[BEAT] = time.monotonic()


def _downloader_for(cfg: DownloadConfig, generation: int, identity: str | None) -> Downloader:
    """The warm YoutubeDL of ``identity`` (each has its own address, proxy, cookies) for this
    generation; a job keeps the config it was dispatched with, so a reload never changes the
    identity of a running job."""
    global _generation
    assert _shared is not None, "init_child did not run"
    if generation != _generation:
        _downloaders.clear()
        _generation = generation
    found = _downloaders.get(identity)
    if found is None:
        reporter = _SharedReporter(_shared, _files)
        found = _downloaders[identity] = _adopt_prebuilt(cfg, identity, reporter) or _build(cfg, reporter, identity)
    return found


def _build(cfg: DownloadConfig, reporter: Any, identity: str | None) -> Downloader:
    from .download import Downloader  # preloaded in the forkserver; the parent never needs it
    return Downloader(cfg, reporter, identity)


def _first_identity(cfg: DownloadConfig) -> str | None:
    return cfg.identities[0].name if cfg.identities else None


def prebuild(cfg: DownloadConfig, extractor_key: str | None = None) -> None:
    """In the forkserver, before any child forks: build the first generation's YoutubeDL once (a
    new one costs ~140 ms of CPU, per child), so that every child inherits it by fork. Each child
    gets its own copy-on-write copy: nothing is shared between children at run time."""
    global _prebuilt
    downloader = _build(cfg, _NoReporter(), _first_identity(cfg))
    if extractor_key is not None:
        downloader.expect(cfg.url_template, extractor_key)
    from .warmup import warm_downloader
    warm_downloader(downloader)
    _prebuilt = (cfg, downloader)


def _adopt_prebuilt(cfg: DownloadConfig, identity: str | None, reporter: Any) -> Downloader | None:
    """The forkserver's YoutubeDL, when it was built for this very config (the worker count aside,
    which ``fetch --num-workers`` overrides) and identity; used once."""
    global _prebuilt
    if _prebuilt is None:
        return None
    built_for, downloader = _prebuilt
    _prebuilt = None
    if dataclasses.replace(built_for, workers=cfg.workers) != cfg or identity != _first_identity(cfg):
        return None
    downloader.reporter = reporter
    return downloader


class _NoReporter:
    """The prebuilt Downloader's reporter until a child adopts it (nothing runs before that)."""

    def files(self, paths: list[str]) -> None:
        pass

    def phase(self, phase: int) -> None:
        pass

    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None:
        pass


def warm(cfg: DownloadConfig, generation: int) -> dict[str, Any]:
    """Build the YoutubeDL of this generation (first identity; the others on first use) before the
    first job arrives; returns the pid and the yt-dlp version the child runs (for status)."""
    from .stack import loaded_version
    _downloader_for(cfg, generation, cfg.identities[0].name if cfg.identities else None)
    return {"pid": os.getpid(), "ytdlp": loaded_version()}


def run_job(job: Job, cfg: DownloadConfig, generation: int) -> Outcome:
    """Download one job; every yt-dlp failure becomes an Outcome, never an exception."""
    assert _shared is not None, "init_child did not run"
    s = _shared
    s[ROW_ID], s[DONE_BYTES], s[TOTAL_BYTES], s[SPEED], s[ETA] = job.row_id, 0, 0, 0, -1
    s[BEAT] = time.monotonic()
    try:
        os.makedirs(cfg.directory, exist_ok=True)
        outcome = _downloader_for(cfg, generation, job.identity).run(job)
    except Exception as exc:  # noqa: BLE001 - a bug or odd input must cost one job, not the child
        outcome = Outcome(False, error=f"{type(exc).__name__}: {exc}", kind=ErrorKind.TRANSIENT, errno=os_errno(exc))
    finally:
        s[ROW_ID] = 0
        s[JOBS] += 1
        s[PHASE] = PHASE_IDLE
    outcome = identity_outcome(outcome, job)  # the row, or the identity's vanished source address?
    if outcome.kind is ErrorKind.TRANSIENT:  # the row, or the disk? a full disk must not burn rows
        outcome = host_outcome(outcome, cfg.directory, cfg.min_free_space)
    return outcome
