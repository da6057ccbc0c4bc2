"""A small hostile web site for tests: redirects, endless bodies, lying lengths, odd answers.

Where ``mediaserver`` is an honest media host, this plays the other side of the security tests:
a site whose answers try to make videofetchd fetch internal addresses, fill the disk, download a
playlist's every entry or write escape sequences to the operator's terminal. Each path is set up
with one call; the server records which paths were requested and how many body bytes it sent.

Bind it to another loopback address (``Site(host="127.0.0.2")``) to play a "public" host that a
config's ``download.allow_addresses`` names, next to a media server on 127.0.0.1 that it does not.
Stdlib only; importable as the top-level module ``sites`` (tests/ is on sys.path).
"""

from __future__ import annotations

import collections
import http.server
import socketserver
import threading
import types
from collections.abc import Callable

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]
CHUNK = 64 * 1024
MAX_ENDLESS = 8 * 1024**3  #: an "endless" body stops here, so a broken client cannot fill the disk


class QuietServer(http.server.ThreadingHTTPServer):
    """A threaded test server that binds without a reverse DNS lookup and stays quiet when a
    client hangs up mid-body (endless bodies, children killed mid-download: a test's point)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no reverse DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _Server(QuietServer):
    site: Site


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        site = self.server.site
        path = self.path.split("?", 1)[0]
        with site.lock:
            site.requests.append(path)
        handler = site.routes.get(path)
        if handler is None:
            self.send_error(404)
            return
        handler(self)

    do_HEAD = do_GET


class Site:
    """A threaded HTTP server on ``host``; routes are added with the methods below."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.host = host
        self.routes: dict[str, Handler] = {}
        self.requests: list[str] = []
        self.sent: collections.Counter[str] = collections.Counter()  # path -> body bytes sent
        self.lock = threading.Lock()
        self._httpd: _Server | None = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> Site:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.site = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.stop()

    def url(self, path: str) -> str:
        assert self._httpd is not None, "Site not started"
        return f"http://{self.host}:{self._httpd.server_port}{path}"

    def hits(self, path: str) -> int:
        with self.lock:
            return self.requests.count(path)

    # -- routes ---------------------------------------------------------------------------------

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        def handle(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Location", to)
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = handle
        return self.url(path)

    def page(self, path: str, body: bytes | str, content_type: str) -> str:
        data = body.encode() if isinstance(body, str) else body

        def handle(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
                self._count(path, len(data))
        self.routes[path] = handle
        return self.url(path)

    def endless(self, path: str, content_type: str = "video/mp4", declared: int | None = None) -> str:
        """A body that never ends: no Content-Length (the connection would delimit it), or a
        ``declared`` one that is a lie of any size. Stops when the client hangs up."""
        def handle(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Type", content_type)
            if declared is not None:
                h.send_header("Content-Length", str(declared))
            else:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            if h.command == "HEAD":
                return
            chunk = b"\0" * CHUNK
            sent = 0
            try:
                while sent < MAX_ENDLESS:
                    h.wfile.write(chunk)
                    sent += CHUNK
                    self._count(path, CHUNK)
            except OSError:
                pass
            h.close_connection = True
        self.routes[path] = handle
        return self.url(path)

    def error(self, path: str, status: int, reason: str) -> str:
        """An error answer whose reason phrase is ``reason``, byte for byte (escape sequences too)."""
        def handle(h: http.server.BaseHTTPRequestHandler) -> None:
            h.wfile.write(f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1"))
            h.send_header("Content-Length", "0")
            h.end_headers()
        self.routes[path] = handle
        return self.url(path)

    def _count(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] += n
