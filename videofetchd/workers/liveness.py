"""Is a worker child still receiving bytes? Asked of the kernel, not of yt-dlp.

yt-dlp's progress hook reports only after each read, and its reads grow to 4 MiB while a link is
fast: after a burst, a link that slows to 256 KiB/s goes 16 s without a report while bytes keep
arriving. An external downloader (curl, aria2c) or ffmpeg reports nothing until it ends. So the
supervisor also asks the kernel, which counts what really moves, for the child and every process
below it:

* the bytes each TCP socket has received (``tcpi_bytes_received``, from the sock_diag netlink
  interface that ``ss`` uses), for sockets whose inode is among the tree's open files. Reads from
  sockets do not show in ``/proc/<pid>/io`` (``recv`` bypasses its ``rchar``), so this is the
  measure of "bytes arrive";
* ``rchar`` + ``wchar`` of ``/proc/<pid>/io``: file reads and writes, e.g. ffmpeg remuxing, or an
  external downloader writing its file.

A stall is a tree in which none of these moves. Parent side only: it reads /proc and a netlink
socket, and signals nothing. Not Linux, or netlink refused: ``moved`` goes by what it can read,
and answers None when it can read nothing (the supervisor then goes by yt-dlp's hooks alone).
"""

from __future__ import annotations

import os
import socket
import struct

_MAX_TREE = 256  #: processes followed below one child (a runaway fork bomb must not cost a core)

# sock_diag (linux/sock_diag.h, linux/inet_diag.h, linux/tcp.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_INET_DIAG_INFO = 2
_NLMSGHDR = struct.Struct("=IHHII")
_REQ_V2 = struct.Struct("=BBBxI48x")  # family, protocol, ext, states, inet_diag_sockid (any)
_DIAG_MSG_INODE = 4 + 48 + 16  #: offset of idiag_inode in struct inet_diag_msg
_DIAG_MSG_LEN = 72
_TCPI_BYTES_RECEIVED = 128  #: offset of tcpi_bytes_received (u64, Linux >= 4.1) in struct tcp_info


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc/<pid>/task/*/children (one small read per thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _io_bytes(pid: int) -> int | None:
    """rchar + wchar of one process, or None when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            data = f.read()
    except OSError:
        return None
    total = 0
    for line in data.splitlines():
        if line.startswith((b"rchar:", b"wchar:")):
            total += int(line.split()[1])
    return total


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < _MAX_TREE:
        p = todo.pop()
        if os.path.isdir(f"/proc/{p}"):
            found.append(p)
            todo.extend(_children(p))
    return found


def tcp_bytes_received(inodes: set[int]) -> dict[int, int] | None:
    """Bytes received so far by each TCP socket (IPv4 and IPv6) whose inode is in ``inodes``;
    None when the kernel's socket diagnostics cannot be asked (not Linux, or AF_NETLINK refused)."""
    if not inodes:
        return {}
    found: dict[int, int] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(2.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                _dump(nl, family, inodes, found)
    except (OSError, AttributeError, struct.error):
        return None
    return found


def _dump(nl: socket.socket, family: int, inodes: set[int], found: dict[int, int]) -> None:
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0xFFFFFFFF)
    nl.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
            + body)
    while True:
        data = nl.recv(1 << 16)
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, off)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR or length < _NLMSGHDR.size:
                raise OSError("sock_diag refused the request")
            msg = off + _NLMSGHDR.size
            inode = struct.unpack_from("=I", data, msg + _DIAG_MSG_INODE)[0]
            if inode in inodes:
                received = _tcp_info_received(data, msg + _DIAG_MSG_LEN, off + length)
                if received is not None:
                    found[inode] = received
            off += (length + 3) & ~3


def _tcp_info_received(data: bytes, off: int, end: int) -> int | None:
    """tcpi_bytes_received from the INET_DIAG_INFO attribute among the rtattrs in data[off:end]."""
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return None
        if kind == _INET_DIAG_INFO and length - 4 >= _TCPI_BYTES_RECEIVED + 8:
            return int(struct.unpack_from("=Q", data, off + 4 + _TCPI_BYTES_RECEIVED)[0])
        off += (length + 3) & ~3
    return None


def sample(pid: int) -> dict[str, int]:
    """Every counter of the tree below ``pid``: ``io:<pid>`` (file bytes read + written) and
    ``tcp:<inode>`` (bytes received on a socket)."""
    counters: dict[str, int] = {}
    inodes: set[int] = set()
    for p in tree(pid):
        n = _io_bytes(p)
        if n is not None:
            counters[f"io:{p}"] = n
        inodes |= _socket_inodes(p)
    for inode, received in (tcp_bytes_received(inodes) or {}).items():
        counters[f"tcp:{inode}"] = received
    return counters


class IoMeter:
    """Remembers a process tree's counters between samples."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def moved(self, pid: int) -> bool | None:
        """Did the tree receive, read or write a byte since the last call? A process or socket
        that is new since then counts as movement (it was started to do something); the first
        call only takes the baseline (False). None when nothing of the tree can be read."""
        now = sample(pid)
        if not now:
            return None
        last, self._last = self._last, now
        return bool(last) and any(n != last.get(key) for key, n in now.items())
