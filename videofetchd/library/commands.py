"""``videofetchctl scan``, ``import-archive`` and ``export-archive``: the library commands.

``ctl.py`` registers these parsers through ``add_scan_commands`` and dispatches to
``SCAN_COMMANDS``. Importing this module must stay cheap (argparse only): the scanner, the store
and the database driver are imported when a command runs. Errors are raised as
``VideofetchdError``; ``ctl.main`` turns them into a message and an exit code.

Archive format (yt-dlp ``--download-archive``): one ``<extractor> <id>`` per line, the extractor
being yt-dlp's extractor key lowercased (``youtube dQw4w9WgXcQ``). The extractor is part of a
video's identity: a line never matches a row whose extractor is known to be another (stored by
its download, or from its site; see ``queries.KnownRow.site``). Importing makes known
queued/failed rows and unknown IDs ``done`` with ``found_by = 'archive'`` and no file path: the
one kind of done row without a file, meaning "recorded as downloaded elsewhere, not verified".
A later scan that finds the file fills in its path; reconcile never marks such rows missing.
Exporting writes every done row; a row without a stored extractor (found by a filename or
pattern) gets the extractor of ``download.url_template``'s site (``youtube`` for the default),
overridable with ``--extractor``. Rows keyed by a URL hash (``url-...``) have no extractor ID
and are left out. The file is replaced atomically; ``-`` writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, TextIO

from ..config import Config
from ..errors import EXIT_OK, EXIT_USAGE, InvalidVideoId, VideofetchdError

ARCHIVE_BATCH = 1000


class ArchiveError(VideofetchdError):
    """An archive file cannot be written."""


def cmd_scan(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    dirs = list(args.dirs) or list(cfg.scan.directories)
    if not dirs:
        raise InvalidVideoId("scan: give directories, or set scan.directories in the configuration")
    from ..logs import setup_logging
    setup_logging(cfg.logging.level, verbose=args.verbose)
    from .walkproc import start_walk
    with start_walk(dirs, cfg.scan) as walk:  # it walks while the database layer loads
        from .report import ScanReport
        from .scan import ScanRootError, scan_into_store
        from ..queue.store import open_store

        def show(report: ScanReport) -> None:
            out.write(json.dumps(report.to_dict(), indent=1) + "\n" if args.json else report.summary() + "\n")

        store = open_store(cfg.database.url)
        meter = _ProgressLine(sys.stderr) if sys.stderr.isatty() else None
        try:
            report = scan_into_store(store, walk, dry_run=args.dry_run, reconcile=not args.no_reconcile,
                                     allow_empty=args.allow_empty, progress=meter.update if meter else None,
                                     url_template=cfg.download.url_template)
        except ScanRootError as exc:
            if meter:
                meter.clear()
            if exc.report is not None:  # files were recorded before the guard refused to reconcile
                show(exc.report)
            raise
        finally:
            if meter:
                meter.clear()
            store.close()
        show(report)
    return EXIT_OK


class _ProgressLine:
    """"scanning: N videos found" on a terminal, redrawn at most five times a second, erased at the end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.shown_at = stream, float("-inf")

    def update(self, found: int) -> None:
        now = time.monotonic()
        if now - self.shown_at >= 0.2:
            self.stream.write(f"\rscanning: {found} videos found so far")
            self.stream.flush()
            self.shown_at = now

    def clear(self) -> None:
        if self.shown_at != float("-inf"):
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown_at = float("-inf")


def extractor_for_site(url_template: str) -> str:
    """The lowercased yt-dlp extractor key an archive line needs for rows of ``url_template``'s site."""
    from ..queue.jobs import site_extractor
    return site_extractor(url_template.format(id="x"))


