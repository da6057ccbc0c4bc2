"""The offline library scanner: find video files that already exist and mark their rows done.

Walks directories with ``os.scandir`` and an explicit stack (no recursion limit, one directory
listing in memory at a time), follows no symlinked directories and guards against bind-mount
loops by (st_dev, st_ino). An ID comes from, in order: the ``.info.json`` sidecar next to the file
(same stem), the yt-dlp style ``[ID]`` at the end of the file stem, the configured
``scan.id_pattern``. Partial files (``.part``, ``.ytdl``, ``.temp``, ``.part-FragN``, ``.fNNN``
format parts) and empty files are never done. The walk runs in a helper thread and hands
batches over a bounded queue; the calling thread writes each batch in one transaction (rules in
``library.record_files``), so readdir/stat and SQLite overlap. Afterwards done rows under the
scanned roots whose file is gone become ``missing`` (or ``queued`` with ``scan.requeue_missing``),
unless a root looks unmounted (missing, or empty while rows point into it).
This module never touches the network, never imports yt-dlp, never writes SQL itself (that is
``library.py``) and raises only ``VideofetchdError`` subclasses for conditions a user must see.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import library
from .config import ScanConfig
from .errors import VideofetchdError
from .jobs import ID_RE, MAX_ID_LENGTH
from .library import DoneFile
from .store import Store

log = logging.getLogger(__name__)

BATCH_FILES = 5000  #: recognised files per database transaction (sorted by ID, see library.record_files)
MAX_WARNINGS = 50  #: warnings kept in the report and logged one by one; the rest are only counted
MAX_SIDECAR_BYTES = 64 * 1024 * 1024
SIDECAR_SUFFIX = ".info.json"
PARTIAL_EXTS = frozenset({"part", "ytdl", "temp"})
_FORMAT_PART = re.compile(r"\.f[0-9]+(?:-[0-9]+)?$")  # yt-dlp's per-format pieces before a merge
#: bracket tags that are obviously not IDs: resolutions, codecs (all at most 8 characters)
_NOT_AN_ID = re.compile(r"(?i)[0-9]{3,4}p(?:[0-9]{2,3})?|4k|8k|hdr|sdr|x26[45]|h\.?26[45]|hevc|av1|vp9")


class ScanRootError(VideofetchdError):
    """A scan root is missing, not a directory, or looks unmounted while rows say files are there."""

    def __init__(self, message: str, report: ScanReport | None = None) -> None:
        super().__init__(message)
        self.report = report


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
    partial: int = 0  #: .part/.ytdl/.temp/fragment/format-part files and empty video files
    unrecognized: int = 0  #: video files with no ID by any rule
    skipped_errors: int = 0  #: unreadable directories, undecodable names, broken sidecars, stat errors
    missing: int = 0  #: done rows whose file is gone (now 'missing', or would be in a dry run)
    requeued_missing: int = 0  #: of missing: put back in the queue (scan.requeue_missing)
    elapsed_s: float = 0.0
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        verb = "would mark" if self.dry_run else "marked"
        text = (f"{self.files_seen} files, {self.videos_found} videos: {verb} {self.marked_done} done "
                f"({self.created} new), {self.already_done} already done")
        extras = [(self.moved, "moved"), (self.duplicates, "duplicates"),
                  (self.skipped_running, "running, left alone"), (self.partial, "partial"),
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


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def error(self, message: str) -> None:
        self.add("skipped_errors")
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
            log.warning("%s", message)
        elif len(self.warnings) == MAX_WARNINGS:
            self.warnings.append("further warnings omitted (see skipped_errors)")
            log.warning("further scan warnings are not logged one by one")


#: (video_id, path, size, found_by, extractor): the row a complete video file makes done
Found = DoneFile


def is_valid_id(text: str) -> bool:
    """Exactly what ``jobs.validate_video_id`` accepts, without building an exception per miss."""
    return len(text) <= MAX_ID_LENGTH and text not in (".", "..") and ID_RE.fullmatch(text) is not None


def _utf8(name: str) -> bool:
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogateescape'd bytes: not valid UTF-8, cannot be stored
        return False
    return True


class Walker:
    """Stream the recognised videos under some roots; counts and warnings go to ``tally``.

    Each directory is opened once and listed with ``os.scandir(fd)``, so the stat of every file
    is an ``fstatat`` relative to that directory (no path walk per file, immune to renames above).
    """

    def __init__(self, cfg: ScanConfig, tally: _Tally) -> None:
        self.exts = frozenset(e.lower().lstrip(".") for e in cfg.extensions)
        self.pattern = re.compile(cfg.id_pattern) if cfg.id_pattern else None
        self.tally = tally
        self.visited: set[tuple[int, int]] = set()

    def walk(self, root: str, batch_size: int = 1000) -> Iterator[list[Found]]:
        """Lists of at least ``batch_size`` recognised files (the last one may be shorter or empty)."""
        try:
            st = os.stat(root)
        except OSError as exc:
            raise ScanRootError(f"cannot read scan root {_show(root)}: {exc.strerror or exc}") from None
        self.visited.add((st.st_dev, st.st_ino))
        stack = [root]
        out: list[Found] = []
        while stack:
            directory = stack.pop()
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                self.tally.error(f"cannot read directory {_show(directory)}: {exc.strerror or exc}")
                continue
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                self._directory(directory, fd, entries, stack, out)
            except OSError as exc:
                self.tally.error(f"cannot read directory {_show(directory)}: {exc.strerror or exc}")
            finally:
                os.close(fd)
            if len(out) >= batch_size:
                yield out
                out = []
        yield out

    def _directory(self, directory: str, fd: int, entries: list[os.DirEntry[str]],
                   stack: list[str], out: list[Found]) -> None:
        # the hot loop: about 100,000 files per second of one core, so locals and few calls
        tally, exts, id_ok, not_id = self.tally, self.exts, ID_RE.fullmatch, _NOT_AN_ID.fullmatch
        base = directory if directory.endswith("/") else directory + "/"
        sidecars = {e.name[:-10] for e in entries if e.name.endswith(SIDECAR_SUFFIX)}
        files = partial = 0
        add = out.append
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._push_dir(base + name, entry, stack)
                    continue
            except OSError as exc:
                tally.error(f"cannot stat {_show(base + name)}: {exc.strerror or exc}")
                continue
            files += 1
            dot = name.rfind(".")
            ext = name[dot + 1:].lower() if dot > 0 else ""
            if ext not in exts:
                if ext in PARTIAL_EXTS or ".part-Frag" in name:
                    partial += 1
                continue
            stem = name[:dot]
            if stem.endswith(".temp") or (".f" in stem and _FORMAT_PART.search(stem)):
                partial += 1
                continue
            if not (name.isascii() or _utf8(name)):
                tally.error(f"skipped {_show(base + name)}: file name is not valid UTF-8")
                continue
            try:
                st = entry.stat()  # fstatat(fd, name): follows a symlinked file
            except OSError as exc:
                tally.error(f"cannot stat {_show(base + name)}: {exc.strerror or exc}")
                continue
            size = st.st_size
            if st.st_mode & 0o170000 != 0o100000:  # not a regular file (S_ISREG, inlined)
                continue
            if size == 0:
                partial += 1
                continue
            if stem[-1:] == "]" and stem not in sidecars:  # the common case: "Title [ID].ext"
                start = stem.rfind("[") + 1
                candidate = stem[start:-1]
                if (start and len(candidate) <= MAX_ID_LENGTH and id_ok(candidate) and candidate not in (".", "..")
                        and (len(candidate) > 8 or not not_id(candidate))):
                    add((candidate, base + name, size, "filename", None))
                    continue
            found = self._identify(fd, base, name, stem, stem in sidecars)
            if found is None:
                tally.add("unrecognized")
                continue
            add((found[0], base + name, size, found[1], found[2]))
        tally.add("files_seen", files)
        tally.add("partial", partial)

    def _push_dir(self, path: str, entry: os.DirEntry[str], stack: list[str]) -> None:
        if not _utf8(entry.name):
            self.tally.error(f"skipped directory {_show(path)}: name is not valid UTF-8")
            return
        st = entry.stat(follow_symlinks=False)
        key = (st.st_dev, st.st_ino)
        if key in self.visited:  # a bind mount of an ancestor, or a root listed twice
            self.tally.error(f"skipped directory {_show(path)}: already visited (loop)")
            return
        self.visited.add(key)
        stack.append(path)

    def _identify(self, fd: int, base: str, name: str, stem: str,
                  has_sidecar: bool) -> tuple[str, str, str | None] | None:
        if has_sidecar:
            found = self._from_sidecar(fd, base, stem + SIDECAR_SUFFIX)
            if found is not None:
                return found[0], "info.json", found[1]
        if stem.endswith("]"):
            start = stem.rfind("[")
            if start >= 0:
                candidate = stem[start + 1:-1]
                if is_valid_id(candidate) and not _NOT_AN_ID.fullmatch(candidate):
                    return candidate, "filename", None
        if self.pattern is not None:
            m = self.pattern.search(name)
            if m and m.group("id") and is_valid_id(m.group("id")):
                return m.group("id"), "pattern", None
        return None

    def _from_sidecar(self, fd: int, base: str, name: str) -> tuple[str, str | None] | None:
        try:
            with open(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd), "rb") as fh:
                if os.fstat(fh.fileno()).st_size > MAX_SIDECAR_BYTES:
                    raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
                data = fh.read()  # sized by fstat: one read call, no oversized buffer
            info = json.loads(data)
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.tally.error(f"ignored sidecar {_show(base + name)}: {exc}")
            return None
        video_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(video_id, str) or not is_valid_id(video_id):
            self.tally.error(f"ignored sidecar {_show(base + name)}: no usable 'id'")
            return None
        extractor = info.get("extractor_key") or info.get("extractor")
        return video_id, extractor if isinstance(extractor, str) and extractor else None


def _show(path: str) -> str:
    """A path safe to print: undecodable bytes shown as escapes."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _normalise_roots(directories: Sequence[str | os.PathLike[str]]) -> list[str]:
    roots: list[str] = []
    for d in directories:
        path = os.path.abspath(os.fsdecode(d))
        if not _utf8(path):
            raise ScanRootError(f"scan root {_show(path)} is not a valid UTF-8 path")
        if not os.path.exists(path):
            raise ScanRootError(f"scan root {path} does not exist (not mounted?); nothing was scanned")
        if not os.path.isdir(path):
            raise ScanRootError(f"scan root {path} is not a directory; nothing was scanned")
        roots.append(path)
    # a root inside another root would be walked twice: keep the outer one
    roots = sorted(set(roots))
    kept: list[str] = []
    for r in roots:
        if not any(r == k or r.startswith(_prefix(k)) for k in kept):
            kept.append(r)
    return kept


