"""A new yt-dlp on disk reaches new jobs without a restart and without dropping running ones.

``make upgrade-ytdlp`` (or the optional upgrade timer) installs a new yt-dlp, yt-dlp-ejs or deno
into the venv the daemon runs from. The forkserver preloaded the old yt-dlp, and every child it
forks inherits that, so: ``StackWatch`` notices the change (one ``stat`` of the directories that
hold the distributions' metadata every few seconds; the versions are read only once the
directory has stopped changing, so a half-finished pip run is never loaded), ``renew_forkserver``
starts a new forkserver, which imports the new yt-dlp, and lets the old one go, and
``recycle_stale`` (called from ``Pool.maintain``) replaces each child of an old forkserver as soon
as it is idle. A busy child finishes its job first. An old forkserver exits by itself once its
last child has (its children hold its "alive" pipe) and is reaped here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import TYPE_CHECKING, Any

import psutil

from .stack import DISTS, installed_versions

if TYPE_CHECKING:
    from ..config import DownloadConfig
    from .pool import Pool

log = logging.getLogger("videofetchd.supervisor")
CHECK_EVERY_S = 2.0  #: how often the metadata directories are stat'ed
SETTLE_S = 3.0  #: a change counts once the directories have not changed for this long
RECYCLE_EVERY_S = 0.2  #: how often idle children are asked for their parent while old servers run

_retired: list[int] = []  #: pids of forkservers let go, until they have exited and been reaped
_checked_at = 0.0


def _metadata_dirs() -> list[str]:
    """The directories holding the dist-info of DISTS (site-packages, usually one)."""
    dirs = set()
    for name in DISTS:
        try:
            dirs.add(os.path.abspath(str(importlib.metadata.distribution(name).locate_file(""))))
        except importlib.metadata.PackageNotFoundError:
            continue
    return sorted(dirs)


class StackWatch:
    """Notices that the installed yt-dlp stack differs from the one the forkserver loaded."""

    def __init__(self, *, every: float = CHECK_EVERY_S, settle: float = SETTLE_S) -> None:
        self.every, self.settle = every, settle
        self.loaded = installed_versions()  #: what the running forkserver imported (read at its start)
        self.dirs = _metadata_dirs()
        self._stamp = self._mtimes()
        self._changed_at: float | None = None
        self._next = 0.0

    def _mtimes(self) -> tuple[int, ...]:
        stamps = []
        for d in self.dirs:
            try:
                stamps.append(os.stat(d).st_mtime_ns)
            except OSError:
                stamps.append(0)
        return tuple(stamps)

    def force(self) -> None:
        """Look now (SIGHUP), still waiting for the directories to settle."""
        self._next = 0.0
        self._changed_at = self._changed_at if self._changed_at is not None else 0.0

    def poll(self, now: float) -> dict[str, str] | None:
        """The new versions once a change has settled, else None. Cheap: call it every loop turn."""
        if now < self._next:
            return None
        self._next = now + min(self.every, self.settle / 2)
        stamp = self._mtimes()
        if stamp != self._stamp:
            self._stamp, self._changed_at = stamp, now
            return None
        if self._changed_at is None or now - self._changed_at < self.settle:
            return None
        self._changed_at = None
        self._next = now + self.every
        found = installed_versions()
        if found == self.loaded or not found.get("yt-dlp"):
            return None  # touched but unchanged, or in the middle of a removal
        self.loaded = found
        return found


def renew_forkserver(cfg: DownloadConfig | None = None) -> int | None:
    """Start a new forkserver (it preloads what is installed now and, given the config, prebuilds
    the first YoutubeDL as ``forkstart.start_forkserver`` has it do) and let the old one go; returns
    the new one's pid. Blocking for the preload (~1 s): run it on a thread."""
    from multiprocessing import forkserver
    from .forkstart import PREBUILD_ENV, mp_context, prebuild_env
    ctx = mp_context()
    old = forkserver._forkserver
    new = forkserver.ForkServer()
    new.set_forkserver_preload(list(getattr(old, "_preload_modules", [])))
    value = prebuild_env(cfg)
    if value is not None:
        os.environ[PREBUILD_ENV] = value
    try:
        new.ensure_running()  # started before the swap: no child start ever meets a server not up
    finally:
        os.environ.pop(PREBUILD_ENV, None)  # for the forkserver only
    forkserver._forkserver = new
    for name in ("ensure_running", "get_inherited_fds", "connect_to_new_process", "set_forkserver_preload"):
        setattr(forkserver, name, getattr(new, name))
    old_pid = getattr(old, "_forkserver_pid", None)
    alive_fd = getattr(old, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        os.close(alive_fd)  # the old server exits once its last child has: they hold this pipe too
        old._forkserver_alive_fd = None  # type: ignore[attr-defined]
    # fork one throwaway process: returns once the new server has finished its preload, so that
    # no slot waits on the loop for it
    probe = ctx.Process(target=os.getpid, name="forkserver-probe")  # type: ignore[attr-defined]
    probe.start()
    probe.join(60)
    if old_pid:
        _retired.append(int(old_pid))
    return getattr(new, "_forkserver_pid", None)


def _parent(pid: int) -> int:
    try:
        return int(psutil.Process(pid).ppid())
    except (psutil.Error, OSError):
        return 0


def recycle_stale(pool: Pool, cfg: DownloadConfig, generation: int, now: float) -> None:
    """Replace every idle child forked by an old forkserver; reap old servers that have exited."""
    global _checked_at
    if not _retired or now - _checked_at < RECYCLE_EVERY_S:
        return
    _checked_at = now
    for slot in pool.slots:
        if slot.busy or slot.executor is None or not slot.pid or slot.retiring:
            continue
        if _parent(slot.pid) in _retired:
            log.info("slot %d: recycling child %d, which runs the yt-dlp of before the upgrade", slot.index, slot.pid)
            slot.stop_child()
            pool.start(slot, cfg, generation)
            pool.counters.recycled += 1
    for pid in list(_retired):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _retired.remove(pid)
            log.info("the forkserver of before the upgrade (pid %d) has exited", pid)


def child_version(result: Any) -> str | None:
    """The yt-dlp version a child reported when it warmed up (``child.warm``'s result)."""
    return result.get("ytdlp") if isinstance(result, dict) else None
