"""The supervisor's only path to the database: one dedicated thread, a timeout per call, health.

Store methods block. Running every one of them on a single thread keeps the event loop free to
watch its children while the database is slow or gone, and keeps SQLite to one writing
connection. A call that fails or times out marks the link down; the supervisor then holds back
results and probes again with a growing delay.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import DatabaseUnavailable
from .jobs import Job, Outcome

log = logging.getLogger("videofetchd.supervisor")
T = TypeVar("T")
DB_CALL_TIMEOUT_S = 10.0


@dataclass
class DbHealth:
    ok: bool = True
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic time of the next probe while down
    pending: list[tuple[Job, Outcome]] = field(default_factory=list)  # results not yet recorded


class DbLink:
    def __init__(self) -> None:
        self.health = DbHealth()
        self.call_since: float | None = None  # monotonic start of the call in flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videofetchd-db")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store method on the database thread; DatabaseUnavailable on timeout."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        self.call_since = time.monotonic()
        try:
            return await asyncio.wait_for(future, DB_CALL_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise DatabaseUnavailable(f"database call {fn.__name__} timed out") from None
        finally:
            self.call_since = None

    def down(self, exc: DatabaseUnavailable) -> None:
        h = self.health
        if h.ok:
            log.error("database unavailable: %s; downloads continue, results are kept", exc)
        elif str(exc) != h.error:  # the reason changed (reconnected to a read-only standby, say)
            log.warning("database still unavailable: %s", exc)
        h.ok, h.error = False, str(exc)
        h.failures += 1
        h.retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(h.failures, 6))

    def up(self) -> None:
        h = self.health
        log.info("database is back; recording %d held-back results", len(h.pending))
        h.ok, h.error, h.failures = True, None, 0

    def close(self) -> None:
        self._executor.shutdown(wait=False)
