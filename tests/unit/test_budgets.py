"""Identity budgets in the database (videofetchd.queue.budgets) on real SQLite and real PostgreSQL.

PostgreSQL: one fresh database for the module (tests/pg.py), emptied before each test; skipped
when no server answers, failed under CI=true.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pg import fresh_database
from videofetchd.queue import budgets, models
from videofetchd.queue.bucket import Limits
from videofetchd.queue.store import Store, open_store

OWNER = "node:1"
LEASE = 60.0
TEMPLATE = "http://media.test/v/{id}.mp4"


def drop_schema(url: str) -> None:
    import psycopg2
    con = psycopg2.connect(url)
    with con, con.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS videos, site_backoff, identity_budget, videofetchd_schema CASCADE; "
                    "DROP FUNCTION IF EXISTS videofetchd_notify() CASCADE")
    con.close()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    url: str = request.getfixturevalue("pg_database")
    drop_schema(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    st = open_store(db_url)
    try:
        yield st
    finally:
        st.close()


def claim(store: Store, limits: list[Limits], limit: int = 10) -> budgets.ClaimResult:
    return budgets.claim(store, OWNER, limit, LEASE, limits, TEMPLATE)


def rows(store: Store, where: str = "1=1") -> list[dict[str, Any]]:
    cols = ["video_id", "url", "status", "attempts", "identity", "run_after"]
    return [dict(zip(cols, r)) for r in store.read(f"SELECT {', '.join(cols)} FROM videos WHERE {where} ORDER BY id")]


def buckets(store: Store) -> dict[tuple[str, str], tuple[float, int, int]]:
    return {(r[0], r[1]): (float(r[2]), int(r[3]), int(r[4])) for r in store.read(
        "SELECT identity, site, tokens, started, strikes FROM identity_budget")}


def finish_all(store: Store) -> None:
    store.write("UPDATE videos SET status = 'done', lease_owner = NULL, claim_token = NULL WHERE status = 'running'")


def test_a_claim_takes_only_what_the_budgets_allow_and_records_the_identity(store: Store) -> None:
    store.add([(f"v{i:02d}", None) for i in range(20)])
    limits = [Limits(n, per_hour=3600, burst=2) for n in ("a", "b", "c")]
    result = claim(store, limits)
    assert len(result.claimed) == 6  # a full bucket of 2 per identity, not the 10 slots asked for
    assert sorted(c.identity or "" for c in result.claimed) == ["a", "a", "b", "b", "c", "c"]
    assert 0.0 < (result.retry_in or 0.0) <= 1.0  # one token per second comes back
    running = rows(store, "status = 'running'")
    assert sorted(r["identity"] for r in running) == ["a", "a", "b", "b", "c", "c"]
    drawn = buckets(store)
    assert {k: (round(t, 1), n) for k, (t, n, _) in drawn.items()} == {
        (n, "media.test"): (0.0, 2) for n in ("a", "b", "c")}
    finish_all(store)
    assert claim(store, limits).claimed == []  # no token yet: nothing claimed...
    assert all(r["attempts"] == 0 for r in rows(store, "status = 'queued'"))  # ...and nothing charged


def test_the_url_rows_of_other_sites_go_on_while_the_template_site_has_no_budget(store: Store) -> None:
    limits = [Limits("a", per_hour=36, burst=1)]  # one start per 100 s per site
    store.add([(f"t{i}", None) for i in range(5)])
    assert [c.video_id for c in claim(store, limits).claimed] == ["t0"]
    store.add([("other", "http://other.test/clip.mp4")])
    got = claim(store, limits).claimed
    assert [(c.video_id, c.identity) for c in got] == [("other", "a")]
    assert [r["video_id"] for r in rows(store, "status = 'queued'")] == ["t1", "t2", "t3", "t4"]


def test_a_url_row_without_budget_is_deferred_uncharged_so_rows_behind_it_go(store: Store) -> None:
    limits = [Limits("a", per_hour=36, burst=1)]
    store.add([("first", "http://busy.test/0.mp4")])
    assert len(claim(store, limits).claimed) == 1  # busy.test's only token is gone
    store.add([(f"busy{i:02d}", f"http://busy.test/{i}.mp4") for i in range(1, 41)])
    store.add([("free", "http://free.test/x.mp4")])
    got: list[str] = []
    for _ in range(4):  # each claim reads a bounded window and moves the busy rows out of the way
        got += [c.video_id for c in claim(store, limits, limit=1).claimed]
        if got:
            break
    assert got == ["free"]
    now = float(store.read(f"SELECT {store.now}")[0][0])
    deferred = rows(store, "substr(video_id, 1, 4) = 'busy'")
    assert all(r["status"] == "queued" and r["attempts"] == 0 for r in deferred)
    assert all(r["run_after"] > now + 60 for r in deferred)  # until busy.test has a token again


def test_max_concurrent_counts_the_running_rows(store: Store) -> None:
    store.add([(f"v{i}", None) for i in range(10)])
    limits = [Limits("a", max_concurrent=1), Limits("b", max_concurrent=1)]
    assert sorted(c.identity or "" for c in claim(store, limits).claimed) == ["a", "b"]
    result = claim(store, limits)
    assert result.claimed == [] and result.retry_in is None  # only a job's end makes room
    store.write("UPDATE videos SET status = 'done' WHERE identity = 'b'")
    assert [c.identity for c in claim(store, limits).claimed] == ["b"]


def test_a_throttled_identity_pauses_alone_then_every_identity_pauses_the_site(store: Store) -> None:
    store.add([(f"v{i}", None) for i in range(10)])
    limits = [Limits("a"), Limits("b")]
    pause, site = budgets.pause(store, "a", "media.test", 60.0, "HTTP Error 429", ["a", "b"])
    assert (pause, site) == (60.0, None)
    assert {c.identity for c in claim(store, limits, limit=3).claimed} == {"b"}
    assert budgets.pause(store, "a", "media.test", 60.0, "again", ["a", "b"])[0] == 60.0  # paused: same strike
    pause, site = budgets.pause(store, "b", "media.test", 60.0, "HTTP Error 429", ["a", "b"])
    assert site is not None and 59.0 < site <= 60.0
    assert "every identity" in store.read("SELECT reason FROM site_backoff WHERE site = 'media.test'")[0][0]
    assert claim(store, limits).claimed == []
    assert buckets(store)[("a", "media.test")][2] == 1


def test_a_repeated_throttle_doubles_and_a_success_clears_the_strikes(store: Store) -> None:
    budgets.pause(store, "a", "media.test", 0.2, "429", ["a", "b"])
    time.sleep(0.3)  # the pause is over (database clock)
    assert budgets.pause(store, "a", "media.test", 0.2, "429", ["a", "b"])[0] == pytest.approx(0.4)
    budgets.clear(store, "a", "media.test")
    assert buckets(store)[("a", "media.test")][2] == 2  # not while paused
    time.sleep(0.5)
    budgets.clear(store, "a", "media.test")
    assert buckets(store)[("a", "media.test")][2] == 0


def test_concurrent_claimers_share_one_budget(db_url: str, store: Store) -> None:
    """Two daemons (own connections, own threads) claiming as fast as they can never start more
    than the identities' buckets allow between them."""
    store.add([(f"v{i:04d}", None) for i in range(2000)])
    limits = [Limits("a", per_hour=4 * 3600, burst=1), Limits("b", per_hour=4 * 3600, burst=1)]
    claimed: list[list[str]] = [[], []]
    stop = threading.Event()

    def claimer(i: int) -> None:
        st = open_store(db_url)
        try:
            while not stop.is_set():
                for c in budgets.claim(st, f"node{i}:1", 4, LEASE, limits, TEMPLATE).claimed:
                    claimed[i].append(c.identity or "")
                    st.finish(c.row_id, c.claim_token, file_path="/x", file_size=1, extractor=None)
        finally:
            st.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - t0
    total = len(claimed[0]) + len(claimed[1])
    assert claimed[0] and claimed[1], "both claimers got work"
    assert total <= 2 * (1 + 4 * elapsed), (total, elapsed)  # each identity: burst + 4/s, shared
    for name in ("a", "b"):
        assert sum(1 for c in claimed[0] + claimed[1] if c == name) <= 1 + 4 * elapsed


