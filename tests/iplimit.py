"""A media server that budgets video starts per client address, as a site limits each IP.

``LimitedMediaServer`` is tests/mediaserver.py's ``MediaServer`` with an ``AddressLimit``: a GET of
``/v/<id>.mp4`` from an address that has not asked for that ID within the window is a *video
start*. When the address has already made its allowance of starts within the last ``window``
seconds, the start is refused with HTTP 429 (``Retry-After: 1``) and not counted. Further GETs of
a started ID from the same address within the window (yt-dlp's generic extractor probes, then
downloads) belong to the same start. Clients pick their address by binding to 127.0.0.2,
127.0.0.3, ... (all of 127.0.0.0/8 is local on Linux), which is what videofetchd's identities
(``source_address``) and ``yt-dlp --source-address`` do.

Stdlib only; importable as the top-level module ``iplimit`` (tests/ is on sys.path).
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from mediaserver import _PATH_RE, MediaServer, RequestRecord, _Handler

__all__ = ["AddressLimit", "LimitedMediaServer", "Start"]


@dataclass(frozen=True)
class Start:
    """One video start as the server judged it (``time`` is ``time.monotonic()``)."""

    time: float
    address: str
    video_id: str
    admitted: bool


@dataclass
class AddressLimit:
    """At most ``per_window`` video starts per client address in any ``window`` seconds.

    ``per_window=None`` means no limit; ``per_address`` overrides it for some addresses
    (``0``: every start refused, ``None``: unlimited).
    """

    per_window: int | None = None
    window: float = 60.0
    per_address: dict[str, int | None] = field(default_factory=dict)
    starts: list[Start] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _recent: dict[str, collections.deque[float]] = field(default_factory=dict, repr=False)
    _started: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)

    def allowance(self, address: str) -> int | None:
        return self.per_address.get(address, self.per_window)

    def check(self, address: str, video_id: str, now: float | None = None) -> bool:
        """Is this GET allowed? Counts it as a start unless it continues one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            began = self._started.get((address, video_id))
            if began is not None and now - began < self.window:
                return True  # the download GET after the probe, a resume: the same start
            recent = self._recent.setdefault(address, collections.deque())
            while recent and now - recent[0] >= self.window:
                recent.popleft()
            allowed = self.allowance(address)
            admitted = allowed is None or len(recent) < allowed
            if admitted:
                recent.append(now)
                self._started[(address, video_id)] = now
            self.starts.append(Start(now, address, video_id, admitted))
            return admitted

    def admitted(self, address: str | None = None) -> list[Start]:
        with self._lock:
            return [s for s in self.starts if s.admitted and address in (None, s.address)]

    def refused(self, address: str | None = None) -> list[Start]:
        with self._lock:
            return [s for s in self.starts if not s.admitted and address in (None, s.address)]

    def max_in_window(self, address: str, window: float | None = None) -> int:
        """The most admitted starts of ``address`` in any half-open interval of ``window`` seconds."""
        window = self.window if window is None else window
        times = sorted(s.time for s in self.admitted(address))
        return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


class LimitedMediaServer(MediaServer):
    """``MediaServer`` that answers 429 to an address over its allowance of video starts."""

    def __init__(self, limit: AddressLimit, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit

    def _handle(self, h: _Handler, *, head: bool) -> None:
        m = _PATH_RE.match(urllib.parse.urlsplit(h.path).path)
        if head or m is None or self.limit.check(h.client_address[0], urllib.parse.unquote(m.group(1))):
            super()._handle(h, head=head)
            return
        h.close_connection = True
        with self._lock:
            self._records.append(RequestRecord(time.monotonic(), h.command, urllib.parse.unquote(m.group(1)),
                                               None, 429, 0, "complete"))
        try:
            self._send_error(h, 429, head)
        except OSError:
            pass
