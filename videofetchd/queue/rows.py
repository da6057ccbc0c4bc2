"""Streaming reads of the ``videos`` table, for ``videofetchctl list`` and ``export``.

Rows come out one at a time, in ``id`` order, with constant memory at any table size and the
first row at once: on PostgreSQL through a server-side (named) cursor that the driver fetches a
page at a time; on SQLite as keyset pages (``WHERE id > last ORDER BY id LIMIT n``), each page
one short statement that walks the primary key, so a slow reader never holds a read transaction
open for long. Paging for the user is keyset as well (``--after VIDEO_ID`` starts after that row's
``id``), never OFFSET, which would read every skipped row again.
Reads only; every statement here is a SELECT.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import peewee

from ..errors import DatabaseUnavailable, InvalidVideoId
from .store import Store, db_errors

PAGE_ROWS = 2000  #: rows per SQLite page and per PostgreSQL cursor fetch
#: every column a user may ask for (list --json shows them all, export a fixed subset)
COLUMNS = ("video_id", "status", "attempts", "last_error", "file_path", "file_size", "url", "error_kind",
           "found_by", "lease_owner", "run_after", "updated_at", "finished_at")
STATUSES = ("queued", "running", "done", "failed", "missing")


@db_errors
def row_id_of(store: Store, video_id: str) -> int:
    """The ``id`` of the row keyed ``video_id``: where a page that ends with it continues."""
    rows = store.read("SELECT id FROM videos WHERE video_id = ?", [video_id])
    if not rows:
        raise InvalidVideoId(f"no row has the video ID {video_id[:80]!r}")
    return int(rows[0][0])


def iter_rows(store: Store, columns: Sequence[str], *, status: str | None = None, after_id: int = 0,
              limit: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Tuples of ``columns`` for the rows after ``after_id`` (of ``status``, at most ``limit``)."""
    bad = [c for c in columns if c not in COLUMNS]
    if bad or (status is not None and status not in STATUSES):
        raise ValueError(f"unknown column or status: {bad or status}")  # a caller's bug, not user input
    where = "id > ?" + (" AND status = ?" if status else "")
    params: list[Any] = [after_id, *([status] if status else [])]
    select = f"SELECT id, {', '.join(columns)} FROM videos WHERE {where} ORDER BY id"
    if store.backend == "postgres":
        yield from _cursor(store, select + (f" LIMIT {int(limit)}" if limit else ""), params)
        return
    left = limit if limit else None
    while left is None or left > 0:
        n = PAGE_ROWS if left is None else min(PAGE_ROWS, left)
        page = _page(store, f"{select} LIMIT {n}", params)
        for row in page:
            yield row[1:]
        if len(page) < n:
            return
        params[0] = page[-1][0]
        if left is not None:
            left -= len(page)


@db_errors
def _page(store: Store, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return store.read(sql, params)


def _cursor(store: Store, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows of a PostgreSQL server-side cursor, fetched PAGE_ROWS at a time.

    A named cursor lives in a transaction, and peewee keeps psycopg2 in autocommit mode (it sends
    BEGIN itself), so the connection leaves autocommit for the read and gets it back afterwards.
    """
    import psycopg2
    try:
        conn = store.db.connection()
        conn.autocommit = False
        try:
            with conn.cursor(name=f"videofetchd_rows_{uuid.uuid4().hex[:8]}") as cur:
                cur.itersize = PAGE_ROWS
                cur.execute(sql.replace("?", "%s"), list(params))
                for row in cur:
                    yield tuple(row[1:])
        finally:
            if not conn.closed:
                conn.rollback()  # read only: nothing to keep
                conn.autocommit = True
    except (psycopg2.OperationalError, psycopg2.InterfaceError, peewee.OperationalError,
            peewee.InterfaceError) as exc:
        store.drop_connection()
        raise DatabaseUnavailable(f"database error: {str(exc).strip() or type(exc).__name__}") from exc


def output_mode(target: str) -> int:
    """The mode of a file written to a temporary name and renamed over ``target`` (export,
    export-archive): the replaced file's, else what ``open()`` would have given under the user's
    umask. mkstemp makes 0600, and a fixed 0644 made a manifest world-readable under umask 077
    and took the group's bits off a shared one."""
    try:
        return os.stat(target).st_mode & 0o777
    except OSError:
        mask = os.umask(0)  # read it: there is no other way; the CLI runs one thread here
        os.umask(mask)
        return 0o666 & ~mask