def test_migration_from_version_2_keeps_the_rows(db_url: str) -> None:
    st = open_store(db_url, migrate=False)
    try:
        with st.db.atomic():
            st.db.execute_sql("CREATE TABLE videofetchd_schema (version INTEGER NOT NULL)")
            for version in (1, 2):
                for stmt in models.MIGRATIONS[version](st.backend):
                    st.db.execute_sql(stmt)
                st.db.execute_sql(st._sql("INSERT INTO videofetchd_schema (version) VALUES (?)"), [version])
        st.write("INSERT INTO videos (video_id) VALUES ('old')")
        assert st.migrate() == models.SCHEMA_VERSION
        assert rows(st)[0]["video_id"] == "old" and rows(st)[0]["identity"] is None
        assert st.migrate() == models.SCHEMA_VERSION  # nothing left to do the second time
    finally:
        st.close()


@pytest.mark.postgres
def test_a_row_locked_by_another_session_is_skipped_without_waiting_or_losing_a_token(pg_database: str) -> None:
    import psycopg2
    drop_schema(pg_database)
    st = open_store(pg_database)
    other = psycopg2.connect(pg_database)
    try:
        st.add([("v0", None), ("v1", None)])
        with other.cursor() as cur:  # e.g. a scan about to mark v0 done, inside its transaction
            cur.execute("SELECT id FROM videos WHERE video_id = 'v0' FOR UPDATE")
        limits = [Limits("a", per_hour=3600, burst=1)]
        assert claim(st, limits, limit=1).claimed == []  # v0 was chosen but is locked: skipped, no wait
        assert buckets(st) == {}  # its token was given back
        other.rollback()
        assert [c.video_id for c in claim(st, limits, limit=1).claimed] == ["v0"]
    finally:
        other.close()
        st.close()
