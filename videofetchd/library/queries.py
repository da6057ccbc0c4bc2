"""Queries behind the library scanner and the download-archive commands (SQLite and PostgreSQL).

Every function takes an open ``Store`` and runs plain SQL through it; each batch is one
transaction. The rules for what a found file or an archive line does to a row live here; finding
files does not: this module must not walk directories, read sidecars or import yt-dlp (its one
file check is whether a done row's stored file still exists when a second copy turns up).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from ..queue.jobs import DoneFile, same_extractor, site_extractor
from ..queue.store import Store, db_errors

PAGE_ROWS = 1000  #: rows per statement and per reconcile page (7000 parameters: SQLite >= 3.32 allows 32766)
SAMPLE_IDS = 32  #: IDs of a batch looked up to guess whether it is a first import (see _insert_new)


class KnownRow(NamedTuple):
    status: str
    file_path: str | None
    file_size: int | None
    extractor: str | None
    url: str | None

    def site(self, video_id: str, url_template: str | None) -> str | None:
        """The row's extractor: the one its download or import stored, else a guess from its
        URL's (or the url_template's) site; None when unknown ("generic" says nothing either:
        yt-dlp's generic extractor hands pages on to others)."""
        if self.extractor:
            return self.extractor
        url = self.url or (url_template.replace("{id}", video_id) if url_template else None)
        guess = site_extractor(url) if url else None
        return None if guess == "generic" else guess


def _tx(store: Store) -> Any:
    """One write transaction; on SQLite taken IMMEDIATE so the read-then-write of a batch is atomic."""
    return store.db.atomic(lock_type="IMMEDIATE") if store.backend == "sqlite" else store.db.atomic()


def _marks(n: int, store: Store) -> str:
    return ", ".join([store.db.param] * n)


def _lookup(store: Store, video_ids: Sequence[str]) -> dict[str, KnownRow]:
    known: dict[str, KnownRow] = {}
    for start in range(0, len(video_ids), PAGE_ROWS):
        chunk = video_ids[start:start + PAGE_ROWS]
        cur = store.db.execute_sql(
            "SELECT video_id, status, file_path, file_size, extractor, url FROM videos WHERE video_id IN "
            f"({_marks(len(chunk), store)})", list(chunk))
        known.update((r[0], KnownRow(r[1], r[2], r[3], r[4], r[5])) for r in cur)
    return known


def _now(store: Store) -> float:
    return float(store.db.execute_sql(f"SELECT {store.now}").fetchone()[0])


# -- scan batches --------------------------------------------------------------------------------

#: set on every row a scan or an archive import makes done; "running" rows are never overwritten
_UPSERT_SETS = (
    "status = 'done', file_path = EXCLUDED.file_path, file_size = EXCLUDED.file_size, "
    "found_by = EXCLUDED.found_by, extractor = COALESCE(EXCLUDED.extractor, videos.extractor), "
    "ytdlp_id = COALESCE(EXCLUDED.ytdlp_id, videos.ytdlp_id), "
    "last_error = NULL, error_kind = NULL, finished_at = EXCLUDED.finished_at, "
    "updated_at = EXCLUDED.updated_at, lease_owner = NULL, claim_token = NULL, lease_expires = NULL")


def _insert(store: Store, chunk: Sequence[DoneFile], now: float, on_conflict: str) -> int:
    """One multi-row INSERT of done rows; returns how many rows it inserted or updated. yt-dlp's
    ID is stored only where it differs from the row's key (see ``models.schema_ytdlp_ids``)."""
    p = store.db.param
    values = ", ".join([f"({p}, 'done', {p}, {p}, {p}, {p}, {p}, {p}, {p})"] * len(chunk))
    params: list[Any] = []
    for r in chunk:
        params += r[:5]
        params += (r[5] if r[5] != r[0] else None, now, now)
    return int(store.db.execute_sql(
        "INSERT INTO videos (video_id, status, file_path, file_size, found_by, extractor, ytdlp_id, finished_at, "
        f"updated_at) VALUES {values} ON CONFLICT (video_id) {on_conflict}", params).rowcount)


def _upsert_done(store: Store, rows: Sequence[DoneFile], now: float, only_status: Sequence[str]) -> None:
    guard = ", ".join(f"'{s}'" for s in only_status)
    for start in range(0, len(rows), PAGE_ROWS):
        _insert(store, rows[start:start + PAGE_ROWS], now,
                f"DO UPDATE SET {_UPSERT_SETS} WHERE videos.status IN ({guard})")


def _apply(store: Store, decide: Callable[[Sequence[str], dict[str, KnownRow]], list[DoneFile]],
           rows: dict[str, DoneFile], *, dry_run: bool, only_status: Sequence[str]) -> int:
    """Write ``rows`` (video_id -> row to make done) in one transaction; returns how many were new IDs.

    IDs the database does not know are inserted as they are; for the others ``decide`` gets their
    current rows and picks what to write. The write is guarded by ``only_status`` (never
    ``running``), so a row claimed by a daemon on another host between the read and the write is
    left to that daemon. Rows are written in ``video_id`` order: neighbouring keys share index
    pages, which halves the cost of a large batch.
    """
    ids = sorted(rows)
    if dry_run:
        known = _lookup(store, ids)
        decide([i for i in ids if i in known], known)
        return len(ids) - len(known)
    with _tx(store):
        now = _now(store)
        created = 0
        if _probably_new(store, ids):  # a first import: skip the read, insert, fall back per chunk
            ids, created = _insert_new(store, [rows[i] for i in ids], now)
        known = _lookup(store, ids)
        created += len(ids) - len(known)
        writes = [rows[i] for i in ids if i not in known]
        writes += decide([i for i in ids if i in known], known)
        if writes:
            writes.sort(key=itemgetter(0))
            _upsert_done(store, writes, now, only_status)
    return created


def _probably_new(store: Store, ids: Sequence[str]) -> bool:
    """True when none of a sample of the batch's IDs is known: the batch is likely all new rows."""
    step = max(1, len(ids) // SAMPLE_IDS)
    return len(ids) >= PAGE_ROWS and not _lookup(store, ids[::step][:SAMPLE_IDS])


def _insert_new(store: Store, rows: Sequence[DoneFile], now: float) -> tuple[list[str], int]:
    """Insert ``rows`` as new done rows, one statement per chunk; (IDs left to decide, rows inserted).

    A chunk holding an ID the database knows is rolled back to its savepoint and handed back: it
    goes through the read-then-decide path like any other batch. Inserting blind is about twice
    as fast as reading first when (as on a first scan of a library) nearly every ID is new.
    """
    left: list[str] = []
    inserted = 0
    for start in range(0, len(rows), PAGE_ROWS):
        chunk = rows[start:start + PAGE_ROWS]
        with store.db.savepoint() as sp:
            n = _insert(store, chunk, now, "DO NOTHING")
            if n != len(chunk):
                sp.rollback(begin=False)
                left += (r[0] for r in chunk)
            else:
                inserted += n
    return left, inserted


def _owners(store: Store, files: Sequence[DoneFile]) -> tuple[dict[str, str], dict[str, list[tuple[str, str | None]]]]:
    """Rows that own some of ``files`` by other means than their key: {path: video_id} of the
    downloads that recorded those paths, {yt-dlp ID: [(video_id, extractor)]} of rows whose
    yt-dlp ID differs from their key. Both through partial indexes (few rows are in them)."""
    by_path: dict[str, str] = {}
    by_ytdlp: dict[str, list[tuple[str, str | None]]] = {}
    # a library that videofetchd never downloaded into has no row in either index: two probes
    # of an empty index spare a rescan ~190 lookups of 1,000 parameters per 100,000 files
    some = store.db.execute_sql("SELECT (SELECT 1 FROM videos WHERE found_by = 'download' AND file_path IS NOT NULL "
                                "LIMIT 1), (SELECT 1 FROM videos WHERE ytdlp_id IS NOT NULL LIMIT 1)").fetchone()
    paths = [f[1] for f in files if f[1]] if some[0] else []
    ytdlp_ids = sorted({f[5] for f in files if f[5]}) if some[1] else []
    for start in range(0, len(paths), PAGE_ROWS):
        chunk = paths[start:start + PAGE_ROWS]
        cur = store.db.execute_sql("SELECT video_id, file_path FROM videos WHERE found_by = 'download' AND "
                                   f"file_path IN ({_marks(len(chunk), store)})", chunk)
        by_path.update((r[1], r[0]) for r in cur)
    for start in range(0, len(ytdlp_ids), PAGE_ROWS):
        chunk = ytdlp_ids[start:start + PAGE_ROWS]
        cur = store.db.execute_sql("SELECT video_id, ytdlp_id, extractor FROM videos WHERE ytdlp_id IS NOT NULL "
                                   f"AND ytdlp_id IN ({_marks(len(chunk), store)}) ORDER BY id", chunk)
        for r in cur:
            by_ytdlp.setdefault(r[1], []).append((r[0], r[2]))
    return by_path, by_ytdlp


def _match_owners(store: Store, files: Sequence[DoneFile]) -> list[DoneFile]:
    """``files`` with each one's key replaced by the row that owns it, where that row's key is
    not the file's own ID: the download that recorded the file's path, else (when no row of the
    file's ID and extractor exists) the row whose recorded yt-dlp ID and extractor are the file's."""
    by_path, by_ytdlp = _owners(store, files)
    if not by_path and not by_ytdlp:
        return list(files)
    own = _lookup(store, sorted({f[0] for f in files if f[5] in by_ytdlp}))
    out = []
    for f in files:
        owner = by_path.get(f[1] or "")
        if owner is None and f[5] in by_ytdlp:
            row = own.get(f[0])
            if row is None or not same_extractor(f[4], row.extractor):
                owner = next((vid for vid, ext in by_ytdlp[f[5] or ""] if same_extractor(f[4], ext)), None)
        out.append(f if owner is None or owner == f[0] else (owner, *f[1:]))
    return out


@db_errors
def record_files(store: Store, files: Sequence[DoneFile], counts: dict[str, int], *, dry_run: bool = False,
                 url_template: str | None = None) -> int:
    """Make the rows of recognised files done; one transaction. Adds to ``counts``; returns how many
    rows now point at one of ``files`` (the reconcile short-cut).

    A file belongs to the row of its key (the queue ID its sidecar names, else yt-dlp's ID from
    the sidecar or the name), unless another row owns it: the download that recorded its path,
    or the row whose recorded yt-dlp ID and extractor it has (``_match_owners``); so a scan
    never adds a second row for a file a row already owns. A row whose extractor is known (stored,
    or from its URL's or ``url_template``'s site) is not matched by a file of another extractor
    (``other_extractor``): YouTube's 123 is not Vimeo's 123.
    Unknown ID: a new done row. queued/failed/missing: done with this file. running: left alone.
    done with this path: nothing (size refreshed if it changed). done with another path: if that
    file still exists this one is a duplicate and the row keeps its file, else the row moves here
    (also when it had no path, as archive imports have).
    """
    batch: dict[str, DoneFile] = {}
    for f in _match_owners(store, files):
        batch.setdefault(f[0], f)
    c = dict.fromkeys(("created", "marked_done", "skipped_running", "already_done", "moved", "matched",
                       "other_extractor"), 0)
    c["duplicates"] = len(files) - len(batch)

    def decide(ids: Sequence[str], known: dict[str, KnownRow]) -> list[DoneFile]:
        writes = []
        for vid in ids:
            f, row = batch[vid], known[vid]
            if row.status == "running":
                c["skipped_running"] += 1
                continue
            elif not same_extractor(f[4], row.site(vid, url_template)):
                c["other_extractor"] += 1
                continue
            elif row.status != "done":
                c["marked_done"] += 1
            elif row.file_path == f[1]:
                c["already_done"] += 1
                c["matched"] += 1
                if row.file_size != f[2]:
                    writes.append(f)
                continue
            elif row.file_path and os.path.exists(row.file_path):
                c["duplicates"] += 1
                continue
            else:
                c["already_done"] += 1
                c["moved"] += bool(row.file_path)
            c["matched"] += 1
            writes.append(f)
        return writes

    created = _apply(store, decide, batch, dry_run=dry_run, only_status=("queued", "failed", "missing", "done"))
    c["created"] = created
    c["marked_done"] += created
    c["matched"] += created
    matched = c.pop("matched")
    for key, n in c.items():
        counts[key] = counts.get(key, 0) + n
    return matched


@db_errors
def record_archive(store: Store, entries: dict[str, str], counts: dict[str, int],
                   url_template: str | None = None) -> None:
    """Make archive entries (video_id -> extractor) done without a file; one transaction.

    Unknown IDs and queued/failed rows become done with found_by 'archive'. Done rows stay as they
    are; running rows are being fetched; missing rows are a loss to look at, not to hide. A row
    whose extractor is known (``KnownRow.site``) and is not the line's is another site's video
    with the same ID: left alone (``other_extractor``).
    """
    def decide(ids: Sequence[str], known: dict[str, KnownRow]) -> list[DoneFile]:
        writes: list[DoneFile] = []
        for vid in ids:
            status = known[vid].status
            if not same_extractor(entries[vid], known[vid].site(vid, url_template)):
                counts["other_extractor"] = counts.get("other_extractor", 0) + 1
            elif status == "done":
                counts["already_done"] = counts.get("already_done", 0) + 1
            elif status not in ("queued", "failed"):
                counts["left"] = counts.get("left", 0) + 1
            else:
                counts["imported"] = counts.get("imported", 0) + 1
                writes.append(rows[vid])
        return writes

    rows: dict[str, DoneFile] = {vid: (vid, None, None, "archive", extractor, vid)
                                 for vid, extractor in entries.items()}
    created = _apply(store, decide, rows, dry_run=False, only_status=("queued", "failed"))
    counts["imported"] = counts.get("imported", 0) + created
    counts["created"] = counts.get("created", 0) + created


# -- reconcile -----------------------------------------------------------------------------------

@db_errors
def count_done_under(store: Store, prefix: str) -> int:
    """Done rows whose file_path starts with ``prefix`` (exact, case-sensitive: no LIKE)."""
    rows = store.read("SELECT count(*) FROM videos WHERE status = 'done' AND file_path IS NOT NULL "
                      "AND substr(file_path, 1, ?) = ?", [len(prefix), prefix])
    return int(rows[0][0])


@db_errors
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


@db_errors
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
    """Pages of (video_id, extractor) of every done row, by id; a playlist's row (its entries
    are rows of their own) is not a download and is left out."""
    after = 0
    while True:
        page = _archive_page(store, after)
        if not page:
            return
        yield [(str(r[1]), r[2]) for r in page]
        after = int(page[-1][0])


@db_errors
def _archive_page(store: Store, after_id: int) -> list[tuple[Any, ...]]:
    return store.read("SELECT id, video_id, extractor FROM videos WHERE status = 'done' AND id > ? "
                      "AND (found_by IS NULL OR found_by != 'playlist') ORDER BY id LIMIT ?", [after_id, PAGE_ROWS])
