"""The database queue: every statement that changes a job's state lives here.

Claims are one atomic statement per backend (SQLite: ``UPDATE ... WHERE id IN (SELECT ... LIMIT
n) RETURNING``; PostgreSQL: the same through a ``FOR UPDATE SKIP LOCKED`` CTE), leases carry an
owner, a claim token and an expiry on the database clock, and finish/fail/retry match the claim
token, so a daemon that lost its lease cannot overwrite another's result.
Store methods are blocking; the daemon calls them from one dedicated thread.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import peewee

from . import models
from ..config import parse_database_url
from ..errors import ConfigError, DatabaseRefused, DatabaseUnavailable
from .dbfile import DbFile
from .jobs import throttle_delay

T = TypeVar("T")
_ADD_BATCH = 500


@dataclass(frozen=True)
class Claimed:
    row_id: int
    video_id: str
    url: str | None
    attempt: int
    claim_token: str
    identity: str | None = None  #: the egress identity it runs under (None: no identities configured)
    queue_wait_s: float = 0.0  #: how long the row had been eligible (run_after passed) when claimed


def db_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn the database layer's errors into the two a caller can act on.

    DatabaseUnavailable: the database cannot take this now (connection lost, read-only after a
    failover to a replica, serialization failure, deadlock, lock or statement timeout, disk full,
    a corrupt file); the connection is dropped so that the next call reconnects, and the caller
    holds its results back and probes again. DatabaseRefused: it refused a value (a constraint, a
    type); retrying the same write cannot help. A ProgrammingError (bad SQL, a missing table) is
    a bug and passes unchanged, to be logged with its traceback.
    """
    @functools.wraps(fn)
    def wrapper(store: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(store, *args, **kwargs)
        except peewee.ProgrammingError:
            store.drop_connection()  # a failed statement may leave the transaction aborted
            raise
        except (peewee.IntegrityError, peewee.DataError) as exc:
            store.drop_connection()
            raise DatabaseRefused(f"database refused a value: {_first_line(exc)}") from exc
        except (peewee.DatabaseError, peewee.InterfaceError) as exc:
            store.drop_connection()
            raise DatabaseUnavailable(f"database error: {_first_line(exc)}") from exc
    return wrapper


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return storable(text[0] if text else type(exc).__name__, 500)


def storable(text: str, limit: int = 2000) -> str:
    """``text`` as every backend stores it: no NUL (PostgreSQL refuses it in text), no lone
    surrogates (neither driver can encode them), at most ``limit`` characters. Error texts come
    from remote servers (an HTTP reason phrase), so nothing about them can be assumed."""
    if "\0" in text:
        text = text.replace("\0", "\\0")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:limit]


def make_database(url: str) -> tuple[peewee.Database, str]:
    """A peewee database for ``url`` and its backend name ("sqlite" or "postgres")."""
    try:
        backend, params = parse_database_url(url)
    except ValueError as exc:
        raise ConfigError(f"database.url: {exc}") from None
    if backend == "sqlite":
        path = params["path"]
        if path != ":memory:":
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailable(f"cannot create the directory of {path}: {exc.strerror}") from exc
            try:
                # created here, not by SQLite, so that it is never world-readable whoever creates
                # it (`videofetchctl add` from a shell's umask 022, say); SQLite gives its -wal
                # and -shm files the database file's mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640))
            except OSError:
                pass  # it exists (or cannot be made: SQLite's own error then says why)
        # busy_timeout stays below the supervisor's 10 s call timeout, so a locked database
        # fails the call instead of succeeding just after the caller gave up on it
        pragmas = {"journal_mode": "wal", "busy_timeout": 5000, "synchronous": "normal"}
        return peewee.SqliteDatabase(path, pragmas=pragmas, timeout=5), "sqlite"
    try:
        import psycopg2  # noqa: F401  (checked here so the error names the missing extra)
    except ImportError:
        raise ConfigError("database.url: PostgreSQL needs the 'postgres' extra "
                          "(pip install 'videofetchd[postgres]')") from None
    db = peewee.PostgresqlDatabase(
        params.pop("dbname"), **params, connect_timeout=5, application_name="videofetchd",
        # a dead server or network must surface as an error, not a call that hangs forever
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        # a lock held by another session must fail the call, not block the database thread
        options="-c statement_timeout=8000 -c lock_timeout=5000")
    return db, "postgres"


