"""Run the library walk beside the database writer, in a child process (or, failing that, a thread).

``start_walk`` checks the roots and starts walking at once, before the caller has loaded the
database layer (``videofetchctl scan`` imports peewee and opens the database while the walker is
already listing directories). The caller iterates the ``Walk`` for ``(root, files)`` chunks and a
``(root, None)`` at the end of each root, and closes it. The walker is forked when the caller
has no other thread, because only then is ``fork`` safe (a copied lock held by another thread
would never be released in the child). The daemon and ``fetch`` run threads, so they spawn a
fresh interpreter for it instead. Either way the walk and the database writes run on two cores;
a helper thread, where the two take turns at the GIL, is the fallback when no process can be
started. The hand-over is bounded (a pipe, a queue), so memory stays flat.
This module must not import the database layer.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import marshal
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, BinaryIO, Literal, NoReturn

from ..config import ScanConfig
from ..errors import VideofetchdError
from .walker import Found, ScanRootError, Tally, Walker, show_path, utf8_ok

log = logging.getLogger("videofetchd.scan")

CHUNK_FILES = 1000  #: recognised files per hand-over from the walker
QUEUE_CHUNKS = 10  #: chunks the helper thread may be ahead of the writer
PIPE_BYTES = 1 << 20  #: the forked walker's pipe: about 7,000 files ahead (Linux allows 1 MiB unprivileged)

WalkEvent = tuple[str, list[Found] | None]  #: (root, files found) or (root, None) at the end of a root
WalkMode = Literal["auto", "process", "spawn", "thread"]


class ScanError(VideofetchdError):
    """The walk failed for a reason other than a bad root (its process died, or a bug)."""


class Walk(abc.ABC):
    """A walk under way over ``roots``; iterate it once, then ``close`` it (also on errors).

    ``tally`` holds the walker's counts and warnings once iteration has finished.
    """

    def __init__(self, roots: list[str], cfg: ScanConfig) -> None:
        self.roots, self.cfg, self.tally = roots, cfg, Tally()

    @abc.abstractmethod
    def __iter__(self) -> Iterator[WalkEvent]:
        """(root, files found) chunks as the walker hands them over, (root, None) at each root's end."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the walker if it still runs and release it; safe to call more than once."""

    def __enter__(self) -> Walk:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_walk(directories: Sequence[str | os.PathLike[str]], cfg: ScanConfig, mode: WalkMode = "auto") -> Walk:
    """Check the roots (ScanRootError names a missing one) and start walking them now."""
    roots = normalise_roots(directories)
    if not roots:
        raise ScanRootError("no directory to scan")
    if mode == "auto":
        mode = "process" if threading.active_count() == 1 else "spawn"
        try:
            return ForkedWalk(roots, cfg) if mode == "process" else SpawnedWalk(roots, cfg)
        except OSError as exc:  # EAGAIN, ENOMEM: no process to spare; a thread still does the job
            log.warning("cannot start a walker process (%s); walking in a thread", exc)
            return ThreadWalk(roots, cfg)
    if mode == "process":
        return ForkedWalk(roots, cfg)
    return SpawnedWalk(roots, cfg) if mode == "spawn" else ThreadWalk(roots, cfg)


