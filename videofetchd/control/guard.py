"""Who may hold the control socket, and how much of it: one daemon per socket, limits per user.

Two guards around the control server. ``take_socket`` makes sure a socket a live daemon answers
on is never unlinked: an ``flock`` on ``<socket>.lock``, held for the daemon's life (the kernel
drops it when the process dies, SIGKILL included, so a stale socket file has no lock and is
replaced), plus a probe of the path for a program that holds none. The lock is a file next to
the socket, mode 0600, not a name in the abstract socket namespace: that namespace belongs to a
network namespace (a daemon in another one never saw the lock) and anyone on the host could bind
the name first and keep the daemon from starting. ``Admission`` shares the server among users by
the peer's uid (SO_PEERCRED): each user may hold a bounded number of connections (past it, a new
one pushes out that user's longest idle one, so idle connections can never lock a user out of its
own daemon), all other users together a bounded number, and each user's requests are rate
limited. Root and the daemon's own user have budgets of their own that nobody else can use up.
Standard library only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AlreadyRunning, ConfigError

MAX_PER_OWN_UID = 256  #: connections root, or the daemon's own user, may hold
MAX_PER_UID = 32  #: connections any other user may hold
MAX_OTHERS = 128  #: connections all users but root and the daemon's own may hold together
RATE_OWN = (200.0, 400.0)  #: requests per second and burst, per user, for root and the daemon's user
RATE_OTHER = (20.0, 40.0)  #: the same for every other user (a ``nudge`` flood costs little)
PROBE_TIMEOUT_S = 2.0


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  #: Linux >= 4.13; Python does not name it


def peer_creds(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as they were when it
    called connect() (the kernel keeps them from then on)."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    return pid, uid, gid


@dataclass(frozen=True)
class Peer:
    """Who connected, read once when the connection is accepted and used for every decision
    about it: the uid, the primary and supplementary groups as they were at connect() (never
    /proc/PID later, when the peer may have exited, its pid been reused, its groups changed, or
    its descriptor passed to another process)."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = peer_creds(sock)
    return Peer(pid, uid, gid, _peer_groups(sock, pid))


def _peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    size = 4 * 64
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 4 * 65536:
                size = 4 * 65536  # NGROUPS_MAX
                continue
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                return frozenset()
            break
    # a kernel before 4.13: /proc now, at accept, is the nearest we can get to connect()
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def probe(path: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """Who answers on ``path``: None when nobody listens (no file, a stale socket), else what
    a ping returned (``{"pid": ...}`` from a videofetchd; ``{}`` when something accepted the
    connection but gave no answer: a stopped daemon, or some other program)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNRESET):  # listening, backlog full: alive
                return {}
            return None
        try:
            s.sendall(b'{"cmd": "ping"}\n')
            data = b""
            while not data.endswith(b"\n") and len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            reply = json.loads(data) if data else {}
            return reply if isinstance(reply, dict) else {}
        except (OSError, ValueError):
            return {}


def who(reply: dict[str, Any]) -> str:
    pid = reply.get("pid")
    return f"videofetchd pid {pid}" if isinstance(pid, int) else "a process (not answering)"


def lock_path(path: str) -> str:
    return path + ".lock"


def take_socket(path: str) -> tuple[int, bool]:
    """Make ``path`` ours to bind: (the lock's file descriptor, held until closed; whether a
    stale socket was removed).

    AlreadyRunning when a live daemon holds the lock (its pid, written in the lock file, is
    named) or something answers on the path; ConfigError when the lock file cannot be opened
    or the path is something other than a socket.
    """
    lock = lock_path(path)
    try:  # O_NOFOLLOW: a symlink planted in a shared directory is refused, not followed
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"control.socket: cannot open the lock file {lock}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another videofetchd ({_holder(fd)}) already serves {path}: it holds {lock}; "
                                 "not starting a second daemon on it") from None
        os.fchmod(fd, 0o600)  # only we may open it: a shared lock by anyone else would block us
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return fd, False
        if not stat.S_ISSOCK(st.st_mode):
            raise ConfigError(f"control.socket: {path} exists and is not a socket")
        answer = probe(path)
        if answer is not None:
            raise AlreadyRunning(f"{who(answer)} already answers on {path}; not taking its socket over")
        os.unlink(path)  # stale: nobody holds the lock, nobody answers
        return fd, True
    except BaseException:
        os.close(fd)
        raise


def lock_holder(path: str) -> str | None:
    """Who holds the lock of the socket at ``path`` (``"pid N"``), or None when nobody does or the
    lock file is missing. PermissionError when it cannot be opened (another user's daemon). The
    doctor asks this: a daemon that holds its lock but does not answer (hung, or the socket file
    removed) still refuses a second daemon."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """The lock holder as its lock file names it (it writes its pid just after locking)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid not yet written"


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def wait(self, now: float) -> float:
        """Seconds this request must wait for its turn (0: at once); the turn is reserved."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(eq=False)
class Conn:
    uid: int
    own: bool  #: root or the daemon's own user
    close: Any  #: callable that drops the connection
    idle_since: float | None = field(default_factory=time.monotonic)  #: None while a request is answered

    def busy(self, busy: bool) -> None:
        self.idle_since = None if busy else time.monotonic()


class Admission:
    """Per-user connection budgets and request rates. Loop-only."""

    def __init__(self) -> None:
        self._by_uid: dict[int, list[Conn]] = {}
        self._buckets: dict[int, _Bucket] = {}
        self.others = 0  #: connections held by users other than root and the daemon's

    def admit(self, uid: int, close: Any) -> Conn | None:
        """A new connection's entry, or None when its user has no room (all its connections busy)."""
        own = uid in (0, os.getuid())
        mine = self._by_uid.setdefault(uid, [])
        if len(mine) >= (MAX_PER_OWN_UID if own else MAX_PER_UID) and not self._push_out(mine):
            return None
        if not own and self.others >= MAX_OTHERS and not self._push_out(mine):
            return None
        conn = Conn(uid, own, close)
        mine.append(conn)
        self.others += not own
        return conn

    def release(self, conn: Conn) -> None:
        mine = self._by_uid.get(conn.uid, [])
        if conn in mine:
            mine.remove(conn)
            self.others -= not conn.own
        if not mine:
            self._by_uid.pop(conn.uid, None)

    def _push_out(self, mine: list[Conn]) -> bool:
        """Drop the user's longest idle connection to make room for its new one."""
        idle = [c for c in mine if c.idle_since is not None]
        if not idle:
            return False
        old = min(idle, key=lambda c: c.idle_since or 0.0)
        self.release(old)
        old.close()
        return True

    def wait(self, conn: Conn) -> float:
        """Seconds before this user's next request may be answered."""
        now = time.monotonic()
        bucket = self._buckets.get(conn.uid)
        if bucket is None:
            rate, burst = RATE_OWN if conn.own else RATE_OTHER
            bucket = self._buckets[conn.uid] = _Bucket(rate, burst, burst, now)
        if len(self._buckets) > 4096:  # uids that came and went: forget the full ones
            for uid in [u for u, b in self._buckets.items() if u not in self._by_uid and b.tokens >= b.burst]:
                del self._buckets[uid]
        return bucket.wait(now)
