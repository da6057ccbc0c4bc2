"""Queries behind the library scanner and the download-archive commands (SQLite and PostgreSQL).

Every function takes an open ``Store`` and runs plain SQL through it; batches run as one
transaction each. This module decides nothing about files: callers classify and pass rows in.
It must not walk directories, read sidecars or import yt-dlp.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import peewee

from .errors import DatabaseUnavailable
from .store import Store

T = TypeVar("T")
PAGE_ROWS = 1000  #: rows per reconcile page / per multi-row statement


@dataclass(frozen=True)
class KnownRow:
    status: str
    file_path: str | None
    file_size: int | None


@dataclass(frozen=True)
class DoneFile:
    """A file the scanner recognised: the row it makes ``done``."""

    video_id: str
    file_path: str | None
    file_size: int | None
    found_by: str
    extractor: str | None


def _db_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Driver failures become DatabaseUnavailable (and the broken connection is dropped)."""
    @functools.wraps(fn)
    def wrapper(store: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(store, *args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            store.drop_connection()
            raise DatabaseUnavailable(f"database error: {str(exc).strip() or type(exc).__name__}") from exc
    return wrapper


def _tx(store: Store) -> Any:
    """One write transaction; on SQLite taken IMMEDIATE so the read-then-write of a batch is atomic."""
    return store.db.atomic(lock_type="IMMEDIATE") if store.backend == "sqlite" else store.db.atomic()


def _marks(n: int, store: Store) -> str:
    return ", ".join([store.db.param] * n)


def _lookup(store: Store, video_ids: Sequence[str]) -> dict[str, KnownRow]:
    if not video_ids:
        return {}
    cur = store.db.execute_sql(
        f"SELECT video_id, status, file_path, file_size FROM videos WHERE video_id IN "
        f"({_marks(len(video_ids), store)})", list(video_ids))
    return {r[0]: KnownRow(r[1], r[2], r[3]) for r in cur.fetchall()}


def _now(store: Store) -> float:
    return float(store.db.execute_sql(f"SELECT {store.now}").fetchone()[0])


@_db_errors
def lookup(store: Store, video_ids: Sequence[str]) -> dict[str, KnownRow]:
    """The current state of the rows named (unknown IDs are absent from the result)."""
    return _lookup(store, video_ids)


# -- scan batches --------------------------------------------------------------------------------

#: set on every row a scan or an archive import makes done; "running" rows are never overwritten
_UPSERT_SETS = (
    "status = 'done', file_path = EXCLUDED.file_path, file_size = EXCLUDED.file_size, "
    "found_by = EXCLUDED.found_by, extractor = COALESCE(EXCLUDED.extractor, videos.extractor), "
    "last_error = NULL, error_kind = NULL, finished_at = EXCLUDED.finished_at, "
    "updated_at = EXCLUDED.updated_at, lease_owner = NULL, claim_token = NULL, lease_expires = NULL")


def _upsert_done(store: Store, rows: Sequence[DoneFile], now: float, only_status: Sequence[str]) -> None:
    guard = ", ".join(f"'{s}'" for s in only_status)
    p = store.db.param
    for start in range(0, len(rows), PAGE_ROWS):
        chunk = rows[start:start + PAGE_ROWS]
        values = ", ".join([f"({p}, 'done', {p}, {p}, {p}, {p}, {p}, {p})"] * len(chunk))
        params: list[Any] = []
        for r in chunk:
            params += [r.video_id, r.file_path, r.file_size, r.found_by, r.extractor, now, now]
        store.db.execute_sql(
            "INSERT INTO videos (video_id, status, file_path, file_size, found_by, extractor, "
            f"finished_at, updated_at) VALUES {values} ON CONFLICT (video_id) DO UPDATE SET "
            f"{_UPSERT_SETS} WHERE videos.status IN ({guard})", params)


@_db_errors
def apply_batch(store: Store, decide: Callable[[dict[str, KnownRow]], list[DoneFile]],
                video_ids: Sequence[str], *, dry_run: bool = False,
                only_status: Sequence[str] = ("queued", "failed", "missing", "done")) -> None:
    """Read the rows of ``video_ids``, let ``decide`` pick the rows to write, write them: one transaction.

    The write is additionally guarded by ``only_status`` (never ``running``), so a row claimed by a
    daemon on another host between the read and the write is left to that daemon.
    """
    if dry_run:
        decide(_lookup(store, video_ids))
        return
    with _tx(store):
        writes = decide(_lookup(store, video_ids))
        if writes:
            _upsert_done(store, writes, _now(store), only_status)


# -- reconcile -----------------------------------------------------------------------------------

@_db_errors
def count_done_under(store: Store, prefix: str) -> int:
    """Done rows whose file_path starts with ``prefix`` (exact, case-sensitive: no LIKE)."""
    rows = store.read("SELECT count(*) FROM videos WHERE status = 'done' AND file_path IS NOT NULL "
                      "AND substr(file_path, 1, ?) = ?", [len(prefix), prefix])
    return int(rows[0][0])


@_db_errors
def _done_page(store: Store, prefix: str, after_id: int) -> list[tuple[Any, ...]]:
    return store.read("SELECT id, file_path FROM videos WHERE status = 'done' AND file_path IS NOT NULL "
                      "AND substr(file_path, 1, ?) = ? AND id > ? ORDER BY id LIMIT ?",
                      [len(prefix), prefix, after_id, PAGE_ROWS])


def iter_done_under(store: Store, prefix: str) -> Iterator[list[tuple[int, str]]]:
    """Pages of (id, file_path) of done rows under ``prefix``, by id (keyset paging: flat memory)."""
    after = 0
    while True:
        page = _done_page(store, prefix, after)
        if not page:
            return
        yield [(int(r[0]), str(r[1])) for r in page]
        after = int(page[-1][0])


@_db_errors
def mark_missing(store: Store, rows: Sequence[tuple[int, str]], *, requeue: bool) -> int:
    """Done rows whose file is gone become ``missing`` (or ``queued`` again): one transaction.

    Each update matches the row's status and path, so a row a concurrent scan or download just
    moved elsewhere is not touched. Returns how many rows changed.
    """
    if not rows:
        return 0
    p, now = store.db.param, store.now
    if requeue:
        sets = (f"status = 'queued', attempts = 0, run_after = {now}, finished_at = NULL, "
                f"file_path = NULL, file_size = NULL, error_kind = 'missing', "
                f"last_error = 'file missing at last scan: ' || {p}")
    else:
        sets = f"status = 'missing', error_kind = 'missing', last_error = 'file missing at last scan: ' || {p}"
    sql = f"UPDATE videos SET {sets}, updated_at = {now} WHERE id = {p} AND status = 'done' AND file_path = {p}"
    changed = 0
    with _tx(store):
        for row_id, path in rows:
            changed += max(store.db.execute_sql(sql, [path, row_id, path]).rowcount, 0)
    return changed


# -- download archives ---------------------------------------------------------------------------

def iter_done_for_archive(store: Store) -> Iterator[list[tuple[str, str | None]]]:
    """Pages of (video_id, extractor) of every done row, by id."""
    after = 0
    while True:
        page = _archive_page(store, after)
        if not page:
            return
        yield [(str(r[1]), r[2]) for r in page]
        after = int(page[-1][0])


@_db_errors
def _archive_page(store: Store, after_id: int) -> list[tuple[Any, ...]]:
    return store.read("SELECT id, video_id, extractor FROM videos WHERE status = 'done' AND id > ? "
                      "ORDER BY id LIMIT ?", [after_id, PAGE_ROWS])
