"""A real, local HTTP media server for tests, benchmarks and ``make demo``.

videofetchd's tests must never touch the internet, so they download from this server instead:
it serves deterministic pseudo-random "videos" at ``/v/<id>.mp4`` (``Content-Type: video/mp4``,
``Content-Length``, ``Accept-Ranges: bytes``, ``Range`` -> 206/416, ``HEAD``) and can inject the
faults a downloader has to survive: HTTP error statuses, connections dropped mid-body, stalled
connections and per-connection throttling.  yt-dlp's generic extractor accepts these URLs as
direct video links.

Behaviour is chosen per video ID, either with :meth:`MediaServer.configure` or, with nothing
configured, by the ID's prefix (handy for daemon subprocesses and benchmarks):

============  ======================================================================
``e404-*``    always 404 (likewise ``e403-*``, ``e429-*``, ``e500-*``)
``drop-*``    the first body request sends half of the file, then the connection is closed
``stall-*``   the first body request sends half of the file, then hangs (connection open)
              until :meth:`MediaServer.release_stalls` or :meth:`MediaServer.stop`
anything      served normally, ``default_size`` bytes
============  ======================================================================

yt-dlp note: the generic extractor first makes a *probe* GET that reads only the response headers
and hangs up, then a second GET that downloads.  So that a ``drop-*``/``stall-*`` fault reaches the
download rather than being wasted on the probe, a drop or stall is only delivered (and only counts
against ``drop_times``/``stall_times``) when the client is still connected ``fault_grace`` seconds
after the body reached the fault offset.  Clients that read the body (urllib, yt-dlp's downloader)
always get it; it just arrives ``fault_grace`` seconds late.

The module is stdlib-only and importable as the top-level module ``mediaserver`` (tests and
bench/ put ``tests/`` on ``sys.path``).  As a script it prints the URL template and serves until
SIGINT/SIGTERM::

    python tests/mediaserver.py [--host 127.0.0.1] [--port N] [--rate 2MiB] [--size 50KiB]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import http.server
import random
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import types
import urllib.parse
from typing import Any

__all__ = ["MediaServer", "RequestRecord", "parse_size"]

PREFIX_STATUSES: dict[str, int] = {"e404-": 404, "e403-": 403, "e429-": 429, "e500-": 500}
_PATH_RE = re.compile(r"^/v/([^/]+)\.mp4$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CACHE_LIMIT = 256 * 1024 * 1024  # bytes of generated content kept in memory (LRU)
_UNTHROTTLED_CHUNK = 256 * 1024


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it.

    ``time`` is ``time.monotonic()`` when the request line was parsed.  ``video_id`` is None for
    paths that are not ``/v/<id>.mp4``.  ``range_start`` is the first byte requested (None without a
    usable Range header).  ``bytes_sent`` counts body bytes only.  ``outcome`` is one of
    ``in-progress`` (still being served; ``bytes_sent`` is then 0), ``complete``, ``dropped``,
    ``stalled`` (the response hung, whether it then ended by release_stalls(), stop() or the client
    leaving), ``client-gone`` (the client hung up before the body was complete) or ``aborted``
    (stop() ended it).  ``status`` is 0 until the status line is sent.  A record becomes final an
    instant *after* the client has seen the end of the response, so tests wait for it.
    """

    time: float
    method: str
    video_id: str | None
    range_start: int | None
    status: int
    bytes_sent: int
    outcome: str = "in-progress"


@dataclasses.dataclass
class _Behaviour:
    """The effective configuration of one video ID plus its remaining fault budgets."""

    size: int
    fail_status: int | None = None
    fail_left: int | None = None  # None: fail forever
    drop_after: int | None = None
    drop_left: int = 0
    stall_after: int | None = None
    stall_left: int = 0
    rate_bps: int | None = None
    burst_bytes: int = 0  # sent at full speed at the start of each body response, before rate_bps applies
    reason: str | None = None  # the reason phrase of fail_status answers, sent as given (even a NUL byte)


