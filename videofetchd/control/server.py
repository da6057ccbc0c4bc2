"""The control socket server and the status snapshot it serves.

Served by the daemon's event loop, no thread. Anyone who can open the socket (its file mode
decides) may read ``status``; commands that change the daemon need SO_PEERCRED to show root, the
daemon's own user or a member of the socket's group. A malformed, oversized or slow request gets
an error reply and its connection closed; the server itself never stops over a client. Idle
connections are dropped after a few seconds, and ``guard`` shares the server among users (limits
per uid, rate limits) and keeps a second daemon off a socket a live one answers on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..queue.store import redact
from .guard import Admission, Peer, peer_of, take_socket
from .display import STALE_PROGRESS_S
from .protocol import MAX_LINE, PRIVILEGED, PROTOCOL_VERSION, ProtocolError, decode_request, encode, error_reply

if TYPE_CHECKING:
    from ..workers.supervisor import Supervisor

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
CLIENT_IDLE_TIMEOUT_S = 5.0  #: a connection that sends no request for this long is dropped
LISTEN_BACKLOG = 1024  #: pending connections the kernel queues for us (a burst never gets EAGAIN)


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
    last_success_ts: float = 0.0  #: Unix time the last successful scan finished (0: none yet)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"running": self.running, "directories": list(self.directories),
                "running_s": round(now - self.started_at, 1) if self.running else None,
                "videos_found": self.videos_found if self.running else None,
                "last_result": self.last_result, "last_ok": self.last_ok, "last_finished": self.last_finished or None}


def _child_ytdlp(slot: Any) -> str | None:
    """The yt-dlp version the slot's child reported when it warmed up (``child.warm``)."""
    warm = slot.warm_future
    if warm is None or not warm.done() or warm.cancelled() or warm.exception() is not None:
        return None
    result = warm.result()
    return result.get("ytdlp") if isinstance(result, dict) else None