def _prefix(root: str) -> str:
    return root if root.endswith("/") else root + "/"


def _is_empty(root: str) -> bool:
    try:
        with os.scandir(root) as it:
            return next(it, None) is None
    except OSError as exc:
        raise ScanRootError(f"cannot read scan root {_show(root)}: {exc.strerror or exc}") from None


_END = object()  # marks the end of one root in the walker's queue


def _walk_ahead(walker: Walker, roots: list[str], out: queue.Queue[Any], stop: threading.Event) -> None:
    """Thread body: walk every root and hand batches over; stat and readdir release the GIL, so the
    walk of the next batch overlaps the database write of the previous one."""
    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    try:
        for root in roots:
            for batch in walker.walk(root, BATCH_FILES):
                if stop.is_set():
                    return
                put((root, batch))
            put((root, _END))
    except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which re-raises
        put((None, exc))


def scan_into_store(store: Store, directories: Sequence[str | os.PathLike[str]], scan_cfg: ScanConfig, *,
                    dry_run: bool = False, reconcile: bool = True, allow_empty: bool = False) -> ScanReport:
    """Scan ``directories`` and record what they hold; see the module docstring for the rules.

    Raises ScanRootError, before writing anything, when a root does not exist, is not a directory,
    or is empty while done rows point into it; and after recording the files found (but before
    marking anything missing) when a root held no video at all while done rows point into it.
    ``allow_empty`` lifts the emptiness guard (the library really was deleted).
    """
    started = time.monotonic()
    roots = _normalise_roots(directories)
    if not roots:
        raise ScanRootError("no directory to scan")
    done_under = {r: library.count_done_under(store, _prefix(r)) for r in roots}
    if not allow_empty:
        for r in roots:
            if done_under[r] and _is_empty(r):
                raise ScanRootError(f"scan root {r} is empty but {done_under[r]} done rows have files there: "
                                    "is the disk mounted? nothing was scanned")
    walk_tally, db_tally = _Tally(), _Tally()  # one per thread: no shared counters
    found = dict.fromkeys(roots, 0)
    matched = dict.fromkeys(roots, 0)  # done rows whose path is a file this walk saw
    handoff: queue.Queue[Any] = queue.Queue(maxsize=2)  # bounded: memory stays flat
    stop = threading.Event()
    thread = threading.Thread(target=_walk_ahead, args=(Walker(scan_cfg, walk_tally), roots, handoff, stop),
                              name="videofetchd-scan-walk", daemon=True)
    thread.start()
    refused: list[str] = []
    try:
        finished = 0
        while finished < len(roots):
            root, item = handoff.get()
            if isinstance(item, BaseException):
                raise item
            if item is _END:
                finished += 1
                if done_under[root] and not allow_empty and not found[root]:
                    refused.append(root)
            elif item:
                found[root] += len(item)
                matched[root] += library.record_files(store, item, db_tally.counts, dry_run=dry_run)
    finally:
        stop.set()
        thread.join()
    db_tally.add("videos_found", sum(found.values()))
    if reconcile and not refused:
        for r in roots:
            _reconcile(store, r, scan_cfg, db_tally, dry_run=dry_run, matched=matched[r])
    report = _report(roots, walk_tally, db_tally, dry_run, time.monotonic() - started)
    if refused:
        raise ScanRootError(
            f"scan root {', '.join(refused)} holds no video files but done rows have files there: "
            "is the right disk mounted? Files found were recorded; nothing was marked missing "
            "(use --allow-empty if the library really was emptied)", report)
    return report