class Store:
    def __init__(self, db: peewee.Database, backend: str, url: str) -> None:
        self.db = db
        self.backend = backend
        self.url = url
        self.now = models.NOW_SQL[backend]
        self.file = DbFile(url, backend)  # which SQLite file we opened, to notice it vanish

    # -- plumbing ---------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.backend == "postgres" else sql

    def write(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """One statement in its own transaction; returns (RETURNING rows, rowcount)."""
        lock = {"lock_type": "IMMEDIATE"} if self.backend == "sqlite" else {}
        with self.db.atomic(**lock):
            cur = self.db.execute_sql(self._sql(sql), list(params))
            rows = cur.fetchall() if cur.description else []
        self.file.check()  # committed: but into the file at the path, or into a deleted one?
        return rows, cur.rowcount

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.db.execute_sql(self._sql(sql), list(params))
        return list(cur.fetchall())

    def drop_connection(self) -> None:
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - the connection is already broken; nothing to save
            pass

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    @db_errors
    def ping(self) -> None:
        """Can we write? A PostgreSQL replica answers reads, so a read alone would declare a
        database back that still refuses every result."""
        if self.backend == "postgres":
            if self.read("SELECT current_setting('transaction_read_only')")[0][0] == "on":
                raise DatabaseUnavailable("database is read-only (a standby after a failover?)")
        else:
            self.read("SELECT 1")

    @db_errors
    def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in place."""
        with self.db.atomic():
            if self.backend == "postgres":  # several daemons may start at once
                self.db.execute_sql("SELECT pg_advisory_xact_lock(7214661)")
            self.db.execute_sql("CREATE TABLE IF NOT EXISTS videofetchd_schema (version INTEGER NOT NULL)")
            row = self.db.execute_sql("SELECT max(version) FROM videofetchd_schema").fetchone()
            current = row[0] or 0
            if current > models.SCHEMA_VERSION:
                raise DatabaseUnavailable(f"database schema version {current} is newer than this "
                                          f"videofetchd (knows {models.SCHEMA_VERSION}); upgrade it")
            for version in range(current + 1, models.SCHEMA_VERSION + 1):
                for stmt in models.MIGRATIONS[version](self.backend):
                    self.db.execute_sql(stmt)
                self.db.execute_sql(self._sql("INSERT INTO videofetchd_schema (version) VALUES (?)"),
                                    [version])
        return models.SCHEMA_VERSION

    # -- feeding the queue -------------------------------------------------------------------

    @db_errors
    def add(self, items: Iterable[tuple[str, str | None]]) -> tuple[int, int]:
        """Queue (video_id, url) pairs; known IDs are left as they are. Returns (added, known)."""
        added = known = 0
        batch: list[tuple[str, str | None]] = []

        def flush() -> None:
            nonlocal added, known
            with self.db.atomic():
                query = models.Video.insert_many(batch, fields=[models.Video.video_id, models.Video.url])
                cur = self.db.execute(query.on_conflict_ignore())
                n = max(cur.rowcount, 0)
            added += n
            known += len(batch) - n
            batch.clear()

        seen: set[str] = set()
        for video_id, url in items:
            if video_id in seen:
                known += 1
                continue
            seen.add(video_id)
            batch.append((video_id, url))
            if len(batch) >= _ADD_BATCH:
                flush()
        if batch:
            flush()
        return added, known

    # -- claims and leases -------------------------------------------------------------------

    @db_errors
    def claim(self, owner: str, limit: int, lease_s: float, *, url_rows_only: bool = False) -> list[Claimed]:
        """Atomically move up to ``limit`` eligible queued rows to running under a new lease.

        ``url_rows_only`` restricts the claim to rows with their own URL (used while the
        url_template's site is paused by a throttling back-off).
        """
        if limit <= 0:
            return []
        token = uuid.uuid4().hex
        only = " AND url IS NOT NULL" if url_rows_only else ""
        pick = (f"SELECT id FROM videos WHERE status = 'queued' AND run_after <= {self.now}{only} "
                "ORDER BY run_after, id LIMIT ?")
        sets = (f"status = 'running', lease_owner = ?, claim_token = ?, lease_expires = {self.now} + ?, "
                f"attempts = attempts + 1, updated_at = {self.now}")
        if self.backend == "postgres":
            sql = (f"WITH c AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) "
                   f"UPDATE videos v SET {sets} FROM c WHERE v.id = c.id "
                   f"RETURNING v.id, v.video_id, v.url, v.attempts, {self.now} - v.run_after")
            params: list[Any] = [limit, owner, token, lease_s]
        else:
            sql = (f"UPDATE videos SET {sets} WHERE id IN ({pick}) "
                   f"RETURNING id, video_id, url, attempts, {self.now} - run_after")
            params = [owner, token, lease_s, limit]
        rows, _ = self.write(sql, params)
        return sorted((Claimed(r[0], r[1], r[2], r[3], token, queue_wait_s=max(0.0, float(r[4] or 0.0)))
                       for r in rows),
                      key=lambda c: c.row_id)

    @db_errors
    def renew(self, owner: str, lease_s: float) -> set[tuple[int, str]]:
        """Extend every lease ``owner`` holds in one statement; returns the (id, token) pairs kept."""
        rows, _ = self.write(
            f"UPDATE videos SET lease_expires = {self.now} + ? "
            "WHERE status = 'running' AND lease_owner = ? RETURNING id, claim_token", [lease_s, owner])
        return {(r[0], r[1]) for r in rows}

    def _settle(self, row_id: int, token: str, sets: str, params: Sequence[Any]) -> bool:
        _, n = self.write(
            f"UPDATE videos SET {sets}, lease_owner = NULL, claim_token = NULL, lease_expires = NULL, "
            f"updated_at = {self.now} WHERE id = ? AND claim_token = ? AND status = 'running'",
            [*params, row_id, token])
        return n == 1

    @db_errors
    def finish(self, row_id: int, token: str, *, file_path: str, file_size: int,
               extractor: str | None, ytdlp_id: str | None = None) -> bool:
        """Mark a claimed row done; False when the lease was lost (the result is then discarded).

        Idempotent: a finish that committed but whose answer was lost (timeout, dropped
        connection) is retried from the held-back results and must still count as kept.
        """
        if self._settle(row_id, token,
                        "status = 'done', file_path = ?, file_size = ?, extractor = ?, ytdlp_id = ?, "
                        f"found_by = 'download', last_error = NULL, error_kind = NULL, finished_at = {self.now}",
                        [storable(file_path, 4096), file_size, extractor and storable(extractor, 200),
                         ytdlp_id and storable(ytdlp_id, 200)]):
            return True
        rows = self.read("SELECT status, file_path FROM videos WHERE id = ?", [row_id])
        return bool(rows) and rows[0][0] == "done" and rows[0][1] == file_path

    @db_errors
    def download_owner(self, file_path: str, row_id: int) -> str | None:
        """The video ID of another row whose download recorded ``file_path``, if any."""
        rows = self.read("SELECT video_id FROM videos WHERE found_by = 'download' AND file_path = ? AND id <> ? "
                         "AND status = 'done' LIMIT 1", [file_path, row_id])
        return str(rows[0][0]) if rows else None

    @db_errors
    def fail(self, row_id: int, token: str, *, error: str, kind: str) -> bool:
        """Fail a claimed row for good."""
        return self._settle(row_id, token,
                            f"status = 'failed', last_error = ?, error_kind = ?, finished_at = {self.now}",
                            [storable(error), kind])

    @db_errors
    def retry_later(self, row_id: int, token: str, *, error: str, kind: str, delay_s: float,
                    max_attempts: int) -> bool:
        """Back to queued after ``delay_s``, or failed when the attempts are used up."""
        return self._settle(
            row_id, token,
            "status = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END, "
            f"run_after = {self.now} + ?, last_error = ?, error_kind = ?, "
            f"finished_at = CASE WHEN attempts >= ? THEN {self.now} ELSE NULL END",
            [max_attempts, delay_s, storable(error), kind, max_attempts])

    @db_errors
    def release(self, row_id: int, token: str, *, delay_s: float = 0.0, reason: str | None = None) -> bool:
        """Give a claimed row back without counting the attempt (daemon stop, site pause)."""
        return self._settle(row_id, token,
                            f"status = 'queued', attempts = attempts - 1, run_after = {self.now} + ?, "
                            "last_error = COALESCE(?, last_error)", [delay_s, reason and storable(reason)])

    @db_errors
    def requeue_expired(self, max_attempts: int) -> int:
        """Return rows whose lease expired (their daemon died or hung) to the queue."""
        sets = ("status = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END, "
                "last_error = 'lease of ' || COALESCE(lease_owner, '?') || ' expired', error_kind = 'crashed', "
                f"lease_owner = NULL, claim_token = NULL, lease_expires = NULL, run_after = {self.now}, "
                f"updated_at = {self.now}")
        where = f"status = 'running' AND lease_expires < {self.now}"
        if self.backend == "postgres":
            sql = (f"WITH c AS MATERIALIZED (SELECT id FROM videos WHERE {where} FOR UPDATE SKIP LOCKED) "
                   f"UPDATE videos v SET {sets} FROM c WHERE v.id = c.id")
        else:
            sql = f"UPDATE videos SET {sets} WHERE {where}"
        _, n = self.write(sql.replace("'?'", "'unknown'"), [max_attempts])
        return max(n, 0)

    @db_errors
    def requeue_owned(self, owners: Sequence[str], max_attempts: int) -> int:
        """Requeue rows leased by owners known to be dead (same node, process gone); a row that
        keeps taking its daemon down still fails after max_attempts."""
        if not owners:
            return 0
        marks = ", ".join("?" for _ in owners)
        _, n = self.write(
            "UPDATE videos SET status = CASE WHEN attempts >= ? THEN 'failed' ELSE 'queued' END, "
            "lease_owner = NULL, claim_token = NULL, "
            f"lease_expires = NULL, run_after = {self.now}, updated_at = {self.now}, "
            "last_error = 'previous daemon on this host died', error_kind = 'crashed' "
            f"WHERE status = 'running' AND lease_owner IN ({marks})", [max_attempts, *owners])
        return max(n, 0)

    @db_errors
    def lease_owners(self) -> list[str]:
        return [r[0] for r in self.read(
            "SELECT DISTINCT lease_owner FROM videos WHERE status = 'running' AND lease_owner IS NOT NULL")]

    # -- site back-off (shared by every daemon on the database) ------------------------------

    @db_errors
    def pause_site(self, site: str, base_s: float, reason: str) -> float:
        """Record a throttling answer from ``site``; returns the pause length in seconds."""
        rows = self.read(f"SELECT strikes, until > {self.now} FROM site_backoff WHERE site = ?", [site])
        strikes = (rows[0][0] + 1) if rows else 1
        if rows and rows[0][1]:  # already paused: another worker hit the same wall; keep the pause
            strikes = rows[0][0]
        pause = throttle_delay(strikes, base_s)
        if self.backend == "postgres":
            upsert = ("INSERT INTO site_backoff (site, until, strikes, reason) VALUES (?, {now} + ?, ?, ?) "
                      "ON CONFLICT (site) DO UPDATE SET until = EXCLUDED.until, strikes = EXCLUDED.strikes, "
                      "reason = EXCLUDED.reason")
        else:
            upsert = "INSERT OR REPLACE INTO site_backoff (site, until, strikes, reason) VALUES (?, {now} + ?, ?, ?)"
        self.write(upsert.format(now=self.now), [site, pause, strikes, storable(reason, 500)])
        return pause

    @db_errors
    def site_pauses(self) -> dict[str, float]:
        """Paused sites and the seconds left of each pause."""
        return {r[0]: float(r[1]) for r in self.read(
            f"SELECT site, until - {self.now} FROM site_backoff WHERE until > {self.now}")}

    @db_errors
    def clear_site(self, site: str) -> None:
        """A success from ``site`` ends its strike count (once its pause is over)."""
        self.write(f"DELETE FROM site_backoff WHERE site = ? AND until <= {self.now}", [site])

    # -- reading and operator actions -----------------------------------------------------------

    @db_errors
    def counts(self) -> dict[str, int]:
        """Rows per status, from the counters the triggers keep (see ``models.schema_counts``)."""
        result = {s: 0 for s in models.STATES}
        for status, n in self.read("SELECT status, sum(n) FROM videos_counts GROUP BY status"):
            result[status] = int(n)
        return result

    @db_errors
    def retry_failed(self, video_ids: Sequence[str] | None = None) -> int:
        """Put failed rows (all, or the named ones) back in the queue with fresh attempts."""
        sql = (f"UPDATE videos SET status = 'queued', attempts = 0, run_after = {self.now}, "
               f"updated_at = {self.now}, finished_at = NULL WHERE status IN ('failed', 'missing')")
        params: list[Any] = []
        if video_ids:
            sql += f" AND video_id IN ({', '.join('?' for _ in video_ids)})"
            params = list(video_ids)
        _, n = self.write(sql, params)
        if self.backend == "postgres" and n:
            self.write(f"SELECT pg_notify('{models.NOTIFY_CHANNEL}', '')")
        return max(n, 0)

    @db_errors
    def oldest_queued_age(self) -> float:
        """Seconds the longest-waiting eligible queued row has waited since it became eligible (0: none
        waits). One probe of the queued-rows index, so it stays cheap at any queue size."""
        rows = self.read(f"SELECT {self.now} - min(run_after) FROM videos WHERE status = 'queued'")
        return 0.0 if not rows or rows[0][0] is None else max(0.0, float(rows[0][0]))

    @db_errors
    def next_eligible_in(self) -> float | None:
        """Seconds until the earliest queued row becomes eligible (None: nothing queued)."""
        rows = self.read(f"SELECT min(run_after) - {self.now} FROM videos WHERE status = 'queued'")
        return None if not rows or rows[0][0] is None else max(0.0, float(rows[0][0]))


def open_store(url: str, *, migrate: bool = True) -> Store:
    """Connect to ``url`` and bring its schema up to date."""
    db, backend = make_database(url)
    models.db_proxy.initialize(db)
    store = Store(db, backend, url)
    try:
        db.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot open database {redact(url)}: {str(exc).strip()}") from exc
    if migrate:
        store.migrate()
    store.file.remember()
    return store


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@", 1)
    return url
