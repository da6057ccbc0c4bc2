"""``videofetchctl scan``, ``import-archive`` and ``export-archive``: the library commands.

``ctl.py`` registers these parsers through ``add_scan_commands`` and dispatches to
``SCAN_COMMANDS``. Importing this module must stay cheap (argparse only): the scanner, the store
and the database driver are imported when a command runs. Errors are raised as
``VideofetchdError``; ``ctl.main`` turns them into a message and an exit code.

Archive format (yt-dlp ``--download-archive``): one ``<extractor> <id>`` per line, the extractor
being yt-dlp's extractor key lowercased (``youtube dQw4w9WgXcQ``). Importing makes known
queued/failed rows and unknown IDs ``done`` with ``found_by = 'archive'`` and no file path: the
one kind of done row without a file, meaning "recorded as downloaded elsewhere, not verified".
A later scan that finds the file fills in its path; reconcile never marks such rows missing.
Exporting writes every done row; a row without a stored extractor (found by a filename or
pattern) gets the extractor of ``download.url_template``'s site (``youtube`` for the default),
overridable with ``--extractor``. Rows keyed by a URL hash (``url-...``) have no extractor ID
and are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

from .config import Config
from .errors import EXIT_OK, EXIT_USAGE, InvalidVideoId

#: url_template host -> yt-dlp extractor key (lowercased) for sites whose key is not the host's name
_SITE_EXTRACTORS = {"youtube.com": "youtube", "youtu.be": "youtube", "m.youtube.com": "youtube",
                    "music.youtube.com": "youtube", "youtube-nocookie.com": "youtube"}
ARCHIVE_BATCH = 1000


def cmd_scan(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    dirs = list(args.dirs) or list(cfg.scan.directories)
    if not dirs:
        raise InvalidVideoId("scan: give directories, or set scan.directories in the configuration")
    from .logs import setup_logging
    setup_logging(cfg.logging.level, verbose=args.verbose)
    from .scan import scan_into_store
    from .store import open_store
    store = open_store(cfg.database.url)
    try:
        report = scan_into_store(store, dirs, cfg.scan, dry_run=args.dry_run, reconcile=not args.no_reconcile,
                                 allow_empty=args.allow_empty)
    finally:
        store.close()
    out.write(json.dumps(report.to_dict(), indent=1) + "\n" if args.json else report.summary() + "\n")
    return EXIT_OK


def extractor_for_site(url_template: str) -> str:
    """The lowercased yt-dlp extractor key an archive line needs for rows of ``url_template``'s site."""
    host = (urlsplit(url_template.format(id="x")).hostname or "").lower()
    host = host[4:] if host.startswith("www.") else host
    if host in _SITE_EXTRACTORS:
        return _SITE_EXTRACTORS[host]
    labels = host.split(".")
    return labels[-2] if len(labels) >= 2 else (host or "generic")


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
    from .library import DoneFile, KnownRow, apply_batch
    from .store import open_store
    counts = {"imported": 0, "created": 0, "already_done": 0, "left": 0, "refused": 0}
    bad: list[str] = []

    def decide(batch: dict[str, str], known: dict[str, KnownRow]) -> list[DoneFile]:
        writes = []
        for vid, extractor in batch.items():
            row = known.get(vid)
            if row is not None and row.status == "done":
                counts["already_done"] += 1
            elif row is not None and row.status not in ("queued", "failed"):
                counts["left"] += 1  # running (being fetched) or missing (a loss to look at, not hide)
            else:
                counts["imported"] += 1
                counts["created"] += row is None
                writes.append(DoneFile(vid, None, None, "archive", extractor))
        return writes

    def flush(batch: dict[str, str]) -> None:
        apply_batch(store, lambda known: decide(batch, known), list(batch), only_status=("queued", "failed"))

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
                    flush(batch)
                    batch = {}
            flush(batch)
    finally:
        store.close()
    for msg in bad:
        print(f"videofetchctl: refused {msg}", file=sys.stderr)
    if args.json:
        out.write(json.dumps(counts) + "\n")
    else:
        out.write(f"imported {counts['imported']} ({counts['created']} new), already done "
                  f"{counts['already_done']}, left alone {counts['left']}, refused {counts['refused']}\n")
    return EXIT_USAGE if counts["refused"] else EXIT_OK


def cmd_export_archive(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    from .library import iter_done_for_archive
    from .store import open_store
    fallback = (args.extractor or extractor_for_site(cfg.download.url_template)).lower()
    written = skipped = 0
    store = open_store(cfg.database.url)
    target = None if args.file == "-" else os.path.abspath(args.file)
    fd, tmp = (None, None) if target is None else \
        tempfile.mkstemp(prefix=".archive-", dir=os.path.dirname(target))
    try:
        sink: TextIO = sys.stdout if fd is None else open(fd, "w", encoding="utf-8")
        try:
            for page in iter_done_for_archive(store):
                lines = []
                for vid, extractor in page:
                    if vid.startswith("url-") and not extractor:
                        skipped += 1
                        continue
                    lines.append(f"{(extractor or fallback).lower()} {vid}\n")
                sink.write("".join(lines))
                written += len(lines)
        finally:
            if sink is not sys.stdout:
                sink.close()
        if tmp is not None and target is not None:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)  # readers never see a half-written archive
            tmp = None
    finally:
        store.close()
        if tmp is not None:
            os.unlink(tmp)
    message = {"written": written, "skipped": skipped, "file": args.file}
    where = sys.stderr if args.file == "-" else out
    where.write(json.dumps(message) + "\n" if args.json else
                f"exported {written} done rows to {args.file}" + (f", skipped {skipped} URL-only rows" if skipped
                                                                   else "") + "\n")
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
