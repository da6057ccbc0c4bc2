"""``videofetchctl list`` and ``export``: rows of the queue, streamed, for people and for programs.

Both read through ``queue.rows`` one row at a time and write as they go, so a million rows take
the memory of one page and the first line appears at once. ``list`` pages by keyset
(``--limit N --after VIDEO_ID``); on a terminal it shows one screenful, fitted to the width,
with a hint naming the next page's command. ``export`` writes the per-ID manifest as JSON lines
or CSV, to a file (replaced atomically) or to stdout. What comes from outside (errors, paths,
IDs) is escaped before it reaches a terminal; files and pipes get it unchanged.
``ctl.py`` registers the parsers and dispatches here; importing this module stays cheap (the
database layer is imported when a command runs). Errors are raised, never turned into exit codes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, Callable, TextIO

from ..config import Config
from ..errors import EXIT_OK, VideofetchdError
from ..text import printable
from .display import fit, terminal_size

#: the manifest's fields, in this order (DESIGN.md)
EXPORT_FIELDS = ("video_id", "status", "attempts", "error_kind", "last_error", "file_path", "file_size",
                 "found_by", "finished_at")
STATUSES = ("queued", "running", "done", "failed", "missing")
TEXT_COLUMNS = ("video_id", "status", "attempts", "last_error", "file_path", "lease_owner")


class ExportError(VideofetchdError):
    """The manifest cannot be written."""


def _rows(cfg: Config, columns: tuple[str, ...], args: argparse.Namespace,
          limit: int | None = None) -> Iterator[tuple[Any, ...]]:
    from ..queue.rows import iter_rows, row_id_of
    from ..queue.store import open_store
    store = open_store(cfg.database.url)
    try:
        after = row_id_of(store, args.after) if getattr(args, "after", None) else 0
        yield from iter_rows(store, columns, status=args.status, after_id=after, limit=limit)
    finally:
        store.close()


def cmd_list(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    from ..queue.rows import COLUMNS
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"list --limit: expected a number >= 0 (0: every row), got {args.limit}")
    tty = out.isatty()
    page = args.limit or None
    if args.limit is None and tty and not args.json:  # one screenful, and a hint for the next
        page = max(5, terminal_size(out)[1] - 3)
    if args.json:
        _json_array(_rows(cfg, COLUMNS, args, limit=page + 1 if page else None), COLUMNS, out, page)
        return EXIT_OK
    rows = _rows(cfg, TEXT_COLUMNS, args, limit=page + 1 if page else None)
    width = terminal_size(out)[0] - 1 if tty else None
    last = None
    for n, (video_id, status, attempts, last_error, file_path, lease_owner) in enumerate(rows):
        if page is not None and n == page:
            more = f" --status {args.status}" if args.status else ""
            print(f"(more rows: videofetchctl list{more} --after {printable(last)}; --limit 0 lists them all)",
                  file=sys.stderr)
            break
        where = f"on {lease_owner}" if status == "running" else file_path or last_error or ""
        # escaped even when piped: the lines are for people (a pager, a log), and IDs, paths and
        # errors come from outside; the machine-readable forms are --json and export
        line = printable(f"{video_id:<24} {status:<8} attempts {attempts:<2} {where}")
        out.write((fit(line, width) if tty else line) + "\n")
        last = video_id
    return EXIT_OK


def _json_array(rows: Iterator[tuple[Any, ...]], columns: tuple[str, ...], out: TextIO, page: int | None) -> None:
    """A JSON array written element by element: valid JSON, never held whole in memory."""
    tty = out.isatty()
    encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps would build one per row
    out.write("[")
    for n, row in enumerate(rows):
        if page is not None and n == page:
            break
        text = encode(dict(zip(columns, row)))
        out.write(("\n" if n == 0 else ",\n") + (printable(text) if tty else text))
    out.write("\n]\n")


def _iso(epoch: float | None) -> str | None:
    """ISO 8601 in UTC to the second (``2025-12-01T00:00:00Z``); None stays None."""
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def cmd_export(args: argparse.Namespace, cfg: Config, out: TextIO) -> int:
    fmt = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    target = None if args.file == "-" else os.path.abspath(args.file)
    tmp = None
    written = 0
    try:
        if target is None:
            sink: TextIO = out
        else:  # written next to the target, then renamed: a reader never sees half a manifest
            fd, tmp = tempfile.mkstemp(prefix=".export-", dir=os.path.dirname(target))
            sink = open(fd, "w", encoding="utf-8", newline="")
        try:
            written = _write(_rows(cfg, EXPORT_FIELDS, args), fmt, sink, escape=sink.isatty())
        finally:
            if sink is not out:
                sink.close()
        if tmp is not None and target is not None:
            from ..queue.rows import output_mode
            os.chmod(tmp, output_mode(target))
            os.replace(tmp, target)
            tmp = None
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise ExportError(f"cannot write {args.file}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    if target is not None:
        out.write(f"exported {written} rows to {printable(args.file)} ({fmt})\n")
    return EXIT_OK


def _write(rows: Iterator[tuple[Any, ...]], fmt: str, sink: TextIO, *, escape: bool) -> int:
    """Write the manifest; returns the number of rows. ``escape``: the sink is a terminal."""
    finished = EXPORT_FIELDS.index("finished_at")
    show: Callable[[Any], Any] = (lambda v: printable(v) if isinstance(v, str) else v) if escape else (lambda v: v)
    n = 0
    if fmt == "csv":
        writer = csv.writer(sink, lineterminator="\n")
        writer.writerow(EXPORT_FIELDS)
        for row in rows:
            values = list(row)
            values[finished] = _iso(values[finished])
            writer.writerow(["" if v is None else show(v) for v in values])
            n += 1
        return n
    encode = json.JSONEncoder(ensure_ascii=False).encode
    for row in rows:
        record = dict(zip(EXPORT_FIELDS, row))
        record["finished_at"] = _iso(record["finished_at"])
        line = encode(record)
        sink.write((printable(line) if escape else line) + "\n")
        n += 1
    return n


def add_list_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("list", parents=[common], help="rows of the queue, streamed (keyset pages)")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--limit", type=int, metavar="N", help="at most N rows (0: all; default: all, or a "
                   "screenful on a terminal)")
    s.add_argument("--after", metavar="ID", help="start after the row of this video ID (the next page)")
    s.add_argument("--json", action="store_true", help="a JSON array of every column")
    s = sub.add_parser("export", parents=[common], help="the per-ID manifest: one record per row, streamed")
    s.add_argument("file", nargs="?", default="-", metavar="FILE", help="where to write it (default '-': stdout)")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--format", choices=("jsonl", "csv"), help="default: csv for a FILE ending in .csv, else jsonl")


LIST_COMMANDS: dict[str, Callable[[argparse.Namespace, Config, TextIO], int]] = {
    "list": cmd_list, "export": cmd_export}
