"""Probes of the host a download needs: a writable download directory and free space in it.

Plain blocking functions of their arguments, standard library only: worker children call them
after a failed job (was it the row, or the disk?), ``hostwatch`` calls them on a thread for the
supervisor, and the doctor (``videofetchd --check``) reports them. They really try: a directory is
writable when a file could be created in it, not when its mode bits say so (an immutable
directory, a read-only mount or a full inode table all pass an ``access()`` check).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import tempfile
from typing import NamedTuple

from ..config import Config, DownloadConfig
from ..errors import ConfigError
from ..queue.jobs import Job, Outcome
from .health import DISK_SPACE, DOWNLOAD_DIRECTORY

#: errors that mean the disk (or the user's quota) is full: a host condition, never the row's fault
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: below this much free space a failed job is put down to the disk even with min_free_space 0
LOW_SPACE_FLOOR = 1024 * 1024


class Fault(NamedTuple):
    condition: str  #: a health condition name
    detail: str


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # not reached


def probe_directory(path: str, *, create: bool = True) -> Fault | None:
    """Why no file can be written in ``path`` (created when missing), or None when one can.

    With ``create=False`` a missing directory is not created: the nearest existing parent is
    tried instead (could it be created?), so that a check changes nothing.
    """
    if not create and not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        fault = probe_directory(parent, create=False)
        if fault is not None and fault.condition == DOWNLOAD_DIRECTORY:
            return Fault(DOWNLOAD_DIRECTORY, f"{path} does not exist and cannot be created: {fault.detail}")
        return fault
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        return Fault(DOWNLOAD_DIRECTORY, f"{path} exists but is not a directory")
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            return Fault(DISK_SPACE, f"cannot create {path}: {exc.strerror}")
        return Fault(DOWNLOAD_DIRECTORY, f"{path} does not exist and cannot be created: {exc.strerror}")
    if not os.path.isdir(path):
        return Fault(DOWNLOAD_DIRECTORY, f"{path} exists but is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".videofetchd-probe-", dir=path)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            return Fault(DISK_SPACE, f"cannot create a file in {path}: {exc.strerror}")
        return Fault(DOWNLOAD_DIRECTORY, f"{path} is not writable: {exc.strerror}")
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass  # created but not removable (sticky directory of another owner): writable is what counts
    return None


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path`` (or of its nearest
    existing parent, when ``path`` does not exist yet); None when nothing can be asked."""
    probe = os.path.abspath(path)
    while True:
        try:
            st = os.statvfs(probe)
            return st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(probe)
            if parent == probe:
                return None
            probe = parent
        except OSError:
            return None


def probe_space(path: str, min_free: int) -> tuple[int | None, Fault | None]:
    """(free bytes, a DISK_SPACE fault when they are below ``min_free``)."""
    free = free_bytes(path)
    if free is not None and free < min_free:
        return free, Fault(DISK_SPACE, f"{human_size(free)} free in {path}, below download.min_free_space "
                                       f"{human_size(min_free)}")
    return free, None


def os_errno(exc: BaseException | None) -> int | None:
    """The errno of the first OSError behind ``exc``: the exception itself, then its
    ``__cause__``/``__context__`` and yt-dlp's ``exc_info`` (a DownloadError carries the error it
    reported in ``exc_info``, its text often without the errno: "Cannot write video description
    file"). The text is never read: strerror changes with the locale, and an error text can
    quote a site's words, "[Errno 28]" included."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int):
            return e.errno
        info = getattr(e, "exc_info", None)
        if isinstance(info, tuple) and len(info) >= 2 and isinstance(info[1], BaseException):
            todo.append(info[1])
        reason = getattr(e, "reason", None)  # urllib's URLError wraps the OSError it met
        if isinstance(reason, BaseException):
            todo.append(reason)
        todo += [e.__cause__, e.__context__]
    return None


def host_outcome(outcome: Outcome, directory: str, min_free: int) -> Outcome:
    """A transiently failed job's outcome, turned into a host condition when the disk or the
    download directory is to blame (the row is then handed back without charging an attempt)."""
    error = outcome.error or ""
    fault = None
    if outcome.errno in DISK_FULL_ERRNOS:
        free = free_bytes(directory)
        where = f" ({human_size(free)} free in {directory})" if free is not None else ""
        fault = Fault(DISK_SPACE, f"{error}{where}")
    else:
        fault = probe_directory(directory)
        if fault is None:
            free, low = probe_space(directory, max(min_free, LOW_SPACE_FLOOR))
            fault = low
    if fault is None:
        return outcome
    return dataclasses.replace(outcome, error=fault.detail, kind=None, condition=fault.condition)


def bind_error(address: str) -> str | None:
    """Why no socket can be bound to ``address`` (port 0) on this host, or None when one can:
    yt-dlp binds every connection of an identity to its ``source_address``, so an address this
    host does not have fails every one of them (EADDRNOTAVAIL)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def source_problems(d: DownloadConfig) -> list[str]:
    """One line per identity whose ``source_address`` cannot be bound here, naming its key."""
    problems = []
    for i, ident in enumerate(d.identities):
        why = bind_error(ident.source_address) if ident.source_address else None
        if why is not None:
            problems.append(f"download.identities[{i}].source_address: {ident.source_address} is not an "
                            f"address of this host (cannot bind to it: {why}); identity {ident.name} "
                            "could connect nowhere")
    return problems


def check_sources(cfg: Config) -> None:
    """ConfigError for the first identity whose ``source_address`` this host cannot bind: at
    start (exit 78) and on reload (the old config stays), not on every job."""
    problems = source_problems(cfg.download)
    if problems:
        raise ConfigError(f"{cfg.path or 'config'}: {problems[0]}")


def identity_outcome(outcome: Outcome, job: Job) -> Outcome:
    """A failed job whose identity's ``source_address`` went away (EADDRNOTAVAIL): the identity's
    fault, not the row's. The row is handed back uncharged and the supervisor pauses the
    identity (``Egress.fault``) until its address can be bound again."""
    if outcome.ok or job.identity is None or outcome.errno != errno.EADDRNOTAVAIL:
        return outcome
    return dataclasses.replace(outcome, kind=None, error=f"identity {job.identity}: its source_address cannot "
                               f"be bound on this host ({outcome.error})")
