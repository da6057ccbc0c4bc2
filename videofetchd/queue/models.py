"""The ``videos`` table: job states, schema DDL per backend, schema version.

Every column but ``video_id`` has a database-side default, so any program can feed the queue with
``INSERT INTO videos (video_id) VALUES ('abc')``. Times are stored as epoch seconds (a double) in
both backends, which keeps lease arithmetic identical on SQLite and PostgreSQL and lets the
database clock, not the hosts' clocks, decide when a lease expires.
This module declares; it does not connect (``db_proxy`` is bound by ``store.open_store``).
"""

from __future__ import annotations

import enum

import peewee

SCHEMA_VERSION = 6
NOTIFY_CHANNEL = "videofetchd_queue"

db_proxy = peewee.DatabaseProxy()


class JobState(str, enum.Enum):
    """A row's place in its life cycle.

    queued -> running -> done | failed; running -> queued when a lease expires, a child hangs
    or dies (attempt counted) or the daemon stops (attempt not counted); done -> missing when a
    scan finds its file gone (-> queued again if ``scan.requeue_missing``).
    """

    QUEUED = "queued"  #: waiting; eligible once run_after has passed
    RUNNING = "running"  #: claimed by lease_owner until lease_expires
    DONE = "done"  #: the final file exists with the expected size; file_path is set
    FAILED = "failed"  #: permanent error, or max_attempts used up; last_error says why
    MISSING = "missing"  #: was done, but a scan no longer finds its file


STATES = tuple(s.value for s in JobState)


class Video(peewee.Model):
    """Read-side model; writes that need atomicity are single SQL statements in ``store``."""

    id = peewee.BigAutoField()
    video_id = peewee.TextField(unique=True)
    url = peewee.TextField(null=True)
    status = peewee.TextField(default=JobState.QUEUED.value)
    attempts = peewee.IntegerField(default=0)
    run_after = peewee.DoubleField()
    last_error = peewee.TextField(null=True)
    error_kind = peewee.TextField(null=True)
    file_path = peewee.TextField(null=True)
    file_size = peewee.BigIntegerField(null=True)
    found_by = peewee.TextField(null=True)
    extractor = peewee.TextField(null=True)
    ytdlp_id = peewee.TextField(null=True)
    lease_owner = peewee.TextField(null=True)
    claim_token = peewee.TextField(null=True)
    lease_expires = peewee.DoubleField(null=True)
    identity = peewee.TextField(null=True)
    created_at = peewee.DoubleField()
    updated_at = peewee.DoubleField()
    finished_at = peewee.DoubleField(null=True)

    class Meta:
        database = db_proxy
        table_name = "videos"


#: the database clock as epoch seconds, per backend
NOW_SQL = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgres": "(extract(epoch from clock_timestamp())::double precision)",
}

#: an OR chain, not ``status IN (...)``: SQLite probes a temporary index for an IN list on every
#: inserted row, which made a scan's bulk insert a third slower. Same meaning, so no new schema
#: version: tables created before keep the IN form and work the same.
_STATUS_CHECK = "CHECK ({})".format(" OR ".join(f"status = '{s}'" for s in STATES))


def schema_v1(backend: str) -> list[str]:
    """DDL of schema version 1 for ``backend`` ("sqlite" or "postgres")."""
    now = NOW_SQL[backend]
    pk = "INTEGER PRIMARY KEY AUTOINCREMENT" if backend == "sqlite" else "BIGSERIAL PRIMARY KEY"
    dbl = "REAL" if backend == "sqlite" else "DOUBLE PRECISION"
    stmts = [
        f"""CREATE TABLE IF NOT EXISTS videos (
            id {pk},
            video_id TEXT NOT NULL UNIQUE,
            url TEXT,
            status TEXT NOT NULL DEFAULT 'queued' {_STATUS_CHECK},
            attempts INTEGER NOT NULL DEFAULT 0,
            run_after {dbl} NOT NULL DEFAULT {now},
            last_error TEXT,
            error_kind TEXT,
            file_path TEXT,
            file_size BIGINT,
            found_by TEXT,
            extractor TEXT,
            lease_owner TEXT,
            claim_token TEXT,
            lease_expires {dbl},
            created_at {dbl} NOT NULL DEFAULT {now},
            updated_at {dbl} NOT NULL DEFAULT {now},
            finished_at {dbl}
        )""",
        # claims walk this index in order and stop after LIMIT rows: O(log n) on any queue size
        "CREATE INDEX IF NOT EXISTS videos_claim ON videos (status, run_after, id)",
        "CREATE INDEX IF NOT EXISTS videos_lease ON videos (status, lease_expires)",
        f"""CREATE TABLE IF NOT EXISTS site_backoff (
            site TEXT PRIMARY KEY,
            until {dbl} NOT NULL,
            strikes INTEGER NOT NULL DEFAULT 1,
            reason TEXT
        )""",
    ]
    if backend == "postgres":
        # any insert, from videofetchctl or another program, wakes idle daemons at once
        stmts += [
            f"""CREATE OR REPLACE FUNCTION videofetchd_notify() RETURNS trigger AS $$
            BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$ LANGUAGE plpgsql""",
            "DROP TRIGGER IF EXISTS videos_notify ON videos",
            """CREATE TRIGGER videos_notify AFTER INSERT ON videos
            FOR EACH STATEMENT EXECUTE FUNCTION videofetchd_notify()""",
        ]
    return stmts