def snapshot(sup: Supervisor, info: ConfigInfo, scan: ScanStatus | None = None,
             stack: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status reply: daemon state, per-worker progress, queue counts, counters, and the yt-dlp
    stack (installed, as probed; and the yt-dlp version each child runs)."""
    now = time.monotonic()
    workers = []
    for slot in sorted(sup.slots, key=lambda s: s.index):
        w: dict[str, Any] = {"slot": slot.index, "pid": slot.pid or None,
                             "state": slot.state}
        if slot.job is not None:
            p = slot.progress(now)
            # no progress for a while: the child's last speed and ETA are stale; say how long it stalls
            stalled = not p.postprocessing and p.last_progress_age_s >= STALE_PROGRESS_S
            w.update(video_id=slot.job.video_id, attempt=slot.job.attempt, identity=slot.job.identity, phase=p.phase,
                     downloaded_bytes=p.downloaded_bytes, total_bytes=p.total_bytes,
                     speed_bps=None if stalled else p.speed_bps, eta_s=None if stalled else p.eta_s,
                     last_progress_age_s=round(p.last_progress_age_s, 2),
                     stalled_s=round(p.last_progress_age_s, 1) if stalled else None,
                     running_s=round(now - slot.started_at, 1))
        else:  # the same keys for every worker, so scripts need no special case
            w.update(video_id=None, attempt=None, identity=None, phase="idle", downloaded_bytes=0, total_bytes=None,
                     speed_bps=None, eta_s=None, last_progress_age_s=None, stalled_s=None, running_s=None)
        if slot.retiring:
            w["retiring"] = True
        w["ytdlp"] = _child_ytdlp(slot)
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
    if sup.breaker.pause_until > now:
        notes.append(f"claiming paused for {sup.breaker.pause_until - now:.0f}s: worker children keep dying")
    db = sup.db_health
    return {
        "v": PROTOCOL_VERSION, "version": __version__, "pid": os.getpid(), "node": sup.node, "lease_owner": sup.owner,
        "state": sup.state, "uptime_s": round(now - sup.started_at, 1),
        "config": asdict(info),
        "database": {"ok": db.ok, "error": db.error, "pending_results": len(db.pending),
                     "backend": sup.store.backend, "url": redact(sup.store.url)},
        "health": sup.health.to_dict(),
        "workers": workers,
        "queue": dict(sup.queue_counts),
        "counters": asdict(sup.counters),
        "site_pauses": {s: round(u - now, 1) for s, u in sup.site_pauses.items() if u > now},
        "identities": sup.egress.status(sup.cfg.download, now),
        "scan": scan.to_dict(now) if scan is not None else None,
        "notes": notes,
        "stack": _stack(stack, workers),
    }


def _stack(found: dict[str, Any] | None, workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    if found is None:
        return None
    runtime = found.get("js_runtime") or {}
    return {"ytdlp": found.get("ytdlp"), "ytdlp_age_days": found.get("ytdlp_age_days"), "ejs": found.get("ejs"),
            "ejs_expected": found.get("ejs_expected"), "js_runtime": runtime.get("name"),
            "js_runtime_version": runtime.get("version"), "ffmpeg": found.get("ffmpeg") or None,
            "ffprobe": found.get("ffprobe") or None, "error": found.get("error") or runtime.get("error"),
            "children_ytdlp": sorted({w["ytdlp"] for w in workers if w.get("ytdlp")})}


def peer_may_control(peer: Peer | None, socket_path: str, mode: int) -> bool:
    """Root, our own user, or a member (primary or supplementary) of the socket file's group,
    judged on ``peer``: the credentials as they were at connect(), read when it was accepted.

    When the socket's mode grants "other" nothing, the file system has already admitted only
    the owner and the group, so nothing more is checked. That matters under PrivateUsers=, where
    SO_PEERCRED shows outside users as nobody and their groups are unmapped.
    """
    if not mode & 0o007:
        return True
    if peer is None:
        return False
    if peer.uid in (0, os.getuid()):
        return True
    try:
        group = os.stat(socket_path).st_gid
    except OSError:
        return False
    return peer.gid == group or group in peer.groups


class ControlServer:
    def __init__(self, path: str, mode: int, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.mode = mode
        self.handlers = handlers
        self.server: asyncio.AbstractServer | None = None
        self.admission = Admission()
        self._lock: int | None = None  #: the fd of the flock on <socket>.lock
        self._inode: tuple[int, int] | None = None  # the socket file we created, to remove only ours

    def claim(self) -> None:
        """Make the path ours before anything else starts: AlreadyRunning when a live daemon holds
        it (its socket is left alone), OSError when its directory is unusable."""
        if self._lock is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._lock, stale = take_socket(self.path)
            if stale:
                log.info("removed the stale control socket %s of an earlier run", self.path)

    async def start(self) -> None:
        """Listen on the path (claimed first, if not yet)."""
        self.claim()
        old = os.umask(0o777 & ~self.mode)  # created with its final mode: no chmod race
        try:
            self.server = await asyncio.start_unix_server(self._client, self.path, limit=MAX_LINE + 2,
                                                          backlog=LISTEN_BACKLOG)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # never another daemon's socket
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._lock is not None:
            os.close(self._lock)  # the lock file stays: removing it would race the next daemon's lock
            self._lock = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = None
        try:
            sock = writer.get_extra_info("socket")
            peer = peer_of(sock) if sock is not None else None  # now, once: see guard.Peer
            conn = self.admission.admit(peer.uid if peer is not None else -1, writer.close)
            if conn is None:
                writer.write(encode(error_reply("too many clients of this user")))
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
                    return  # idle: a connection that asks nothing holds nothing
                conn.busy(True)
                delay = self.admission.wait(conn)
                if delay > 0:
                    await asyncio.sleep(delay)  # this user's rate: its requests queue, nobody else's
                reply, keep_open = await self._answer(line, peer)
                writer.write(encode(reply))
                await asyncio.wait_for(writer.drain(), CLIENT_IDLE_TIMEOUT_S)  # a client that never reads
                conn.busy(False)
                if not keep_open:
                    return
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        finally:
            if conn is not None:
                self.admission.release(conn)
            writer.close()

    async def _answer(self, line: bytes, peer: Peer | None) -> tuple[dict[str, Any], bool]:
        try:
            request = decode_request(line.strip())
        except ProtocolError as exc:
            return error_reply(str(exc)), False
        cmd = request["cmd"]
        if cmd in PRIVILEGED:
            if not peer_may_control(peer, self.path, self.mode):
                return error_reply(f"permission denied: '{cmd}' needs root, the daemon's user "
                                   "or the control socket's group"), False
        try:
            reply = await self.handlers[cmd](request)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not take the server down
            log.exception("control command %s failed", cmd)
            return error_reply(f"{cmd} failed: {exc}"), False
        return {"v": PROTOCOL_VERSION, **reply}, True
