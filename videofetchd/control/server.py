"""The control socket server and the status snapshot it serves.

Served by the daemon's event loop, no thread. Anyone who can open the socket (its file mode
decides) may read ``status``; commands that change the daemon need SO_PEERCRED to show root, the
daemon's own user or a member of the socket's group. A malformed, oversized or slow request gets
an error reply and its connection closed; the server itself never stops over a client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from .protocol import MAX_LINE, PRIVILEGED, PROTOCOL_VERSION, ProtocolError, decode_request, encode, error_reply

if TYPE_CHECKING:
    from ..workers.supervisor import Supervisor

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
CLIENT_IDLE_TIMEOUT_S = 10.0
MAX_CLIENTS = 64


@dataclass
class ConfigInfo:
    path: str
    generation: int = 1
    loaded_at: str = ""
    last_reload_error: str | None = None
    restart_required: list[str] = field(default_factory=list)


@dataclass
class ScanStatus:
    """The daemon's library scans, for status: the one running and the last one finished.

    ``videos_found`` is written by the scan's thread and read by the loop: a plain int
    assignment, which needs no lock.
    """

    running: bool = False
    directories: list[str] = field(default_factory=list)
    started_at: float = 0.0  #: monotonic
    videos_found: int = 0
    last_result: str | None = None  #: summary of the last scan, or why it failed
    last_ok: bool = True
    last_finished: str = ""  #: local wall-clock time

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"running": self.running, "directories": list(self.directories),
                "running_s": round(now - self.started_at, 1) if self.running else None,
                "videos_found": self.videos_found if self.running else None,
                "last_result": self.last_result, "last_ok": self.last_ok, "last_finished": self.last_finished or None}


def snapshot(sup: Supervisor, info: ConfigInfo, scan: ScanStatus | None = None) -> dict[str, Any]:
    """The status reply: daemon state, per-worker progress, queue counts, counters."""
    now = time.monotonic()
    workers = []
    for slot in sorted(sup.slots, key=lambda s: s.index):
        w: dict[str, Any] = {"slot": slot.index, "pid": slot.pid or None,
                             "state": "busy" if slot.busy else ("idle" if slot.executor and slot.pid
                                                                else "restarting")}
        if slot.job is not None:
            p = slot.progress(now)
            w.update(video_id=slot.job.video_id, attempt=slot.job.attempt, identity=slot.job.identity, phase=p.phase,
                     downloaded_bytes=p.downloaded_bytes, total_bytes=p.total_bytes,
                     speed_bps=p.speed_bps, eta_s=p.eta_s,
                     last_progress_age_s=round(p.last_progress_age_s, 2),
                     running_s=round(now - slot.started_at, 1))
        else:  # the same keys for every worker, so scripts need no special case
            w.update(video_id=None, attempt=None, identity=None, phase="idle", downloaded_bytes=0, total_bytes=None,
                     speed_bps=None, eta_s=None, last_progress_age_s=None, running_s=None)
        if slot.retiring:
            w["retiring"] = True
        workers.append(w)
    notes = []
    for site, until in sorted(sup.site_pauses.items()):
        if until > now:
            notes.append(f"site {site} paused for {until - now:.0f}s (throttled)")
    found = f", {scan.videos_found} videos found so far" if scan is not None and scan.running else ""
    if sup.scanning:
        notes.append(f"library scan running{found}: new jobs wait for it")
    elif scan is not None and scan.running:
        notes.append(f"library scan running for {now - scan.started_at:.0f}s{found}: "
                     "longer than scan.claim_hold, so new jobs no longer wait for it")
    if sup.crash_pause_until > now:
        notes.append(f"claiming paused for {sup.crash_pause_until - now:.0f}s: worker children keep dying")
    db = sup.db_health
    return {
        "v": PROTOCOL_VERSION, "version": __version__, "pid": os.getpid(), "node": sup.node, "lease_owner": sup.owner,
        "state": sup.state, "uptime_s": round(now - sup.started_at, 1),
        "config": asdict(info),
        "database": {"ok": db.ok, "error": db.error, "pending_results": len(db.pending),
                     "backend": sup.store.backend},
        "workers": workers,
        "queue": dict(sup.queue_counts),
        "counters": asdict(sup.counters),
        "site_pauses": {s: round(u - now, 1) for s, u in sup.site_pauses.items() if u > now},
        "identities": sup.egress.status(sup.cfg.download, now),
        "scan": scan.to_dict(now) if scan is not None else None,
        "notes": notes,
    }


def peer_may_control(sock: socket.socket, socket_path: str, mode: int) -> bool:
    """Root, our own user, or a member (primary or supplementary) of the socket file's group.

    When the socket's mode grants "other" nothing, the file system has already admitted only
    the owner and the group, so nothing more is checked. That matters under PrivateUsers=, where
    SO_PEERCRED shows outside users as nobody and /proc hides their groups.
    """
    if not mode & 0o007:
        return True
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    if uid in (0, os.getuid()):
        return True
    try:
        group = os.stat(socket_path).st_gid
    except OSError:
        return False
    if gid == group:
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return str(group) in line.split()[1:]
    except OSError:
        pass
    return False


class ControlServer:
    def __init__(self, path: str, mode: int, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.mode = mode
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.clients = 0

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path) and stat.S_ISSOCK(os.lstat(self.path).st_mode):
            os.unlink(self.path)  # stale socket of a previous run
        old = os.umask(0o777 & ~self.mode)  # created with its final mode: no chmod race
        try:
            self.server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE + 2)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > MAX_CLIENTS:
                writer.write(encode(error_reply("too many clients")))
                return
            while True:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), CLIENT_IDLE_TIMEOUT_S)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        writer.write(encode(error_reply("incomplete request (no newline)")))
                    return
                except asyncio.LimitOverrunError:
                    writer.write(encode(error_reply(f"request longer than {MAX_LINE} bytes")))
                    return
                except asyncio.TimeoutError:
                    return
                reply, keep_open = await self._answer(line, writer)
                writer.write(encode(reply))
                await writer.drain()
                if not keep_open:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients -= 1
            writer.close()

    async def _answer(self, line: bytes, writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bool]:
        try:
            request = decode_request(line.strip())
        except ProtocolError as exc:
            return error_reply(str(exc)), False
        cmd = request["cmd"]
        if cmd in PRIVILEGED:
            sock = writer.get_extra_info("socket")
            if sock is None or not peer_may_control(sock, self.path, self.mode):
                return error_reply(f"permission denied: '{cmd}' needs root, the daemon's user "
                                   "or the control socket's group"), False
        try:
            reply = await self.handlers[cmd](request)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the server down
            log.exception("control command %s failed", cmd)
            return error_reply(f"{cmd} failed: {exc}"), False
        return {"v": PROTOCOL_VERSION, **reply}, True