def schema_v2(backend: str) -> list[str]:
    """Partial indexes: only queued rows are in the claim index and only running rows in the
    lease index, so the many done rows (a scanned library, years of downloads) cost those
    indexes nothing, neither on insert nor on claim."""
    return [
        "DROP INDEX IF EXISTS videos_claim",
        "DROP INDEX IF EXISTS videos_lease",
        "CREATE INDEX IF NOT EXISTS videos_queued ON videos (run_after, id) WHERE status = 'queued'",
        "CREATE INDEX IF NOT EXISTS videos_running ON videos (lease_expires) WHERE status = 'running'",
    ]


def schema_identities(backend: str) -> list[str]:
    """Egress identities: which identity a row ran under, and one budget row per identity and
    site (token bucket, throttling pause, jobs started), shared by every daemon on the database.
    An index of queued rows with their own URL keeps a claim cheap while the url_template's
    site has no budget left (it then skips the template rows)."""
    now = NOW_SQL[backend]
    dbl = "REAL" if backend == "sqlite" else "DOUBLE PRECISION"
    return [
        "ALTER TABLE videos ADD COLUMN identity TEXT",
        f"""CREATE TABLE IF NOT EXISTS identity_budget (
            identity TEXT NOT NULL,
            site TEXT NOT NULL,
            tokens {dbl} NOT NULL DEFAULT 0,
            updated {dbl} NOT NULL DEFAULT {now},
            paused_until {dbl} NOT NULL DEFAULT 0,
            strikes INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            started BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (identity, site)
        )""",
        "CREATE INDEX IF NOT EXISTS videos_queued_url ON videos (run_after, id) "
        "WHERE status = 'queued' AND url IS NOT NULL",
    ]


COUNT_SHARDS = 64  #: PostgreSQL counter rows per status (see schema_counts)