def _reconcile(store: Store, root: str, cfg: ScanConfig, tally: _Tally, *, dry_run: bool, matched: int) -> None:
    prefix = _prefix(root)
    if not dry_run and library.count_done_under(store, prefix) <= matched:
        return  # every done row under the root is a file this walk just saw
    for page in library.iter_done_under(store, prefix):
        gone = []
        for row_id, path in page:
            try:
                os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                gone.append((row_id, path))
            except OSError as exc:  # unknown (EACCES, EIO): not proof that the file is gone
                tally.error(f"cannot check {_show(path)}: {exc.strerror or exc}")
        if not gone:
            continue
        n = len(gone) if dry_run else library.mark_missing(store, gone, requeue=cfg.requeue_missing)
        tally.add("missing", n)
        if cfg.requeue_missing:
            tally.add("requeued_missing", n)
        action = "would be marked" if dry_run else "requeued" if cfg.requeue_missing else "marked missing"
        for _, path in gone[:3]:
            log.info("file gone, row %s: %s", action, _show(path))


def _report(roots: list[str], walk: _Tally, db: _Tally, dry_run: bool, elapsed: float) -> ScanReport:
    c = {k: walk.counts.get(k, 0) + db.counts.get(k, 0) for k in {*walk.counts, *db.counts}}
    names = ("files_seen", "videos_found", "marked_done", "created", "already_done", "moved", "duplicates",
             "skipped_running", "partial", "unrecognized", "skipped_errors", "missing", "requeued_missing")
    return ScanReport(roots=tuple(roots), dry_run=dry_run, elapsed_s=round(elapsed, 3),
                      warnings=tuple((walk.warnings + db.warnings)[:MAX_WARNINGS + 1]),
                      **{n: c.get(n, 0) for n in names})