def normalise_roots(directories: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Absolute, existing directories; a root inside another root is dropped (it would be walked twice)."""
    roots: list[str] = []
    for d in directories:
        path = os.path.abspath(os.fsdecode(d))
        if not utf8_ok(path):
            raise ScanRootError(f"scan root {show_path(path)} is not a valid UTF-8 path")
        if not os.path.exists(path):
            raise ScanRootError(f"scan root {path} does not exist (not mounted?); nothing was scanned")
        if not os.path.isdir(path):
            raise ScanRootError(f"scan root {path} is not a directory; nothing was scanned")
        roots.append(path)
    kept: list[str] = []
    for r in sorted(set(roots)):
        if not any(r == k or r.startswith(dir_prefix(k)) for k in kept):
            kept.append(r)
    return kept


def dir_prefix(root: str) -> str:
    return root if root.endswith("/") else root + "/"


class ThreadWalk(Walk):
    """The walker in a helper thread, handing chunks over a bounded queue. readdir and stat
    release the GIL, so the walk overlaps the database writes, if less than a process does."""

    _DONE = object()  # the thread's last item

    def __init__(self, roots: list[str], cfg: ScanConfig) -> None:
        super().__init__(roots, cfg)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._body, args=(Walker(cfg, self.tally),),
                                        name="videofetchd-scan-walk", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Hand ``item`` over; False once the walk is being closed (the walker must stop)."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _body(self, walker: Walker) -> None:
        try:
            for root in self.roots:
                for chunk in walker.walk(root, CHUNK_FILES):
                    if not self._put((root, chunk)):
                        return
                if not self._put((root, None)):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which re-raises
            self._put(exc)

    def __iter__(self) -> Iterator[WalkEvent]:
        while (item := self._queue.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()  # the walker stops at its next hand-over (after the directory it is in)
        self._thread.join()


class PipeWalk(Walk):
    """The walker in a child process that streams marshalled chunks through a pipe. The child's
    counts and warnings come back at the end; its own log lines go to the inherited stderr.
    Subclasses say how the child is started."""

    def __init__(self, roots: list[str], cfg: ScanConfig) -> None:
        super().__init__(roots, cfg)
        self._pid = 0
        self._pipe: BinaryIO | None = None
        self._finished = self._reaped = False
        read_fd, write_fd = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a deeper pipe keeps the walker going while a batch commits
                fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self._start(read_fd, write_fd)
            os.close(write_fd)
            write_fd = -1
            self._pipe = open(read_fd, "rb")
        except BaseException:  # including a Ctrl-C that was held back during fork()
            os.close(read_fd)  # the pipe object was not made: opening it is the try's last step
            if write_fd >= 0:
                os.close(write_fd)
            self.close()  # kills and reaps a child started before the failure
            raise

    @abc.abstractmethod
    def _start(self, read_fd: int, write_fd: int) -> None:
        """Start the child writing to ``write_fd``; set ``self._pid``."""

    def __iter__(self) -> Iterator[WalkEvent]:
        pipe = self._pipe
        assert pipe is not None, "iterated after close"
        while True:
            try:
                event = marshal.load(pipe)
            except (EOFError, ValueError):
                raise ScanError("the scan's walker process died") from None
            kind = event[0]
            if kind == "chunk":
                yield event[1], event[2]
            elif kind == "end":
                yield event[1], None
            elif kind == "tally":
                for key, n in event[1].items():
                    self.tally.add(key, n)
                self.tally.warnings += event[2]
                self._finished = True
                return
            elif kind == "root-error":
                raise ScanRootError(event[1])
            else:  # a bug in the walker: the same kind of error as the thread walk would raise
                raise RuntimeError(f"the scan's walker process failed:\n{event[1]}")

    def close(self) -> None:
        """Kill the child unless it finished, and reap it. A child stuck in a stat on a hung network
        file system dies only when that call returns, and this waits for it. Should this process
        die instead, the child stops at its next write to the pipe (EPIPE)."""
        if self._reaped:
            return
        try:
            if self._pipe is not None:
                self._pipe.close()
            if self._pid > 0:  # never 0: kill(0) would signal our whole process group
                if not self._finished:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):  # SIGCHLD ignored (inherited): already reaped
                    os.waitpid(self._pid, 0)
        finally:
            self._reaped = True


class ForkedWalk(PipeWalk):
    """A forked child: nothing to start or import, so it walks at once. Only for a process with
    no other thread."""

    def _start(self, read_fd: int, write_fd: int) -> None:
        walker = Walker(self.cfg, self.tally)
        # Ctrl-C between fork() and the child's own try would run the caller's code in the child
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._pid = os.fork()
            if self._pid == 0:  # pragma: no cover - the child; what it sends is checked by the parent's tests
                try:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                    os.close(read_fd)
                    _walker_child(walker, self.roots, write_fd)
                finally:
                    os._exit(1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class SpawnedWalk(PipeWalk):
    """A new interpreter running this module (``posix_spawn``: no Python code runs between the
    fork and the exec, so it is safe from a process with threads, such as the daemon). It costs
    an interpreter start, about 60 ms, before the walk begins."""

    def _start(self, read_fd: int, write_fd: int) -> None:
        spec = json.dumps({"roots": self.roots, "extensions": list(self.cfg.extensions),
                           "id_pattern": self.cfg.id_pattern, "log_level": logging.getLogger().getEffectiveLevel()})
        # the child must import this very package, wherever it was imported from
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
        self._pid = os.posix_spawn(sys.executable, [sys.executable, "-m", __name__, spec], env,
                                   file_actions=[(os.POSIX_SPAWN_DUP2, write_fd, 1)])


_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spawned_main(spec: str) -> NoReturn:  # pragma: no cover - runs in the spawned child
    from ..logs import setup_logging
    args = json.loads(spec)
    setup_logging(logging.getLevelName(args["log_level"]))
    cfg = ScanConfig(extensions=tuple(args["extensions"]), id_pattern=args["id_pattern"])
    _walker_child(Walker(cfg, Tally()), args["roots"], 1)


def _walker_child(walker: Walker, roots: list[str], fd: int) -> NoReturn:  # pragma: no cover - see above
    status = 1
    try:
        with open(fd, "wb") as pipe:
            try:
                for root in roots:
                    for chunk in walker.walk(root, CHUNK_FILES):
                        marshal.dump(("chunk", root, chunk), pipe)
                    marshal.dump(("end", root), pipe)
                marshal.dump(("tally", walker.tally.counts, walker.tally.warnings), pipe)
            except ScanRootError as exc:
                marshal.dump(("root-error", str(exc)), pipe)
            except Exception as exc:  # noqa: BLE001 - a bug: reported to the parent, which raises
                marshal.dump(("error", "".join(traceback.format_exception(exc)).rstrip()), pipe)
        status = 0
    finally:  # never return into the parent's code, nor run its atexit handlers or finalizers
        os._exit(status)


if __name__ == "__main__":  # pragma: no cover - SpawnedWalk's child
    _spawned_main(sys.argv[1])
