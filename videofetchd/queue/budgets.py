"""Budgets of egress identities in the database: claims that draw tokens, throttling pauses, status.

Every statement about ``identity_budget`` lives here. A claim under identities is one
transaction (PostgreSQL: behind a transaction-level advisory lock, so the budgeted claims of
every daemon take turns, while rows are still locked ``FOR UPDATE SKIP LOCKED``; SQLite:
``BEGIN IMMEDIATE``). Inside it: the database clock, the buckets of the configured identities,
their running jobs and the site pauses are read; candidate rows are read from the queue index;
each gets an identity with budget (``bucket.Planner``) or stays queued; the chosen rows alone
are locked and updated (a row another claimer took meanwhile gives its token back); buckets
are written. So every daemon and a one-shot ``fetch`` on the same database draw from the same
buckets, and a row is claimed only together with an identity that may start it.
The rules themselves (tokens, choice of identity) are in the pure ``bucket`` module.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidVideoId
from .bucket import Bucket, Limits, Planner
from .jobs import site_of, throttle_delay, url_for
from .store import Claimed, Store, db_errors

#: serialises budgeted claims and pauses of every daemon on one PostgreSQL database
ADVISORY_KEY = 7214662
#: rows read beyond the slots to fill: room to skip rows of sites without budget in one claim
CANDIDATE_SLACK = 16
_BUCKET_COLS = "identity, site, tokens, updated, paused_until, strikes, reason, started"


@dataclass(frozen=True)
class ClaimResult:
    claimed: list[Claimed]
    #: seconds until an identity may start a job on the url_template's site again; None when
    #: it may now (the queue had no more rows) or only a running job's end can make room
    retry_in: float | None


@contextlib.contextmanager
def _transaction(store: Store) -> Iterator[None]:
    if store.backend == "sqlite":
        with store.db.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        with store.db.atomic():
            store.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
            yield


def _q(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement inside the caller's transaction."""
    cur = store.db.execute_sql(store._sql(sql), list(params))
    return list(cur.fetchall()) if cur.description else []


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" for _ in items)


def _now(store: Store) -> float:
    return float(_q(store, f"SELECT {store.now}")[0][0])


def _buckets(store: Store, names: Sequence[str], sites: Sequence[str]) -> dict[tuple[str, str], Bucket]:
    if not sites:
        return {}
    rows = _q(store, f"SELECT {_BUCKET_COLS} FROM identity_budget WHERE identity IN ({_marks(names)}) "
                     f"AND site IN ({_marks(sites)})", [*names, *sites])
    return {(r[0], r[1]): Bucket(float(r[2]), float(r[3]), float(r[4]), int(r[5]), r[6], int(r[7])) for r in rows}


def _running(store: Store, names: Sequence[str]) -> dict[str, int]:
    """Jobs running under each identity, on any daemon (the rows say so, so this heals itself)."""
    return {r[0]: int(r[1]) for r in _q(
        store, f"SELECT identity, count(*) FROM videos WHERE status = 'running' AND identity IN ({_marks(names)}) "
               "GROUP BY identity", names)}


def _site_pauses(store: Store, now: float) -> dict[str, float]:
    return {r[0]: float(r[1]) for r in _q(store, "SELECT site, until FROM site_backoff WHERE until > ?", [now])}


@db_errors
def claim(store: Store, owner: str, limit: int, lease_s: float, limits: Sequence[Limits],
          template: str) -> ClaimResult:
    """Claim up to ``limit`` queued rows, each under an identity with budget for its site.

    Rows of the url_template's site are skipped through the index of URL rows while that site
    has no budget; a URL row whose site has none right now is deferred (``run_after``, no
    attempt counted) until an identity could start it, so it never blocks the rows behind it.
    """
    if limit <= 0 or not limits:
        return ClaimResult([], None)
    names = [lim.name for lim in limits]
    home = site_of(template.format(id="x"))
    token = uuid.uuid4().hex
    with _transaction(store):
        now = _now(store)
        planner = Planner(limits, _buckets(store, names, [home]), _running(store, names), _site_pauses(store, now), now)
        if not planner.has_room():
            return ClaimResult([], None)
        home_wait = planner.wait(home)
        only_urls = " AND url IS NOT NULL" if home_wait is None or home_wait > 0 else ""
        rows = _q(store, f"SELECT id, video_id, url FROM videos WHERE status = 'queued' AND run_after <= ?{only_urls} "
                         "ORDER BY run_after, id LIMIT ?", [now, limit + CANDIDATE_SLACK])
        sites: dict[int, str | None] = {}
        for row_id, video_id, url in rows:
            try:
                sites[row_id] = site_of(url_for(video_id, url, template))
            except InvalidVideoId:
                sites[row_id] = None  # claimed without an identity or a token: the supervisor fails it
        others = sorted({s for s in sites.values() if s is not None and s != home})
        planner.buckets.update(_buckets(store, names, others))
        chosen: dict[str | None, list[int]] = {}
        deferred: dict[float, list[int]] = {}
        for row_id, _video_id, url in rows:
            if sum(len(ids) for ids in chosen.values()) >= limit or not planner.has_room():
                break
            site = sites[row_id]
            name = planner.take(site) if site is not None else None
            if name is not None or site is None:
                chosen.setdefault(name, []).append(row_id)
            elif url is not None:
                wait = planner.wait(site)
                if wait:
                    deferred.setdefault(round(wait, 3), []).append(row_id)
        claimed: list[Claimed] = []
        sets = (f"status = 'running', lease_owner = ?, claim_token = ?, lease_expires = {store.now} + ?, "
                f"attempts = attempts + 1, updated_at = {store.now}, identity = ?")
        for name, ids in chosen.items():
            got = _update_free(store, sets, [owner, token, lease_s, name], ids,
                               ("id", "video_id", "url", "attempts", "run_after"))
            claimed += [Claimed(r[0], r[1], r[2], r[3], token, name, queue_wait_s=max(0.0, now - float(r[4])))
                        for r in got]
            for row_id in set(ids) - {r[0] for r in got}:
                if name is not None:
                    planner.refund(name, sites[row_id] or "")
        for wait, ids in deferred.items():
            _update_free(store, "run_after = ?", [now + wait], ids)
        for name, site, b, n in planner.changed():
            _q(store, f"INSERT INTO identity_budget ({_BUCKET_COLS}) VALUES (?, ?, ?, ?, 0, 0, NULL, ?) "
                      "ON CONFLICT (identity, site) DO UPDATE SET tokens = excluded.tokens, "
                      "updated = excluded.updated, started = identity_budget.started + excluded.started",
               [name, site, b.tokens, b.updated, n])
    retry = planner.wait(home)
    return ClaimResult(sorted(claimed, key=lambda c: c.row_id), retry or None)


