"""The offline library scanner: mark the rows of video files that already exist done.

The walk (``walker.py``: directories, IDs, partial files) runs beside this code in a child
process (``walkproc.py``); this side writes what it finds in batches, one
transaction each (rules in ``library.record_files``). Afterwards done rows under the scanned
roots whose file is gone become ``missing`` (or ``queued`` with ``scan.requeue_missing``),
unless a root looks unmounted (missing, or empty while rows point into it).
This module never touches the network, never imports yt-dlp, never writes SQL itself (that is
``library.py``) and raises only ``VideofetchdError`` subclasses for conditions a user must see.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

from . import queries
from ..config import ScanConfig
from ..queue.store import Store
from .report import ScanReport
from .walker import MAX_WARNINGS, Found, ScanRootError, Tally, Walker, is_valid_id, show_path
from .walkproc import ScanError, Walk, WalkMode, dir_prefix, start_walk

__all__ = ["MAX_WARNINGS", "ScanError", "ScanReport", "ScanRootError", "Tally", "Walker", "is_valid_id",
           "scan_directories", "scan_into_store", "start_walk"]

log = logging.getLogger(__name__)

BATCH_FILES = 5000  #: recognised files per database transaction (sorted by ID, see library.record_files)


def _is_empty(root: str) -> bool:
    try:
        with os.scandir(root) as it:
            return next(it, None) is None
    except OSError as exc:
        raise ScanRootError(f"cannot read scan root {show_path(root)}: {exc.strerror or exc}") from None


def scan_into_store(store: Store, walk: Walk, *, dry_run: bool = False, reconcile: bool = True,
                    allow_empty: bool = False, progress: Callable[[int], None] | None = None,
                    url_template: str | None = None) -> ScanReport:
    """Record what ``walk`` (from ``walkproc.start_walk``) finds; see the module docstring for the
    rules. Closes the walk.

    Raises ScanRootError, before writing anything, when a root is empty while done rows point
    into it; and after recording the files found (but before marking anything missing) when a
    root held no video at all while done rows point into it. ``allow_empty`` lifts the
    emptiness guard (the library really was deleted). ``progress`` is called with the number of
    videos found so far after every chunk of files the walker hands over (from the calling thread).
    ``url_template`` (``download.url_template``) tells the site, and so the extractor, of rows
    without a URL of their own (see ``queries.record_files``).
    """
    started = time.monotonic()
    with walk:
        return _scan(store, walk, dry_run=dry_run, reconcile=reconcile, allow_empty=allow_empty, started=started,
                     progress=progress or (lambda n: None), url_template=url_template)


def scan_directories(store: Store, directories: Sequence[str | os.PathLike[str]], scan_cfg: ScanConfig, *,
                     dry_run: bool = False, reconcile: bool = True, allow_empty: bool = False,
                     walk_in: WalkMode = "auto", progress: Callable[[int], None] | None = None,
                     url_template: str | None = None) -> ScanReport:
    """Start a walk of ``directories`` and record it: ``scan_into_store`` for callers that have
    nothing to do while the walk starts. ``walk_in``: see ``walkproc.start_walk``."""
    walk = start_walk(directories, scan_cfg, walk_in)
    return scan_into_store(store, walk, dry_run=dry_run, reconcile=reconcile, allow_empty=allow_empty,
                           progress=progress, url_template=url_template)


def _scan(store: Store, walk: Walk, *, dry_run: bool, reconcile: bool, allow_empty: bool,
          started: float, progress: Callable[[int], None], url_template: str | None) -> ScanReport:
    roots = walk.roots
    done_under = {r: queries.count_done_under(store, dir_prefix(r)) for r in roots}
    if not allow_empty:
        for r in roots:
            if done_under[r] and _is_empty(r):
                raise ScanRootError(f"scan root {r} is empty but {done_under[r]} done rows have files there: "
                                    "is the disk mounted? nothing was scanned")
    db_tally = Tally()  # the walk has its own: no counter is shared between the two sides
    found = dict.fromkeys(roots, 0)
    matched = dict.fromkeys(roots, 0)  # done rows whose path is a file this walk saw
    refused: list[str] = []
    batch: list[Found] = []
    for root, chunk in walk:
        if chunk:
            batch += chunk
            found[root] += len(chunk)
            progress(sum(found.values()))
        while len(batch) >= BATCH_FILES or (batch and chunk is None):
            matched[root] += queries.record_files(store, batch[:BATCH_FILES], db_tally.counts, dry_run=dry_run,
                                                  url_template=url_template)
            del batch[:BATCH_FILES]
        if chunk is None and done_under[root] and not allow_empty and not found[root]:
            refused.append(root)
    db_tally.add("videos_found", sum(found.values()))
    if reconcile and not refused:
        for r in roots:
            if done_under[r]:  # else every done row under r was made by this scan, or just downloaded
                _reconcile(store, r, walk.cfg, db_tally, dry_run=dry_run, matched=matched[r])
    report = _report(roots, walk.tally, db_tally, dry_run, time.monotonic() - started)
    if refused:
        raise ScanRootError(
            f"scan root {', '.join(refused)} holds no video files but done rows have files there: "
            "is the right disk mounted? Files found were recorded; nothing was marked missing "
            "(use --allow-empty if the library really was emptied)", report)
    return report


def _reconcile(store: Store, root: str, cfg: ScanConfig, tally: Tally, *, dry_run: bool, matched: int) -> None:
    prefix = dir_prefix(root)
    if not dry_run and queries.count_done_under(store, prefix) <= matched:
        return  # every done row under the root is a file this walk just saw
    for page in queries.iter_done_under(store, prefix):
        gone = []
        for row_id, path in page:
            try:
                os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                gone.append((row_id, path))
            except OSError as exc:  # unknown (EACCES, EIO): not proof that the file is gone
                tally.error(f"cannot check {show_path(path)}: {exc.strerror or exc}")
        if not gone:
            continue
        n = len(gone) if dry_run else queries.mark_missing(store, gone, requeue=cfg.requeue_missing)
        tally.add("missing", n)
        if cfg.requeue_missing:
            tally.add("requeued_missing", n)
        action = "would be marked" if dry_run else "requeued" if cfg.requeue_missing else "marked missing"
        for _, path in gone[:3]:
            log.info("file gone, row %s: %s", action, show_path(path))


def _report(roots: list[str], walk: Tally, db: Tally, dry_run: bool, elapsed: float) -> ScanReport:
    c = {k: walk.counts.get(k, 0) + db.counts.get(k, 0) for k in {*walk.counts, *db.counts}}
    names = ("files_seen", "videos_found", "marked_done", "created", "already_done", "moved", "duplicates",
             "skipped_running", "other_extractor", "partial", "unrecognized", "skipped_errors", "missing",
             "requeued_missing")
    return ScanReport(roots=tuple(roots), dry_run=dry_run, elapsed_s=round(elapsed, 3),
                      warnings=tuple((walk.warnings + db.warnings)[:MAX_WARNINGS + 1]),
                      **{n: c.get(n, 0) for n in names})