def schema_counts(backend: str) -> list[str]:
    """``videos_counts``: the number of rows in each status, kept by triggers on ``videos``.

    ``videofetchctl status``, STATUS= and the metrics ask for the counts every few seconds; a
    ``GROUP BY status`` over the whole table took 0.7 s on SQLite and 0.17 s on PostgreSQL at
    1,000,000 rows, and grows with the library. Triggers keep the counts for every writer (other
    daemons, ``videofetchctl``, a program that INSERTs directly), so reading them is one look at a
    handful of rows.

    SQLite has one writer at a time, so one row per status does. On PostgreSQL several daemons
    write at once: each statement adds its net change per status (a statement-level trigger with
    transition tables, so a claim of 8 rows is one update) to one of ``COUNT_SHARDS`` rows chosen
    by its backend pid, so that concurrent claims seldom wait on the same counter row. The table is
    seeded from a full count once, inside the migration, with writers locked out.
    """
    states = ", ".join(f"('{s}')" for s in STATES)
    if backend == "sqlite":
        return [
            "CREATE TABLE IF NOT EXISTS videos_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
            "DELETE FROM videos_counts",
            f"INSERT INTO videos_counts (status, n) SELECT s.column1, 0 FROM (VALUES {states}) s",
            "UPDATE videos_counts SET n = (SELECT count(*) FROM videos v WHERE v.status = videos_counts.status)",
            """CREATE TRIGGER IF NOT EXISTS videos_count_insert AFTER INSERT ON videos
            BEGIN UPDATE videos_counts SET n = n + 1 WHERE status = NEW.status; END""",
            """CREATE TRIGGER IF NOT EXISTS videos_count_update AFTER UPDATE OF status ON videos
            WHEN OLD.status <> NEW.status BEGIN
                UPDATE videos_counts SET n = n - 1 WHERE status = OLD.status;
                UPDATE videos_counts SET n = n + 1 WHERE status = NEW.status;
            END""",
            """CREATE TRIGGER IF NOT EXISTS videos_count_delete AFTER DELETE ON videos
            BEGIN UPDATE videos_counts SET n = n - 1 WHERE status = OLD.status; END""",
        ]
    # ORDER BY status: every writer locks counter rows in one order, so two writers whose pids
    # share a shard wait for each other instead of deadlocking
    upsert = ("INSERT INTO videos_counts (status, shard, n) "
              f"SELECT status, mod(pg_backend_pid(), {COUNT_SHARDS}), d FROM ({{}}) AS delta "
              "WHERE d <> 0 ORDER BY status ON CONFLICT (status, shard) DO UPDATE SET n = videos_counts.n + EXCLUDED.n")
    changes = {
        "insert": "SELECT status, count(*) AS d FROM new_rows GROUP BY status",
        "delete": "SELECT status, -count(*) AS d FROM old_rows GROUP BY status",
        "update": ("SELECT status, sum(d) AS d FROM (SELECT status, 1 AS d FROM new_rows "
                   "UNION ALL SELECT status, -1 FROM old_rows) AS c GROUP BY status"),
    }
    refs = {"insert": "NEW TABLE AS new_rows", "delete": "OLD TABLE AS old_rows",
            "update": "OLD TABLE AS old_rows NEW TABLE AS new_rows"}
    stmts = [
        "LOCK TABLE videos IN SHARE ROW EXCLUSIVE MODE",  # no write between the seed count and the triggers
        """CREATE TABLE IF NOT EXISTS videos_counts (status TEXT NOT NULL, shard INTEGER NOT NULL,
            n BIGINT NOT NULL, PRIMARY KEY (status, shard))""",
        "DELETE FROM videos_counts",
        "INSERT INTO videos_counts (status, shard, n) SELECT status, 0, count(*) FROM videos GROUP BY status",
    ]
    for event, body in changes.items():
        stmts += [
            f"""CREATE OR REPLACE FUNCTION videofetchd_count_{event}() RETURNS trigger AS $$
            BEGIN {upsert.format(body)}; RETURN NULL; END $$ LANGUAGE plpgsql""",
            f"DROP TRIGGER IF EXISTS videos_count_{event} ON videos",
            f"""CREATE TRIGGER videos_count_{event} AFTER {event.upper()} ON videos
            REFERENCING {refs[event]} FOR EACH STATEMENT EXECUTE FUNCTION videofetchd_count_{event}()""",
        ]
    return stmts


#: what ``jobs.ID_RE`` and ``MAX_ID_LENGTH`` accept, as PostgreSQL says it; a video ID is shown
#: by status and list and becomes part of file names, so no writer should store another
_PG_ID_CHECK = "CHECK (video_id ~ '^[A-Za-z0-9_-][A-Za-z0-9_.:@~+-]*$' AND length(video_id) <= 200)"


def schema_video_ids(backend: str) -> list[str]:
    """Video IDs checked by the database itself, where it can: a PostgreSQL CHECK constraint,
    ``NOT VALID`` so that rows written before stay readable (they fail at their claim instead).

    SQLite cannot add a constraint to an existing table, and the triggers that could stand in
    for one cost a first scan's bulk insert 15 % more CPU (measured: 0.1 s per 93,000 rows) for
    a check any writer of the file may drop; there the check at every claim is the guard."""
    if backend != "postgres":
        return []
    return ["ALTER TABLE videos DROP CONSTRAINT IF EXISTS videos_video_id_valid",
            f"ALTER TABLE videos ADD CONSTRAINT videos_video_id_valid {_PG_ID_CHECK} NOT VALID"]


def schema_ytdlp_ids(backend: str) -> list[str]:
    """One row per video: ``ytdlp_id`` is yt-dlp's own ID of a row's video, which differs from the
    queue's key for many sites (an HTML embed's ``<page>-1``, an HLS URL's ``master``). A download
    stores it with ``extractor``; a scan only where it differs from the row's ``video_id``, so
    that the partial index holds the few rows whose files a scan could not match by key, and a
    first scan's bulk insert of a large library costs that index nothing. A second partial index
    finds a download's row by its file path (a scan matches files to rows by it)."""
    return [
        "ALTER TABLE videos ADD COLUMN ytdlp_id TEXT",
        "CREATE INDEX IF NOT EXISTS videos_ytdlp_id ON videos (ytdlp_id) WHERE ytdlp_id IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS videos_download_path ON videos (file_path) WHERE found_by = 'download'",
    ]


#: version -> DDL builder; a release that changes the schema appends one entry. Each version runs
#: once, in one transaction with its version row (DDL is transactional on both backends).
MIGRATIONS = {1: schema_v1, 2: schema_v2, 3: schema_identities, 4: schema_counts, 5: schema_video_ids,
              6: schema_ytdlp_ids}
