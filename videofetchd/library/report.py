"""What a library scan saw and did: the report every scan front end prints.

A module of its own so that the walker (which attaches a partial report to a refused root) and
the scanner (which builds the report) both depend on it and not on each other. Pure data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ScanReport:
    """What a scan saw and did. ``marked_done`` counts every row that became done, ``created`` included."""

    roots: tuple[str, ...] = ()
    dry_run: bool = False
    files_seen: int = 0  #: regular files and other non-directories met by the walk
    videos_found: int = 0  #: complete video files with a recognised ID
    marked_done: int = 0  #: rows made done by this scan (queued/failed/missing rows, plus created)
    created: int = 0  #: of marked_done: IDs the database did not know
    already_done: int = 0  #: rows that were done already (path filled in or moved when needed)
    moved: int = 0  #: of already_done: the stored path was gone and now points at this file
    duplicates: int = 0  #: a second file for an ID whose stored file still exists (kept the stored one)
    skipped_running: int = 0  #: rows leased by a daemon right now: left alone
    other_extractor: int = 0  #: files whose ID a row has, but of another site's extractor: left alone
    partial: int = 0  #: .part/.ytdl/.temp/fragment/format-part files and empty video files
    unrecognized: int = 0  #: video files with no ID by any rule
    skipped_errors: int = 0  #: unreadable directories, undecodable names, broken sidecars, stat errors
    missing: int = 0  #: done rows whose file is gone (now 'missing', or would be in a dry run)
    requeued_missing: int = 0  #: of missing: put back in the queue (scan.requeue_missing)
    elapsed_s: float = 0.0  #: from the start of scan_into_store (the walk may have started a moment before)
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        verb = "would mark" if self.dry_run else "marked"
        text = (f"{self.files_seen} files, {self.videos_found} videos: {verb} {self.marked_done} done "
                f"({self.created} new), {self.already_done} already done")
        extras = [(self.moved, "moved"), (self.duplicates, "duplicates"),
                  (self.skipped_running, "running, left alone"),
                  (self.other_extractor, "of another extractor"), (self.partial, "partial"),
                  (self.unrecognized, "without an ID"), (self.skipped_errors, "skipped on errors"),
                  (self.missing, "missing"), (self.requeued_missing, "requeued")]
        shown = [f"{n} {what}" for n, what in extras if n]
        if shown:
            text += "; " + ", ".join(shown)
        return text + f" in {self.elapsed_s:.2f}s" + (" (dry run: nothing written)" if self.dry_run else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roots"], d["warnings"] = list(self.roots), list(self.warnings)
        return d
