"""The database queue on real SQLite and real PostgreSQL (every test runs on both backends).

PostgreSQL: one fresh database per module from ``tests/pg.py`` (127.0.0.1:5432, user postgres),
emptied before each test and dropped afterwards; skipped when no server answers, except under
CI=true where it fails.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import wait_until
from pg import fresh_database
from videofetchd.queue import models, playlists
from videofetchd.errors import DatabaseUnavailable
from videofetchd.queue.jobs import validate_video_id
from videofetchd.queue.store import Store, open_store

OWNER = "test-node:1"
LEASE = 60.0


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """One scratch PostgreSQL database for this module (each test empties it first); skipped when
    no server answers, failed under CI=true (see tests/pg.py)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no videofetchd schema in it yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/queue.db"
    url: str = request.getfixturevalue("pg_database")
    raw_execute(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    st = open_store(db_url)
    try:
        yield st
    finally:
        st.close()


def row(store: Store, video_id: str) -> dict[str, Any]:
    cols = ["id", "video_id", "url", "status", "attempts", "run_after", "last_error", "error_kind", "file_path",
            "file_size", "found_by", "extractor", "lease_owner", "claim_token", "lease_expires", "finished_at"]
    found = store.read(f"SELECT {', '.join(cols)} FROM videos WHERE video_id = ?", [video_id])
    assert len(found) == 1, f"{video_id}: {len(found)} rows"
    return dict(zip(cols, found[0]))


def raw_execute(db_url: str, sql: str) -> None:
    """Run SQL through the plain driver, as another program feeding the queue would."""
    if db_url.startswith("sqlite:///"):
        con = sqlite3.connect(db_url[len("sqlite:///"):])
        with con:
            con.execute(sql)
        con.close()
    else:
        import psycopg2
        con = psycopg2.connect(db_url)
        with con, con.cursor() as cur:
            cur.execute(sql)
        con.close()


def claim_one(store: Store, lease: float = LEASE, owner: str = OWNER) -> Any:
    got = store.claim(owner, 1, lease)
    assert len(got) == 1, got
    return got[0]


# -- schema -------------------------------------------------------------------------------------

def test_migrate_is_idempotent_and_versioned(store: Store, db_url: str) -> None:
    store.add([("keep-me", None)])
    assert store.migrate() == models.SCHEMA_VERSION
    assert store.migrate() == models.SCHEMA_VERSION
    again = open_store(db_url)  # a second process/daemon starting on the same database
    again.close()
    versions = [r[0] for r in store.read("SELECT version FROM videofetchd_schema ORDER BY version")]
    assert versions == sorted(models.MIGRATIONS)
    assert row(store, "keep-me")["status"] == "queued"  # migrating again does not touch the data


def test_newer_schema_is_refused(store: Store) -> None:
    store.write("INSERT INTO videofetchd_schema (version) VALUES (?)", [models.SCHEMA_VERSION + 1])
    with pytest.raises(DatabaseUnavailable, match="newer"):
        store.migrate()


def test_plain_insert_is_enough(store: Store, db_url: str) -> None:
    raw_execute(db_url, "INSERT INTO videos (video_id) VALUES ('abc')")
    r = row(store, "abc")
    assert r["status"] == "queued" and r["attempts"] == 0 and r["url"] is None
    assert r["run_after"] is not None
    c = claim_one(store)
    assert (c.video_id, c.url, c.attempt) == ("abc", None, 1)
    assert row(store, "abc")["status"] == "running"


def test_status_is_checked_by_the_database(store: Store, db_url: str) -> None:
    with pytest.raises(Exception):
        raw_execute(db_url, "INSERT INTO videos (video_id, status) VALUES ('bad', 'bogus')")
    assert store.read("SELECT count(*) FROM videos")[0][0] == 0


@pytest.mark.postgres
@pytest.mark.parametrize("bad", ["\x1b[2Jowned", "has space", "a/b", "", ".hidden", "x" * 201, "ünï", "a=b",
                                 "new\nline"])
def test_video_ids_are_checked_by_postgresql(pg_database: str, bad: str) -> None:
    """What jobs.validate_video_id refuses, PostgreSQL refuses too (schema 3), for any writer.
    (SQLite cannot add a CHECK to an existing table: there the claim checks, see models.schema_v3.)"""
    raw_execute(pg_database, "DROP TABLE IF EXISTS videos, site_backoff, videofetchd_schema CASCADE")
    store = open_store(pg_database)
    db_url = pg_database
    quoted = bad.replace("'", "''")
    with pytest.raises(Exception, match="videos_video_id_valid"):
        raw_execute(db_url, f"INSERT INTO videos (video_id, url) VALUES ('{quoted}', 'https://example.org/')")
    store.add([("fine-id", None)])
    with pytest.raises(Exception, match="videos_video_id_valid"):
        raw_execute(db_url, f"UPDATE videos SET video_id = '{quoted}' WHERE video_id = 'fine-id'")
    store.close()


def test_every_id_the_validator_accepts_is_stored(store: Store, db_url: str) -> None:
    good = ["-8LkfJYfx2Q", "dQw4w9WgXcQ", "a.b:c@d~e+f_g-h", "9", "x" * 200, "url-0123456789abcdef"]
    for vid in good:
        assert validate_video_id(vid) == vid
        raw_execute(db_url, f"INSERT INTO videos (video_id) VALUES ('{vid}')")
    assert store.counts()["queued"] == len(good)


# -- feeding the queue --------------------------------------------------------------------------

def test_add_is_idempotent(store: Store) -> None:
    assert store.add([("a", None), ("b", "https://example.org/b")]) == (2, 0)
    assert store.add([("a", None), ("c", None), ("c", None)]) == (1, 2)
    assert store.read("SELECT count(*) FROM videos")[0][0] == 3
    assert row(store, "b")["url"] == "https://example.org/b"


def test_add_keeps_known_rows_as_they_are(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.finish(c.row_id, c.claim_token, file_path="/v/a.mp4", file_size=5, extractor="Generic")
    assert store.add([("a", "https://example.org/other")]) == (0, 1)
    r = row(store, "a")
    assert (r["status"], r["url"], r["file_path"]) == ("done", None, "/v/a.mp4")


def test_add_in_large_batches(store: Store) -> None:
    ids = [(f"v{i:05d}", None) for i in range(1234)]
    assert store.add(ids) == (1234, 0)
    assert store.add(ids[::-1]) == (0, 1234)
    assert store.counts()["queued"] == 1234


# -- claims -------------------------------------------------------------------------------------

def test_claim_sets_a_lease(store: Store) -> None:
    store.add([("a", None), ("b", None), ("c", None)])
    got = store.claim(OWNER, 2, LEASE)
    assert [c.video_id for c in got] == ["a", "b"]  # oldest first
    assert len({c.claim_token for c in got}) == 1
    r = row(store, "a")
    assert r["status"] == "running" and r["lease_owner"] == OWNER and r["claim_token"] == got[0].claim_token
    assert r["attempts"] == 1
    now = store.read(f"SELECT {store.now}")[0][0]
    assert now + LEASE - 5 < r["lease_expires"] <= now + LEASE + 1
    assert store.claim(OWNER, 0, LEASE) == []
    assert [c.video_id for c in store.claim(OWNER, 10, LEASE)] == ["c"]
    assert store.claim(OWNER, 10, LEASE) == []


def test_claim_url_rows_only(store: Store) -> None:
    store.add([("plain", None), ("own", "https://example.org/own")])
    got = store.claim(OWNER, 5, LEASE, url_rows_only=True)
    assert [(c.video_id, c.url) for c in got] == [("own", "https://example.org/own")]


_DRAIN = """
import json, sys, time, os
from videofetchd.queue.store import open_store
url, owner, go = sys.argv[1], sys.argv[2], sys.argv[3]
st = open_store(url, migrate=False)
st.ping()
open(go + "." + owner, "w").close()
while not os.path.exists(go):
    pass  # spin: every claimer starts within microseconds of the others
got = []
while True:
    batch = st.claim(owner, 5, 600)
    if not batch:
        break
    got += [[c.row_id, c.claim_token] for c in batch]
    time.sleep(0.002)  # let the others in between claims (a daemon does work between claims too)
st.close()
print(json.dumps(got))
"""


def test_concurrent_claims_never_share_a_row(store: Store, db_url: str, tmp_path: Path) -> None:
    n_rows, n_procs = 400, 4
    store.add([(f"row{i:04d}", None) for i in range(n_rows)])
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _DRAIN, db_url, f"p{i}", str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n_procs)]
    try:
        wait_until(lambda: all(Path(f"{go}.p{i}").exists() or procs[i].poll() is not None for i in range(n_procs)),
                   timeout=60, message="claimers did not start")
        go.touch()  # all four start claiming at once
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    claimed: list[tuple[int, str, int]] = []
    for i, (out, err) in enumerate(results):
        assert procs[i].returncode == 0, err
        claimed += [(rid, token, i) for rid, token in json.loads(out)]
    ids = [c[0] for c in claimed]
    assert len(ids) == n_rows and len(set(ids)) == n_rows, "a row was claimed twice or not at all"
    assert sum(1 for i in range(n_procs) if any(c[2] == i for c in claimed)) >= 2  # it really was concurrent
    db_rows = {r[0]: r[1:] for r in store.read("SELECT id, status, attempts, claim_token, lease_owner FROM videos")}
    for rid, token, proc in claimed:
        assert db_rows[rid] == ("running", 1, token, f"p{proc}")


