"""PostgreSQL LISTEN/NOTIFY: wake an idle daemon the moment a row is inserted.

A trigger on ``videos`` sends NOTIFY on every insert, from videofetchctl or any other program.
This module keeps one dedicated autocommit connection LISTENing, watched by the event loop (no
thread); when it breaks it reconnects with backoff. Polling stays the fallback, so a lost
notification only costs ``database.poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .models import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class PgListener:
    def __init__(self, url: str, on_notify: Callable[[], None]) -> None:
        self.url = url
        self.on_notify = on_notify
        self._broken = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after failures."""
        import psycopg2
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            conn: Any = None
            fd = -1
            try:
                conn = await loop.run_in_executor(None, self._connect)
                self._broken.clear()
                fd = conn.fileno()  # kept: once libpq drops a broken socket, fileno() raises
                loop.add_reader(fd, self._readable, conn)
                delay = 0.5
                self.on_notify()  # rows may have arrived while we were not listening
                await self._broken.wait()
            except psycopg2.Error as exc:
                log.warning("LISTEN connection failed: %s; polling meanwhile", str(exc).strip())
            except Exception:  # noqa: BLE001 - the listener must never die silently; polling covers meanwhile
                log.exception("LISTEN connection failed unexpectedly; polling meanwhile")
            finally:
                if fd >= 0:
                    loop.remove_reader(fd)
                if conn is not None:
                    conn.close()
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    def _connect(self) -> Any:
        """Connect and LISTEN, off the event loop: a half-open server must not block it."""
        import psycopg2
        conn = psycopg2.connect(self.url, connect_timeout=5, keepalives=1, keepalives_idle=10,
                                keepalives_interval=5, keepalives_count=3, application_name="videofetchd-listen",
                                options="-c statement_timeout=8000")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

    def _readable(self, conn: Any) -> None:
        import psycopg2
        try:
            conn.poll()
        except psycopg2.Error as exc:
            log.warning("LISTEN connection lost: %s", str(exc).strip())
            self._broken.set()
            return
        if conn.notifies:
            conn.notifies.clear()
            self.on_notify()
