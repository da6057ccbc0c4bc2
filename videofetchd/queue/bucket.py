"""Budgets of egress identities: token-bucket arithmetic and the choice of identity per job.

Pure: no I/O, no clock of its own (``now`` is the database clock, passed in), so ``budgets``
can run it inside the claim's transaction and tests can run it on numbers. An identity may
start a job on a site when it is not paused there, has a token for that site and has room
under ``max_concurrent``. A bucket holds at most ``burst`` tokens and gains ``max_per_hour``
per hour, so starts are spread evenly: at most ``burst + max_per_hour * T / 3600`` in any T
seconds. It must not import the database layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..config import Identity


@dataclass(frozen=True)
class Limits:
    """The budget part of an identity, as the claim needs it."""

    name: str
    per_hour: int = 0  #: starts per site per hour; 0 = no budget
    burst: int = 1  #: bucket size
    max_concurrent: int = 0  #: jobs at once over all sites; 0 = no limit

    @classmethod
    def of(cls, ident: Identity) -> Limits:
        return cls(ident.name, ident.max_per_hour, ident.burst, ident.max_concurrent)


@dataclass
class Bucket:
    """One identity on one site, as stored in ``identity_budget`` (times on the database clock)."""

    tokens: float = 0.0  #: tokens at ``updated``
    updated: float = 0.0
    paused_until: float = 0.0  #: throttled: no starts on this site until then
    strikes: int = 0  #: throttling answers in a row (the pause doubles with each)
    reason: str | None = None  #: the last throttling answer
    started: int = 0  #: jobs started by this identity on this site, ever


def level(bucket: Bucket | None, limits: Limits, now: float) -> float:
    """Tokens available at ``now`` (infinite without a budget; a bucket never seen is full)."""
    if not limits.per_hour:
        return math.inf
    if bucket is None:
        return float(limits.burst)
    gained = max(0.0, now - bucket.updated) * limits.per_hour / 3600.0
    return min(float(limits.burst), bucket.tokens + gained)


def token_wait(tokens: float, limits: Limits) -> float:
    """Seconds until a bucket holding ``tokens`` has a whole one."""
    if tokens >= 1.0 or not limits.per_hour:
        return 0.0
    return (1.0 - tokens) * 3600.0 / limits.per_hour


class Planner:
    """Picks the identity of each job of one claim and keeps count of what it took.

    Among the identities free to start on a site it takes the one with the fewest jobs running,
    then the one that started the fewest jobs there, so work spreads over every identity.
    """

    def __init__(self, limits: Sequence[Limits], buckets: dict[tuple[str, str], Bucket],
                 running: dict[str, int], site_pauses: dict[str, float], now: float) -> None:
        self.limits = list(limits)
        self.buckets = buckets
        self.running = {lim.name: running.get(lim.name, 0) for lim in self.limits}
        self.site_pauses = site_pauses
        self.now = now
        self.taken: dict[tuple[str, str], int] = {}  #: (identity, site) -> jobs assigned in this claim

    def _room(self, lim: Limits) -> bool:
        return not lim.max_concurrent or self.running[lim.name] < lim.max_concurrent

    def has_room(self) -> bool:
        """Can any identity start one more job at all (on some site)?"""
        return any(self._room(lim) for lim in self.limits)

    def _wait(self, lim: Limits, site: str) -> float:
        """Seconds until ``lim`` may start a job on ``site`` (its concurrency aside)."""
        b = self.buckets.get((lim.name, site))
        pause = max(0.0, (b.paused_until if b else 0.0) - self.now, self.site_pauses.get(site, 0.0) - self.now)
        return max(pause, token_wait(level(b, lim, self.now), lim))

    def wait(self, site: str) -> float | None:
        """Seconds until some identity may start a job on ``site``; None when only the end of a
        running job can make room (every identity is at max_concurrent)."""
        waits = [self._wait(lim, site) for lim in self.limits if self._room(lim)]
        return min(waits) if waits else None

    def take(self, site: str) -> str | None:
        """Assign one job on ``site`` to an identity and draw its token; None if none may start."""
        free = [lim for lim in self.limits if self._room(lim) and self._wait(lim, site) <= 0.0]
        if not free:
            return None
        lim = min(free, key=lambda x: (self.running[x.name], self._started(x.name, site)))
        key = (lim.name, site)
        b = self.buckets.get(key)
        tokens = level(b, lim, self.now)
        self.buckets[key] = b = b if b is not None else Bucket()
        b.tokens, b.updated = (tokens - 1.0 if lim.per_hour else 0.0), self.now
        b.started += 1
        self.running[lim.name] += 1
        self.taken[key] = self.taken.get(key, 0) + 1
        return lim.name

    def refund(self, name: str, site: str) -> None:
        """Undo one take(): its row was taken by another claimer between choice and update."""
        lim = next(x for x in self.limits if x.name == name)
        key = (name, site)
        b = self.buckets[key]
        b.tokens += 1.0 if lim.per_hour else 0.0
        b.started -= 1
        self.running[name] -= 1
        self.taken[key] -= 1
        if not self.taken[key]:
            del self.taken[key]

    def _started(self, name: str, site: str) -> int:
        b = self.buckets.get((name, site))
        return b.started if b else 0

    def changed(self) -> Iterable[tuple[str, str, Bucket, int]]:
        """(identity, site, bucket, jobs assigned) of every bucket this claim drew from."""
        for (name, site), n in self.taken.items():
            yield name, site, self.buckets[(name, site)], n