# -- settling a claim ---------------------------------------------------------------------------

def test_finish(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.finish(c.row_id, c.claim_token, file_path="/lib/a [a].mp4", file_size=51200, extractor="Generic")
    r = row(store, "a")
    assert (r["status"], r["file_path"], r["file_size"], r["extractor"], r["found_by"]) == \
        ("done", "/lib/a [a].mp4", 51200, "Generic", "download")
    assert r["lease_owner"] is None and r["claim_token"] is None and r["lease_expires"] is None
    assert r["finished_at"] is not None
    assert not store.finish(c.row_id, c.claim_token, file_path="/x", file_size=1, extractor=None)  # only once
    assert row(store, "a")["file_path"] == "/lib/a [a].mp4"


def test_a_wrong_token_changes_nothing(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    before = row(store, "a")
    bad = "0" * 32
    assert not store.finish(c.row_id, bad, file_path="/x", file_size=1, extractor=None)
    assert not store.fail(c.row_id, bad, error="boom", kind="permanent")
    assert not store.retry_later(c.row_id, bad, error="boom", kind="transient", delay_s=0, max_attempts=5)
    assert not store.release(c.row_id, bad)
    assert row(store, "a") == before
    assert store.finish(c.row_id, c.claim_token, file_path="/ok", file_size=1, extractor=None)


def test_fail(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.fail(c.row_id, c.claim_token, error="HTTP Error 404: Not Found", kind="permanent")
    r = row(store, "a")
    assert (r["status"], r["last_error"], r["error_kind"], r["attempts"]) == \
        ("failed", "HTTP Error 404: Not Found", "permanent", 1)
    assert store.claim(OWNER, 5, LEASE) == []


def test_retry_later_until_max_attempts(store: Store) -> None:
    store.add([("a", None)])
    for attempt in (1, 2):
        c = claim_one(store)
        assert c.attempt == attempt
        assert store.retry_later(c.row_id, c.claim_token, error=f"try {attempt}", kind="transient",
                                 delay_s=0, max_attempts=3)
        r = row(store, "a")
        assert (r["status"], r["attempts"], r["last_error"]) == ("queued", attempt, f"try {attempt}")
        assert r["claim_token"] is None and r["finished_at"] is None
    c = claim_one(store)
    assert store.retry_later(c.row_id, c.claim_token, error="try 3", kind="transient", delay_s=0, max_attempts=3)
    r = row(store, "a")
    assert (r["status"], r["attempts"], r["last_error"]) == ("failed", 3, "try 3")
    assert r["finished_at"] is not None
    assert store.claim(OWNER, 5, LEASE) == []


def test_retry_later_waits_its_delay(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.retry_later(c.row_id, c.claim_token, error="e", kind="transient", delay_s=3600, max_attempts=5)
    assert store.claim(OWNER, 5, LEASE) == []
    left = store.next_eligible_in()
    assert left is not None and 3500 < left <= 3600


def test_next_eligible_in(store: Store) -> None:
    assert store.next_eligible_in() is None
    store.add([("a", None)])
    assert store.next_eligible_in() == 0.0


def test_release_does_not_count_the_attempt(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.release(c.row_id, c.claim_token, reason="daemon stopped")
    r = row(store, "a")
    assert (r["status"], r["attempts"], r["last_error"], r["claim_token"]) == ("queued", 0, "daemon stopped", None)
    assert claim_one(store).attempt == 1


def test_release_with_delay(store: Store) -> None:
    store.add([("a", None)])
    c = claim_one(store)
    assert store.release(c.row_id, c.claim_token, delay_s=600)
    assert store.claim(OWNER, 1, LEASE) == []


# -- leases -------------------------------------------------------------------------------------

def test_expired_lease_is_requeued(store: Store) -> None:
    store.add([("a", None), ("b", None)])
    old = claim_one(store, lease=1.0, owner="dead-node:1")
    live = claim_one(store, lease=LEASE)
    assert store.requeue_expired(5) == 0  # not yet
    wait_until(lambda: store.requeue_expired(5) == 1, timeout=15, message="lease did not expire")
    r = row(store, "a")
    assert (r["status"], r["attempts"], r["error_kind"]) == ("queued", 1, "crashed")
    assert "dead-node:1" in r["last_error"] and "expired" in r["last_error"]
    assert r["lease_owner"] is None and r["claim_token"] is None
    assert row(store, "b")["status"] == "running"  # the live lease is untouched
    # the daemon that lost the lease cannot record its late result; the next claimer can
    assert not store.finish(old.row_id, old.claim_token, file_path="/late", file_size=1, extractor=None)
    again = claim_one(store)
    assert again.row_id == old.row_id and again.claim_token != old.claim_token and again.attempt == 2
    assert store.finish(again.row_id, again.claim_token, file_path="/ok", file_size=1, extractor=None)
    assert store.finish(live.row_id, live.claim_token, file_path="/b", file_size=1, extractor=None)


def test_expired_lease_on_last_attempt_fails(store: Store) -> None:
    store.add([("a", None)])
    claim_one(store, lease=-1.0)  # already expired
    assert store.requeue_expired(1) == 1
    assert row(store, "a")["status"] == "failed"


def test_renew_keeps_leases(store: Store) -> None:
    store.add([("a", None), ("b", None), ("c", None)])
    mine = store.claim(OWNER, 2, -1.0)  # expired already: only a renewal saves them
    other = claim_one(store, lease=-1.0, owner="other:2")
    kept = store.renew(OWNER, LEASE)
    assert kept == {(c.row_id, c.claim_token) for c in mine}
    assert store.requeue_expired(5) == 1  # only the other owner's row
    assert row(store, "c")["status"] == "queued" and other.video_id == "c"
    assert {row(store, v)["status"] for v in ("a", "b")} == {"running"}


def test_requeue_owned(store: Store) -> None:
    store.add([("a", None), ("b", None)])
    claim_one(store, owner="host:111")
    claim_one(store, owner="host:222")
    assert sorted(store.lease_owners()) == ["host:111", "host:222"]
    assert store.requeue_owned(["host:111"], 5) == 1
    assert row(store, "a")["status"] == "queued" and row(store, "b")["status"] == "running"
    assert store.requeue_owned([], 5) == 0


# -- operator actions ---------------------------------------------------------------------------

def test_retry_failed(store: Store) -> None:
    store.add([("a", None), ("b", None), ("c", None)])
    for _ in range(2):
        c = claim_one(store)
        store.fail(c.row_id, c.claim_token, error="gone", kind="permanent")
    c = claim_one(store)
    store.finish(c.row_id, c.claim_token, file_path="/c", file_size=1, extractor=None)
    assert store.retry_failed(["a", "c", "unknown"]) == 1
    assert (row(store, "a")["status"], row(store, "a")["attempts"]) == ("queued", 0)
    assert row(store, "b")["status"] == "failed"
    assert store.retry_failed() == 1
    assert row(store, "b")["status"] == "queued"
    assert row(store, "c")["status"] == "done"  # done rows are never re-queued by retry
    assert store.retry_failed() == 0
    assert [c.video_id for c in store.claim(OWNER, 5, LEASE)] == ["a", "b"]


def test_counts_after_a_failure(store: Store) -> None:
    """(Listing rows is queue/rows.py's, tested in tests/integration/test_listing.py.)"""
    store.add([("a", None), ("b", "https://example.org/b"), ("c", None)])
    c = claim_one(store)
    store.fail(c.row_id, c.claim_token, error="HTTP Error 404", kind="permanent")
    assert store.counts() == {"queued": 2, "running": 0, "done": 0, "failed": 1, "missing": 0}
    assert row(store, "a")["last_error"] == "HTTP Error 404"


def true_counts(store: Store) -> dict[str, int]:
    result = dict.fromkeys(models.STATES, 0)
    result.update({s: int(n) for s, n in store.read("SELECT status, count(*) FROM videos GROUP BY status")})
    return result


def test_counts_follow_every_kind_of_write(store: Store, db_url: str) -> None:
    """The counters the triggers keep match a full count after claims, results, retries, scans'
    bulk inserts, and rows another program inserts, updates or deletes behind our back."""
    store.add([(f"v{i}", None) for i in range(50)])
    assert store.counts() == true_counts(store) and store.counts()["queued"] == 50
    claimed = store.claim(OWNER, 8, LEASE)
    for c in claimed[:3]:
        store.finish(c.row_id, c.claim_token, file_path=f"/{c.video_id}", file_size=1, extractor=None)
    store.fail(claimed[3].row_id, claimed[3].claim_token, error="gone", kind="permanent")
    store.retry_later(claimed[4].row_id, claimed[4].claim_token, error="x", kind="transient", delay_s=0,
                      max_attempts=1)  # attempts used up: failed
    store.release(claimed[5].row_id, claimed[5].claim_token)
    store.renew(OWNER, LEASE)  # updates rows without changing their status
    assert store.counts() == true_counts(store)
    assert store.counts()["running"] == 2 and store.counts()["failed"] == 2 and store.counts()["done"] == 3
    raw_execute(db_url, "INSERT INTO videos (video_id) VALUES ('ext1'), ('ext2')")
    raw_execute(db_url, "UPDATE videos SET status = 'missing' WHERE video_id IN ('v0', 'v1', 'v2')")
    raw_execute(db_url, "DELETE FROM videos WHERE video_id IN ('v40', 'v41', 'v42')")
    assert store.retry_failed() == 5  # failed and missing rows back to queued, in one statement
    assert store.counts() == true_counts(store)
    assert sum(store.counts().values()) == 50 + 2 - 3


@pytest.mark.postgres
def test_counts_stay_exact_under_concurrent_writers(pg_database: str) -> None:
    """Four connections claim and settle at once (several daemons on one PostgreSQL): the sharded
    counters lose no update and never deadlock."""
    raw_execute(pg_database, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    stores = [open_store(pg_database) for _ in range(4)]
    try:
        stores[0].add([(f"c{i}", None) for i in range(400)])
        errors: list[BaseException] = []

        def work(st: Store, n: int) -> None:
            try:
                while claimed := st.claim(f"node:{n}", 3, LEASE):
                    for i, c in enumerate(claimed):
                        if i % 3 == 0:
                            st.fail(c.row_id, c.claim_token, error="x", kind="permanent")
                        else:
                            st.finish(c.row_id, c.claim_token, file_path=f"/{c.video_id}", file_size=1,
                                      extractor=None)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(st, n)) for n, st in enumerate(stores)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not errors, errors
        counts = stores[0].counts()
        assert counts == true_counts(stores[0]) and counts["queued"] == 0 and counts["done"] + counts["failed"] == 400
    finally:
        for st in stores:
            st.close()


def test_counts_of_a_database_from_before_the_counters(db_url: str) -> None:
    """Migrating a filled version-2 database seeds the counters from a full count."""
    st = open_store(db_url, migrate=False)
    try:
        for version in (1, 2):
            for stmt in models.MIGRATIONS[version](st.backend):
                st.db.execute_sql(stmt)
        st.db.execute_sql("CREATE TABLE videofetchd_schema (version INTEGER NOT NULL)")
        st.db.execute_sql("INSERT INTO videofetchd_schema (version) VALUES (1), (2)")
        st.db.execute_sql("INSERT INTO videos (video_id, status) VALUES ('a', 'done'), ('b', 'done'), ('c', 'failed')")
        st.migrate()
        assert st.counts() == {**dict.fromkeys(models.STATES, 0), "done": 2, "failed": 1}
        st.migrate()  # idempotent: nothing counted twice
        assert st.counts() == true_counts(st)
    finally:
        st.close()


# -- site back-off ------------------------------------------------------------------------------

def test_site_backoff(store: Store) -> None:
    assert store.site_pauses() == {}
    assert store.pause_site("youtube.com", 60.0, "HTTP Error 429") == 60.0
    pauses = store.site_pauses()
    assert set(pauses) == {"youtube.com"} and 55 < pauses["youtube.com"] <= 60
    # a second worker hitting the same wall while paused keeps the pause, no extra strike
    assert store.pause_site("youtube.com", 60.0, "HTTP Error 429") == 60.0
    store.clear_site("youtube.com")  # a success elsewhere does not end a pause early
    assert "youtube.com" in store.site_pauses()
    assert store.pause_site("vimeo.com", 5.0, "429") == 5.0
    assert set(store.site_pauses()) == {"youtube.com", "vimeo.com"}


def test_site_backoff_strikes_double_then_clear(store: Store) -> None:
    assert store.pause_site("example.org", 0.3, "429") == pytest.approx(0.3)
    wait_until(lambda: "example.org" not in store.site_pauses(), timeout=10, message="pause did not end")
    assert store.pause_site("example.org", 0.3, "429") == pytest.approx(0.6)  # it repeats: longer
    wait_until(lambda: "example.org" not in store.site_pauses(), timeout=10, message="pause did not end")
    store.clear_site("example.org")  # success after the pause: the strike count starts over
    assert store.read("SELECT count(*) FROM site_backoff")[0][0] == 0
    assert store.pause_site("example.org", 0.3, "429") == pytest.approx(0.3)


def test_expand_playlist_queues_the_entries_and_marks_the_row_done(store: Store) -> None:
    store.add([("list1", "https://example.org/list"), ("known1", None)])
    c = claim_one(store)
    entries = [("known1", "https://example.org/k"), ("e1", "https://example.org/1"), ("e2", "https://example.org/2")]
    assert playlists.expand(store, c.row_id, c.claim_token, entries, extractor="Generic") == (True, 2)
    r = row(store, "list1")
    assert (r["status"], r["found_by"], r["file_path"], r["extractor"], r["lease_owner"]) == \
        ("done", "playlist", None, "Generic", None)
    assert row(store, "e1")["status"] == "queued" and row(store, "e2")["url"] == "https://example.org/2"
    assert row(store, "known1")["url"] is None  # a known row is left as it is


def test_expand_playlist_with_a_lost_lease_queues_nothing(store: Store) -> None:
    store.add([("list2", "https://example.org/list")])
    c = claim_one(store)
    assert playlists.expand(store, c.row_id, "stolen-token", [("e9", "https://example.org/9")],
                            extractor=None) == (False, 0)
    assert store.counts()["queued"] == 0 and row(store, "list2")["status"] == "running"