class _Abort(Exception):
    """Stop serving the current response (client gone, dropped on purpose, or server stopping)."""

    def __init__(self, outcome: str, sent: int) -> None:
        super().__init__(outcome, sent)
        self.outcome = outcome
        self.sent = sent


def parse_size(text: str) -> int:
    """Parse ``"50KiB"``, ``"2MiB"``, ``"1.5M"``, ``"8000"``, ``"1MB"`` into a number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)([bB]?)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    number, unit, binary, _ = m.groups()
    if not unit:
        return int(float(number))
    base = 1000 if (m.group(4) and not binary) else 1024  # "KB"/"MB" are decimal, K/KiB binary
    return int(float(number) * base ** ("kmg".index(unit.lower()) + 1))


def _peer_closed(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the peer to hang up; True if it did."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        events = poller.poll(max(0, int(timeout * 1000)))
    except (OSError, ValueError):
        return True
    if not events:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class _HTTPServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its handler threads and sockets so stop() can end them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True
    media: MediaServer

    def __init__(self, address: tuple[str, int], media: MediaServer) -> None:
        self.media = media
        self.conn_lock = threading.Lock()
        self.conns: dict[threading.Thread, socket.socket] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a possibly slow reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._serve_one, args=(request, client_address),
                                  name="mediaserver-conn", daemon=True)
        with self.conn_lock:
            self.conns[thread] = request
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.conns.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # client went away; normal for fault injection
            return
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``/v/<id>.mp4``; every decision is delegated to the owning MediaServer."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "videofetchd-mediaserver/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self.server.media._handle(self, head=False)

    def do_HEAD(self) -> None:
        self.server.media._handle(self, head=True)


class MediaServer:
    """A threaded HTTP server serving deterministic fake videos with injectable faults.

    Use as a context manager (``with MediaServer() as srv:``) or call start()/stop().
    ``rate_bps`` throttles every connection unless a video ID has its own rate.
    ``fault_grace`` is how long a drop/stall waits for a client that hangs up (see module doc).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, default_size: int = 50 * 1024,
                 rate_bps: int | None = None, fault_grace: float = 0.2) -> None:
        self.host = host
        self.port = port
        self.default_size = default_size
        self.rate_bps = rate_bps
        self.fault_grace = fault_grace
        self._lock = threading.Lock()
        self._behaviours: dict[str, _Behaviour] = {}
        self._records: list[RequestRecord] = []
        self._body_requests: collections.Counter[str] = collections.Counter()
        self._bytes_sent_total = 0
        self._stalled = 0
        self._content: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._content_bytes = 0
        self._sha256: dict[tuple[str, int], str] = {}
        self._stopping = threading.Event()
        self._release = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> MediaServer:
        """Bind and serve in a background thread; returns self."""
        if self._httpd is not None:
            raise RuntimeError("MediaServer already started")
        self._stopping.clear()
        self._release = threading.Event()
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mediaserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every connection (stalled and throttled ones too) and close sockets."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        with self._lock:
            self._release.set()
        httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        with httpd.conn_lock:
            conns = list(httpd.conns.items())
        for _, sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for thread, _ in conns:
            thread.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()

    def __enter__(self) -> MediaServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (valid once started)."""
        if self._httpd is None:
            raise RuntimeError("MediaServer not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url_template(self) -> str:
        """``base_url + "/v/{id}.mp4"``, for ``url_template.format(id=...)``."""
        return self.base_url + "/v/{id}.mp4"

    def url(self, video_id: str) -> str:
        """The URL of one video (the ID is percent-encoded)."""
        return f"{self.base_url}/v/{urllib.parse.quote(video_id, safe='')}.mp4"

    # -- configuration -----------------------------------------------------------------------

    def _default_behaviour(self, video_id: str, size: int | None = None) -> _Behaviour:
        b = _Behaviour(size=self.default_size if size is None else size)
        for prefix, status in PREFIX_STATUSES.items():
            if video_id.startswith(prefix):
                b.fail_status = status
        if video_id.startswith("drop-"):
            b.drop_after, b.drop_left = b.size // 2, 1
        if video_id.startswith("stall-"):
            b.stall_after, b.stall_left = b.size // 2, 1
        return b

    def configure(self, video_id: str, *, size: int | None = None, fail_status: int | None = None,
                  fail_times: int | None = None, drop_after: int | None = None, drop_times: int = 1,
                  stall_after: int | None = None, stall_times: int = 1, rate_bps: int | None = None,
                  burst_bytes: int = 0, reason: str | None = None) -> None:
        """Set the behaviour of one ID; arguments left as None keep the ID-prefix defaults.

        ``fail_status``: answer GET/HEAD with this status for the first ``fail_times`` GETs
        (``fail_times=None``: always).  ``drop_after``: send this many body bytes of the response,
        then close the connection, for the first ``drop_times`` GETs.  ``stall_after``: send this
        many body bytes, then hang until release_stalls()/stop(), for the first ``stall_times`` GETs.
        ``rate_bps`` throttles each connection for this ID, after ``burst_bytes`` sent at full speed
        at the start of every body response (a server that bursts then trickles).  ``reason`` is
        the status line's reason phrase for ``fail_status`` answers, sent raw.  Calling configure()
        again resets the fault budgets of that ID (not its request counters).
        """
        b = self._default_behaviour(video_id, size)
        if fail_status is not None:
            b.fail_status = fail_status
        if b.fail_status is not None:
            b.fail_left = fail_times
        if drop_after is not None:
            b.drop_after = drop_after
        if b.drop_after is not None:
            b.drop_left = drop_times
        if stall_after is not None:
            b.stall_after = stall_after
        if b.stall_after is not None:
            b.stall_left = stall_times
        if rate_bps is not None:
            b.rate_bps = rate_bps
        b.burst_bytes, b.reason = burst_bytes, reason
        with self._lock:
            self._behaviours[video_id] = b

    def _behaviour(self, video_id: str) -> _Behaviour:
        """The live behaviour record of an ID (call with self._lock held)."""
        b = self._behaviours.get(video_id)
        if b is None:
            b = self._behaviours[video_id] = self._default_behaviour(video_id)
        return b

    def content(self, video_id: str) -> bytes:
        """The deterministic bytes served for an ID (same in every process)."""
        with self._lock:
            size = self._behaviour(video_id).size
        return self._content_of(video_id, size)

    def _content_of(self, video_id: str, size: int) -> bytes:
        key = (video_id, size)
        with self._lock:
            data = self._content.get(key)
            if data is not None:
                self._content.move_to_end(key)
                return data
        data = random.Random(video_id).randbytes(size)
        with self._lock:
            if key not in self._content:
                self._content[key] = data
                self._content_bytes += size
                while self._content_bytes > _CACHE_LIMIT and len(self._content) > 1:
                    _, old = self._content.popitem(last=False)
                    self._content_bytes -= len(old)
        return data

    def sha256(self, video_id: str) -> str:
        """Hex SHA-256 of content(video_id)."""
        with self._lock:
            key = (video_id, self._behaviour(video_id).size)
            digest = self._sha256.get(key)
        if digest is None:
            digest = hashlib.sha256(self._content_of(*key)).hexdigest()
            with self._lock:
                self._sha256[key] = digest
        return digest

    # -- observation -------------------------------------------------------------------------

    def body_requests(self, video_id: str) -> int:
        """Number of GET requests received for an ID, whatever their status."""
        with self._lock:
            return self._body_requests[video_id]

    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request so far, in arrival order."""
        with self._lock:
            return list(self._records)

    @property
    def bytes_sent_total(self) -> int:
        """Body bytes sent so far over all requests (updated while sending)."""
        with self._lock:
            return self._bytes_sent_total

    @property
    def stalled_count(self) -> int:
        """Responses hanging in a stall right now."""
        with self._lock:
            return self._stalled

    def release_stalls(self) -> None:
        """Let every response currently stalled carry on sending the rest of its body."""
        with self._lock:
            self._release.set()
            self._release = threading.Event()

    # -- serving -----------------------------------------------------------------------------

    def _handle(self, h: _Handler, *, head: bool) -> None:
        h.close_connection = True
        path = urllib.parse.urlsplit(h.path).path
        m = _PATH_RE.match(path)
        video_id = urllib.parse.unquote(m.group(1)) if m else None
        size, rate, fail, reason = 0, None, None, None
        with self._lock:
            index = len(self._records)
            self._records.append(RequestRecord(time.monotonic(), h.command, video_id, None, 0, 0))
            if video_id is not None:
                if not head:
                    self._body_requests[video_id] += 1
                b = self._behaviour(video_id)
                size, rate = b.size, (b.rate_bps if b.rate_bps is not None else self.rate_bps)
                fail = b.fail_status if b.fail_left is None or b.fail_left > 0 else None
                reason = b.reason
                if fail is not None and b.fail_left is not None and not head:
                    b.fail_left -= 1
        status, range_start, sent, outcome = 404, None, 0, "complete"
        try:
            if video_id is None or fail is not None:
                status = fail if fail is not None else 404
                self._update_record(index, status=status)
                self._send_error(h, status, head, reason=reason)
                return
            status, start, end = self._parse_range(h.headers.get("Range"), size)
            if status == 416:
                self._update_record(index, status=416)
                self._send_error(h, 416, head, {"Content-Range": f"bytes */{size}"})
                return
            range_start = start if status == 206 else None
            h.send_response(status)
            h.send_header("Content-Type", "video/mp4")
            h.send_header("Content-Length", str(end - start))
            h.send_header("Accept-Ranges", "bytes")
            if status == 206:
                h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            h.send_header("Connection", "close")
            self._update_record(index, range_start=range_start, status=status)
            h.end_headers()
            if head:
                return
            body = memoryview(self._content_of(video_id, size))[start:end]
            try:
                sent, outcome = self._send_body(h, video_id, body, rate)
            except _Abort as abort:
                sent, outcome = abort.sent, abort.outcome
        except OSError:
            outcome = "client-gone"
        finally:
            self._update_record(index, range_start=range_start, status=status, bytes_sent=sent,
                                outcome=outcome)

    def _update_record(self, index: int, **changes: Any) -> None:
        with self._lock:
            self._records[index] = dataclasses.replace(self._records[index], **changes)

    @staticmethod
    def _parse_range(header: str | None, size: int) -> tuple[int, int, int]:
        """(status, start, end-exclusive) for a Range header; unusable headers are ignored (200)."""
        m = _RANGE_RE.match(header.strip()) if header else None
        if not m or m.groups() == ("", ""):
            return 200, 0, size
        first, last = m.groups()
        if not first:  # suffix range: the last N bytes
            n = int(last)
            return (206, max(0, size - n), size) if n > 0 and size > 0 else (416, 0, 0)
        start = int(first)
        end = size if not last else min(int(last) + 1, size)
        if last and int(last) < start:
            return 200, 0, size  # syntactically invalid: ignore the header (RFC 9110 14.1.1)
        if start >= size:
            return 416, 0, 0
        return 206, start, end

    def _send_error(self, h: _Handler, status: int, head: bool,
                    headers: dict[str, str] | None = None, reason: str | None = None) -> None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = f"{status} {phrase}\n".encode()
        h.send_response(status, reason)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        if status == 429:
            h.send_header("Retry-After", "1")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Connection", "close")
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _send_body(self, h: _Handler, video_id: str, body: memoryview, rate: int | None) -> tuple[int, str]:
        """Send ``body`` honouring rate, drop and stall; (bytes sent, outcome) or raises _Abort."""
        with self._lock:
            b = self._behaviour(video_id)
            drop_at = b.drop_after if b.drop_left > 0 else None
            stall_at = b.stall_after if b.stall_left > 0 else None
            burst = b.burst_bytes
        state = {"sent": 0, "stalled": 0, "burst": burst}
        pos = 0
        faults = [(at, kind) for kind, at in (("drop", drop_at), ("stall", stall_at))
                  if at is not None and at < len(body)]
        try:
            for at, kind in sorted(faults):
                at = max(at, pos)
                self._write(h, body[pos:at], rate, state)
                pos = at
                if not self._claim_fault(h, video_id, kind, state):
                    continue
                if kind == "drop":
                    try:
                        h.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    raise _Abort("dropped", state["sent"])
                self._stall(h, state)
            self._write(h, body[pos:], rate, state)
        except _Abort as abort:
            if state["stalled"] and abort.outcome != "dropped":
                raise _Abort("stalled", abort.sent) from None
            raise
        return state["sent"], "stalled" if state["stalled"] else "complete"

    def _claim_fault(self, h: _Handler, video_id: str, kind: str, state: dict[str, int]) -> bool:
        """At a fault offset: give a hanging-up client (yt-dlp's probe) time to leave, then take
        one unit of the fault budget.  False if the budget is gone; _Abort if the client left."""
        if _peer_closed(h.connection, self.fault_grace):
            raise _Abort("client-gone", state["sent"])
        with self._lock:
            b = self._behaviour(video_id)
            if kind == "drop" and b.drop_left > 0:
                b.drop_left -= 1
                return True
            if kind == "stall" and b.stall_left > 0:
                b.stall_left -= 1
                return True
        return False

    def _stall(self, h: _Handler, state: dict[str, int]) -> None:
        with self._lock:
            release = self._release
            self._stalled += 1
        state["stalled"] = 1
        try:
            while not release.wait(0.05):
                if _peer_closed(h.connection, 0):
                    raise _Abort("stalled", state["sent"])
            if self._stopping.is_set():
                raise _Abort("stalled", state["sent"])
        finally:
            with self._lock:
                self._stalled -= 1

    def _write(self, h: _Handler, data: memoryview, rate: int | None, state: dict[str, int]) -> None:
        """Write ``data``; with a rate, in ~10 ms chunks on a schedule (no initial burst)."""
        if not data:
            return
        if rate and state.get("burst", 0) > 0:  # the burst part at full speed, then the rest throttled
            head, state["burst"] = data[:state["burst"]], max(0, state["burst"] - len(data))
            self._write(h, head, None, state)
            data = data[len(head):]
            if not data:
                return
        chunk = _UNTHROTTLED_CHUNK if not rate else max(1024, min(64 * 1024, rate // 100))
        t0 = time.monotonic()
        done = 0
        while done < len(data):
            if self._stopping.is_set():
                raise _Abort("aborted", state["sent"])
            piece = data[done:done + chunk]
            if rate:
                delay = t0 + (done + len(piece)) / rate - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    raise _Abort("aborted", state["sent"])
            with self._lock:  # counted before writing so a client never sees bytes not yet counted
                self._bytes_sent_total += len(piece)
            try:
                h.wfile.write(piece)
            except OSError:
                with self._lock:
                    self._bytes_sent_total -= len(piece)
                raise _Abort("aborted" if self._stopping.is_set() else "client-gone", state["sent"])
            done += len(piece)
            state["sent"] += len(piece)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: print the URL template and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="videofetchd test media server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--rate", type=parse_size, default=None,
                        help="per-connection throttle in bytes/s, e.g. 2MiB (default: none)")
    parser.add_argument("--size", type=parse_size, default=50 * 1024, help="default video size, e.g. 50KiB")
    args = parser.parse_args(argv)
    done = threading.Event()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with MediaServer(host=args.host, port=args.port, default_size=args.size, rate_bps=args.rate) as srv:
        print(srv.url_template, flush=True)
        done.wait()  # signal handlers run in the main thread and interrupt this wait
    return 0


if __name__ == "__main__":
    sys.exit(main())
