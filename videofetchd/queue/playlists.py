"""A playlist row that becomes rows of its own (``download.expand_playlists``).

The worker child returns a playlist's entries and never touches the database; the recorder
hands them here, where settling the playlist's row and queueing its entries is one transaction:
a lost lease queues nothing, and a crash in between leaves either both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence

from .store import Store, db_errors

BATCH = 500  #: entries per INSERT statement


@db_errors
def expand(store: Store, row_id: int, token: str, entries: Sequence[tuple[str, str]], *,
           extractor: str | None) -> tuple[bool, int]:
    """The claimed playlist row becomes done (``found_by = 'playlist'``, no file) and its entries,
    (video_id, url) pairs, become queued rows, known IDs left as they are. Returns (lease kept,
    rows added)."""
    lock = {"lock_type": "IMMEDIATE"} if store.backend == "sqlite" else {}
    with store.db.atomic(**lock):
        cur = store.db.execute_sql(store._sql(
            "UPDATE videos SET status = 'done', found_by = 'playlist', file_path = NULL, file_size = NULL, "
            "extractor = ?, last_error = NULL, error_kind = NULL, lease_owner = NULL, claim_token = NULL, "
            f"lease_expires = NULL, finished_at = {store.now}, updated_at = {store.now} "
            "WHERE id = ? AND claim_token = ? AND status = 'running'"), [extractor, row_id, token])
        if cur.rowcount != 1:
            return False, 0
        added = 0
        for start in range(0, len(entries), BATCH):
            batch = entries[start:start + BATCH]
            marks = ", ".join("(?, ?)" for _ in batch)
            cur = store.db.execute_sql(store._sql(
                f"INSERT INTO videos (video_id, url) VALUES {marks} ON CONFLICT (video_id) DO NOTHING"),
                [v for pair in batch for v in pair])
            added += max(cur.rowcount, 0)
    return True, added