def _update_free(store: Store, sets: str, params: list[Any], ids: list[int],
                 returning: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """UPDATE the rows ``ids`` that are still queued and not locked by anyone else; returns the
    ``returning`` columns of the rows updated."""
    pick = f"SELECT id FROM videos WHERE id IN ({_marks(ids)}) AND status = 'queued'"
    if store.backend == "postgres":
        back = f" RETURNING {', '.join('v.' + c for c in returning)}" if returning else ""
        return _q(store, f"WITH c AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) "
                         f"UPDATE videos v SET {sets} FROM c WHERE v.id = c.id{back}", [*ids, *params])
    back = f" RETURNING {', '.join(returning)}" if returning else ""
    return _q(store, f"UPDATE videos SET {sets} WHERE id IN ({pick}){back}", [*params, *ids])


@db_errors
def pause(store: Store, identity: str, site: str, base_s: float, reason: str,
          names: Sequence[str]) -> tuple[float, float | None]:
    """Record a throttling answer to ``identity`` from ``site``: pause that identity there with a
    cool-down that doubles while it repeats. When every identity in ``names`` is then paused on
    the site, the site itself is paused (site_backoff) until the first of them may go again.
    Returns (the identity's pause, the site's pause or None), in seconds."""
    with _transaction(store):
        now = _now(store)
        rows = _q(store, "SELECT strikes, paused_until FROM identity_budget WHERE identity = ? AND site = ?",
                  [identity, site])
        strikes = (rows[0][0] + 1) if rows else 1
        if rows and rows[0][1] > now:  # already paused: another job hit the same wall; keep the pause
            strikes = rows[0][0]
        length = throttle_delay(strikes, base_s)
        _q(store, "INSERT INTO identity_budget (identity, site, tokens, updated, paused_until, strikes, reason) "
                  "VALUES (?, ?, 0, ?, ?, ?, ?) ON CONFLICT (identity, site) DO UPDATE SET "
                  "paused_until = excluded.paused_until, strikes = excluded.strikes, reason = excluded.reason",
           [identity, site, now, now + length, strikes, reason[:500]])
        if not names:
            return length, None
        paused = _q(store, f"SELECT paused_until, strikes FROM identity_budget WHERE site = ? AND paused_until > ? "
                           f"AND identity IN ({_marks(names)})", [site, now, *names])
        if len(paused) < len(set(names)):
            return length, None
        until, fewest = min(p[0] for p in paused), min(p[1] for p in paused)
        _q(store, "INSERT INTO site_backoff (site, until, strikes, reason) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (site) DO UPDATE SET until = excluded.until, strikes = excluded.strikes, "
                  "reason = excluded.reason",
           [site, until, fewest, f"every identity throttled: {reason}"[:500]])
    return length, until - now


@db_errors
def clear(store: Store, identity: str, site: str) -> None:
    """A success of ``identity`` on ``site`` ends its strike count (once its pause is over)."""
    store.write(f"UPDATE identity_budget SET strikes = 0, reason = NULL WHERE identity = ? AND site = ? "
                f"AND strikes > 0 AND paused_until <= {store.now}", [identity, site])


@db_errors
def state(store: Store, names: Sequence[str]) -> tuple[float, dict[tuple[str, str], Bucket], dict[str, int]]:
    """(database clock, buckets, running jobs) of the named identities, for status."""
    if not names:
        return 0.0, {}, {}
    now = _now(store)
    rows = _q(store, f"SELECT {_BUCKET_COLS} FROM identity_budget WHERE identity IN ({_marks(names)}) "
                     "ORDER BY updated DESC LIMIT 500", names)
    buckets = {(r[0], r[1]): Bucket(float(r[2]), float(r[3]), float(r[4]), int(r[5]), r[6], int(r[7])) for r in rows}
    return now, buckets, _running(store, names)
