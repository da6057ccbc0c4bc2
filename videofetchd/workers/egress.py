"""Egress identities on the supervisor's side: claiming under budgets, throttling, status.

With no ``download.identities`` there is one implicit identity and nothing changes: plain claims,
and a throttling answer pauses the whole site. With identities, claims go through
``queue.budgets`` (each row together with an identity that has budget for its site), and a
throttling answer pauses only that identity on that site; the site is paused once every
identity is. This module keeps the supervisor's view of the budgets for ``status``; it never
decides a budget itself (the database does, for every daemon at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config, DownloadConfig
from ..queue import budgets
from ..queue.bucket import Bucket, Limits, level, token_wait
from ..queue.jobs import Job, site_of, url_for
from ..queue.store import Claimed, Store
from .hostprobe import bind_error

log = logging.getLogger(__name__)
FAULT_RECHECK_S = 10.0  #: how often a faulted identity's source_address is tried again


class Egress:
    def __init__(self, store: Store, db: Callable[..., Awaitable[Any]], site_pauses: dict[str, float]) -> None:
        self.store = store
        self.db = db
        self.site_pauses = site_pauses  # shared with the supervisor: site -> monotonic end of pause
        self.clock = 0.0  # database clock at the last refresh
        self.read_at = 0.0  # monotonic time of the last refresh
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.running: dict[str, int] = {}
        #: identities whose source_address this host cannot bind: name -> (why, monotonic time of
        #: the last bind attempt); they take no job until a bind works again
        self.faults: dict[str, tuple[str, float]] = {}

    def fault(self, name: str, why: str) -> None:
        """A job of identity ``name`` met EADDRNOTAVAIL: its address went away. Pause it (its row
        is handed back uncharged); ``claim`` tries a bind every FAULT_RECHECK_S and resumes it."""
        if name not in self.faults:
            log.error("%s; identity %s takes no jobs until its address is back", why, name)
        self.faults[name] = (why, time.monotonic())

    def _usable(self, d: DownloadConfig, now: float) -> list[Limits]:
        for ident in d.identities:
            fault = self.faults.get(ident.name)
            if fault is None or now - fault[1] < FAULT_RECHECK_S:
                continue
            if not ident.source_address or bind_error(ident.source_address) is None:
                del self.faults[ident.name]
                log.warning("identity %s: source_address %s can be bound again; it takes jobs again",
                            ident.name, ident.source_address or "(none)")
            else:
                self.faults[ident.name] = (fault[0], now)
        return [Limits.of(i) for i in d.identities if i.name not in self.faults]

    async def claim(self, cfg: Config, owner: str, limit: int, now: float) -> tuple[list[Claimed], float | None]:
        """Claim up to ``limit`` rows; returns them and the seconds until the url_template's site
        has budget again (None: no budget to wait for)."""
        d = cfg.download
        lease = cfg.database.lease_duration
        if not d.identities:
            default_site = site_of(url_for("x", None, d.url_template))
            url_only = self.site_pauses.get(default_site, 0.0) > now
            return await self.db(self.store.claim, owner, limit, lease, url_rows_only=url_only), None
        limits = self._usable(d, time.monotonic())
        if not limits:
            return [], None
        result = await self.db(budgets.claim, self.store, owner, limit, lease, limits, d.url_template)
        return result.claimed, result.retry_in

    async def throttled(self, job: Job, d: DownloadConfig, reason: str) -> float:
        """Record a throttling answer to ``job``; returns how long its row should wait."""
        site = site_of(job.url)
        if job.identity is None:
            pause = await self.db(self.store.pause_site, site, d.throttle_cooldown, reason)
            self.site_pauses[site] = time.monotonic() + pause
            log.warning("site %s throttles us (%s); pausing it for %.0fs", site, reason, pause)
            return pause
        names = [i.name for i in d.identities]
        pause, site_left = await self.db(budgets.pause, self.store, job.identity, site, d.throttle_cooldown,
                                         reason, names)
        await self.refresh(d)
        log.warning("identity %s is throttled by %s (%s); pausing it there for %.0fs", job.identity, site,
                    reason, pause)
        if site_left is None:
            return 0.0  # another identity takes the row at once
        self.site_pauses[site] = time.monotonic() + site_left
        log.warning("every identity is throttled by %s; pausing the site for %.0fs", site, site_left)
        return site_left

    async def succeeded(self, job: Job) -> None:
        """A success ends the strikes of its identity on its site (written only when there are some)."""
        if job.identity is None:
            return
        b = self.buckets.get((job.identity, site_of(job.url)))
        if b is not None and b.strikes:
            await self.db(budgets.clear, self.store, job.identity, site_of(job.url))
            b.strikes = 0

    async def refresh(self, d: DownloadConfig) -> None:
        """Read the budgets of the configured identities for status (every few seconds)."""
        names = [i.name for i in d.identities]
        if not names:
            self.buckets.clear()
            self.running.clear()
            return
        self.clock, self.buckets, self.running = await self.db(budgets.state, self.store, names)
        self.read_at = time.monotonic()

    def status(self, d: DownloadConfig, now: float) -> list[dict[str, Any]]:
        """Each identity's running jobs, and per site its budget left, next token and pause."""
        clock = self.clock + (now - self.read_at)
        result = []
        for ident in d.identities:
            lim = Limits.of(ident)
            sites = []
            for (name, site), b in sorted(self.buckets.items(), key=lambda kv: -kv[1].updated):
                if name != ident.name:
                    continue
                tokens = level(b, lim, clock)
                paused = max(0.0, b.paused_until - clock)
                sites.append({"site": site, "tokens": None if not lim.per_hour else round(tokens, 2),
                              "next_token_s": round(token_wait(tokens, lim), 1) if lim.per_hour else None,
                              "paused_s": round(paused, 1) if paused else None, "strikes": b.strikes,
                              "reason": b.reason if paused else None, "started": b.started})
            proxy = ident.ytdlp.get("proxy")
            result.append({"name": ident.name, "source_address": ident.source_address or None,
                           "proxy": _redact(proxy) if isinstance(proxy, str) else None,
                           "max_per_hour": ident.max_per_hour or None, "burst": ident.burst,
                           "max_concurrent": ident.max_concurrent or None,
                           "running": self.running.get(ident.name, 0), "sites": sites,
                           "fault": self.faults[ident.name][0] if ident.name in self.faults else None})
        return result


def _redact(url: str) -> str:
    """A proxy URL without its password."""
    scheme, sep, rest = url.rpartition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