def parse_archive_line(line: str) -> tuple[str, str] | None:
    """(extractor, id) of one archive line; None for blank and comment lines; ValueError if malformed."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected '<extractor> <id>', got {text[:60]!r}")
    from .scan import is_valid_id
    if not is_valid_id(parts[1]):
        raise ValueError(f"invalid video ID {parts[1][:40]!r}")
    return parts[0].lower(), parts[1]


def cmd_import_archive(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    from .queries import record_archive
    from ..queue.store import open_store
    counts = dict.fromkeys(("imported", "created", "already_done", "left", "other_extractor", "refused"), 0)
    bad: list[str] = []

    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InvalidVideoId(f"cannot read {args.file}: {exc.strerror}") from None
    store = open_store(cfg.database.url)
    try:
        with stream:
            batch: dict[str, str] = {}
            for n, line in enumerate(stream, 1):
                try:
                    item = parse_archive_line(line)
                except ValueError as exc:
                    counts["refused"] += 1
                    if len(bad) < 20:
                        bad.append(f"{args.file}:{n}: {exc}")
                    continue
                if item is not None:
                    batch.setdefault(item[1], item[0])
                if len(batch) >= ARCHIVE_BATCH:
                    record_archive(store, batch, counts, cfg.download.url_template)
                    batch = {}
            if batch:
                record_archive(store, batch, counts, cfg.download.url_template)
    finally:
        store.close()
    for msg in bad:
        print(f"videofetchctl: refused {msg}", file=sys.stderr)
    if args.json:
        out.write(json.dumps(counts) + "\n")
    else:
        out.write(f"imported {counts['imported']} ({counts['created']} new), already done "
                  f"{counts['already_done']}, left alone {counts['left']}, another extractor's "
                  f"{counts['other_extractor']}, refused {counts['refused']}\n")
    return EXIT_USAGE if counts["refused"] else EXIT_OK


def cmd_export_archive(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    from .queries import iter_done_for_archive
    from .walker import is_valid_id
    from ..queue.store import open_store
    fallback = (args.extractor or extractor_for_site(cfg.download.url_template)).lower()
    written = skipped = 0
    target = None if args.file == "-" else os.path.abspath(args.file)
    tmp = None
    try:
        if target is None:
            sink: TextIO = sys.stdout
        else:  # written next to the target, then renamed: readers never see a half-written archive
            import tempfile
            fd, tmp = tempfile.mkstemp(prefix=".archive-", dir=os.path.dirname(target))
            sink = open(fd, "w", encoding="utf-8")
        store = open_store(cfg.database.url)
        try:
            for page in iter_done_for_archive(store):
                lines = []
                for vid, extractor in page:
                    if vid.startswith("url-") or not is_valid_id(vid):  # a URL hash, or written by hand
                        skipped += 1
                        continue
                    lines.append(f"{(extractor or fallback).lower()} {vid}\n")
                sink.write("".join(lines))
                written += len(lines)
        finally:
            store.close()
            if sink is not sys.stdout:
                sink.close()
        if tmp is not None and target is not None:
            from ..queue.rows import output_mode
            os.chmod(tmp, output_mode(target))  # the replaced file's mode, else the umask's
            os.replace(tmp, target)
            tmp = None
    except OSError as exc:
        raise ArchiveError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    message = {"written": written, "skipped": skipped, "file": args.file}
    where = sys.stderr if args.file == "-" else out
    text = f"exported {written} done rows to {args.file}" + (f", skipped {skipped} URL-only rows" if skipped else "")
    where.write((json.dumps(message) if args.json else text) + "\n")
    return EXIT_OK


def add_scan_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("scan", parents=[common], help="identify existing files and mark their rows done")
    s.add_argument("dirs", nargs="*", metavar="DIR", help="directories to scan (default: scan.directories)")
    s.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-reconcile", action="store_true",
                   help="do not mark done rows whose file is gone as missing")
    s.add_argument("--allow-empty", action="store_true",
                   help="accept an empty root even though done rows point into it (library really deleted)")
    s = sub.add_parser("import-archive", parents=[common],
                       help="mark the IDs of a yt-dlp --download-archive file done (no file path)")
    s.add_argument("file", metavar="FILE", help="archive file ('-' for stdin)")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("export-archive", parents=[common],
                       help="write every done row as a yt-dlp --download-archive file")
    s.add_argument("file", metavar="FILE", help="archive file to write ('-' for stdout)")
    s.add_argument("--extractor", metavar="NAME",
                   help="extractor for rows without one (default: from download.url_template's site)")
    s.add_argument("--json", action="store_true")


SCAN_COMMANDS: dict[str, Callable[[argparse.Namespace, Config, TextIO], int]] = {
    "scan": cmd_scan, "import-archive": cmd_import_archive, "export-archive": cmd_export_archive}
