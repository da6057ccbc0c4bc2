"""The file-system half of the library scanner: walk directories and recognise video IDs.

Walks with ``os.scandir`` and an explicit stack (no recursion limit, one directory listing in
memory at a time) and follows no symlink below the root: not a directory, not a video file,
not a sidecar (a link to a file the scanning user may read but the library's writer may not
must not leak that file's ID or size into the database). A directory opened is checked to be the
one listed (st_dev, st_ino), so one swapped for a link during the walk is skipped, and the same
pair guards against bind-mount loops. The jobs' temporary directory (``.videofetchd-tmp``) is
never entered: nothing in it is a finished video. An ID comes from, in order: the ``.info.json``
sidecar next to the file (same stem; its ``videofetchd_id``, the queue ID a download wrote, else
yt-dlp's ``id``), the yt-dlp style ``[ID]`` at the end of the file stem, the configured
``scan.id_pattern``. yt-dlp's own ID goes with the file too (``DoneFile``): the queue matches
files to rows by either. Partial files (``.part``, ``.ytdl``, ``.temp``, ``.part-FragN``, ``.fNNN``
format parts) and empty files are never complete. Problems are counted in a ``Tally``, never
raised, except for an unreadable scan root. No database, no network, no yt-dlp here.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config import ScanConfig
from ..errors import VideofetchdError
from ..queue.jobs import ID_RE, MAX_ID_LENGTH, TEMP_DIR_NAME, DoneFile
from ..text import printable
from .report import ScanReport

log = logging.getLogger("videofetchd.scan")

MAX_WARNINGS = 50  #: warnings kept in the report and logged one by one; the rest are only counted
#: a real yt-dlp info.json is a few hundred KiB; a larger one is skipped unread (json.loads of
#: a hostile 60 MiB file of ``{}`` items takes more than 1.5 GB)
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
SIDECAR_SUFFIX = ".info.json"
LARGE_DIR = 10_000  #: entries of a directory held at once; a larger one is streamed (see _listing)
SLICE = 1000  #: entries per slice of a large directory
PARTIAL_EXTS = frozenset({"part", "ytdl", "temp"})
_FORMAT_PART = re.compile(r"\.f[0-9]+(?:-[0-9]+)?$")  # yt-dlp's per-format pieces before a merge
#: bracket tags that are obviously not IDs: resolutions, codecs (all at most 8 characters)
_NOT_AN_ID = re.compile(r"(?i)[0-9]{3,4}p(?:[0-9]{2,3})?|4k|8k|hdr|sdr|x26[45]|h\.?26[45]|hevc|av1|vp9")


class ScanRootError(VideofetchdError):
    """A scan root is missing, not a directory, or looks unmounted while rows say files are there."""

    def __init__(self, message: str, report: ScanReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Tally:
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


#: (video_id, path, size, found_by, extractor, ytdlp_id): the row a complete video file makes done
Found = DoneFile


def is_valid_id(text: str) -> bool:
    """Exactly what ``jobs.validate_video_id`` accepts, without building an exception per miss."""
    return len(text) <= MAX_ID_LENGTH and text not in (".", "..") and ID_RE.fullmatch(text) is not None


def utf8_ok(name: str) -> bool:
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

    def __init__(self, cfg: ScanConfig, tally: Tally) -> None:
        self.exts = frozenset(e.lower().lstrip(".") for e in cfg.extensions)
        # "Title [ID].ext" with an ID of more than 8 characters (shorter ones may be tags like
        # [1080p]: _identify decides) and a video extension; the ID group is ID_RE's alphabet
        self.fast = re.compile(r"(?s:.*)\[([A-Za-z0-9_\-][A-Za-z0-9_\-.:@~+]{8,%d})\]\.(?i:%s)"
                               % (MAX_ID_LENGTH - 1, "|".join(map(re.escape, sorted(self.exts))))).fullmatch
        self.pattern = re.compile(cfg.id_pattern) if cfg.id_pattern else None
        self.tally = tally
        self.visited: set[tuple[int, int]] = set()

    def walk(self, root: str, batch_size: int = 1000) -> Iterator[list[Found]]:
        """Lists of at least ``batch_size`` recognised files (the last one may be shorter or empty)."""
        try:
            st = os.stat(root)
        except OSError as exc:
            raise ScanRootError(f"cannot read scan root {show_path(root)}: {exc.strerror or exc}") from None
        self.visited.add((st.st_dev, st.st_ino))
        stack = [(root, st.st_dev, st.st_ino)]
        out: list[Found] = []
        while stack:
            directory, dev, ino = stack.pop()
            # the root may be a symlink (the user named it); below it, nothing is followed
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if directory != root else 0)
            try:
                fd = os.open(directory, flags)
            except OSError as exc:
                self.tally.error(f"cannot read directory {show_path(directory)}: {exc.strerror or exc}")
                continue
            try:
                opened = os.fstat(fd)
                if (opened.st_dev, opened.st_ino) != (dev, ino):  # a path component was swapped meanwhile
                    self.tally.error(f"skipped directory {show_path(directory)}: it changed during the scan")
                    continue
                for entries, sidecars in _listing(fd):
                    self._directory(directory, fd, entries, sidecars, stack, out)
                    if len(out) >= batch_size:
                        yield out
                        out = []
            except OSError as exc:
                self.tally.error(f"cannot read directory {show_path(directory)}: {exc.strerror or exc}")
            finally:
                os.close(fd)
        yield out

    def _directory(self, directory: str, fd: int, entries: list[os.DirEntry[str]], sidecars: set[str],
                   stack: list[tuple[str, int, int]], out: list[Found]) -> None:
        # the hot loop: one regular-expression call recognises the usual "Title [ID].ext" name
        # (extension, bracket and ID rules at once); every other name takes the careful path
        tally, fast, add = self.tally, self.fast, out.append
        base = directory if directory.endswith("/") else directory + "/"
        files = partial = 0
        for entry in entries:
            name = entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._push_dir(base + name, entry, stack)
                    continue
            except OSError as exc:
                tally.error(f"cannot stat {show_path(base + name)}: {exc.strerror or exc}")
                continue
            files += 1
            m = fast(name)
            if m is None or not name.isascii() or (sidecars and name[:m.end(1) + 1] in sidecars):
                partial += self._careful(fd, base, entry, sidecars, out)
                continue
            try:
                st = entry.stat(follow_symlinks=False)  # fstatat(fd, name, AT_SYMLINK_NOFOLLOW)
            except OSError as exc:
                tally.error(f"cannot stat {show_path(base + name)}: {exc.strerror or exc}")
                continue
            if st.st_mode & 0o170000 != 0o100000:  # not a regular file (S_ISREG, inlined)
                if st.st_mode & 0o170000 == 0o120000:
                    tally.error(f"skipped {show_path(base + name)}: a symlink (not followed)")
                continue
            if not st.st_size:
                partial += 1
                continue
            add((m[1], base + name, st.st_size, "filename", None, m[1]))
        tally.add("files_seen", files)
        tally.add("partial", partial)

    def _careful(self, fd: int, base: str, entry: os.DirEntry[str], sidecars: set[str], out: list[Found]) -> int:
        """Every rule for a name the fast pattern did not take; returns 1 for a partial file, else 0."""
        name = entry.name
        dot = name.rfind(".")
        ext = name[dot + 1:].lower() if dot > 0 else ""
        if ext not in self.exts:
            return int(ext in PARTIAL_EXTS or ".part-Frag" in name)
        stem = name[:dot]
        if stem.endswith(".temp") or _FORMAT_PART.search(stem):
            return 1
        if not utf8_ok(name):
            self.tally.error(f"skipped {show_path(base + name)}: file name is not valid UTF-8")
            return 0
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            self.tally.error(f"cannot stat {show_path(base + name)}: {exc.strerror or exc}")
            return 0
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISLNK(st.st_mode):
                self.tally.error(f"skipped {show_path(base + name)}: a symlink (not followed)")
            return 0
        if st.st_size == 0:
            return 1
        found = self._identify(fd, base, name, stem, stem in sidecars)
        if found is None:
            self.tally.add("unrecognized")
        else:
            out.append((found[0], base + name, st.st_size, found[1], found[2], found[3]))
        return 0

    def _push_dir(self, path: str, entry: os.DirEntry[str], stack: list[tuple[str, int, int]]) -> None:
        if entry.name == TEMP_DIR_NAME:
            return
        if not utf8_ok(entry.name):
            self.tally.error(f"skipped directory {show_path(path)}: name is not valid UTF-8")
            return
        st = entry.stat(follow_symlinks=False)
        key = (st.st_dev, st.st_ino)
        if key in self.visited:  # a bind mount of an ancestor, or a root listed twice
            self.tally.error(f"skipped directory {show_path(path)}: already visited (loop)")
            return
        self.visited.add(key)
        stack.append((path, st.st_dev, st.st_ino))

    def _identify(self, fd: int, base: str, name: str, stem: str,
                  has_sidecar: bool) -> tuple[str, str, str | None, str | None] | None:
        """(queue ID, found_by, extractor, yt-dlp's ID) of a video file, or None."""
        if has_sidecar:
            found = self._from_sidecar(fd, base, stem + SIDECAR_SUFFIX)
            if found is not None:
                return found[2] or found[0], "info.json", found[1], found[0]
        if stem.endswith("]"):
            start = stem.rfind("[")
            if start >= 0:
                candidate = stem[start + 1:-1]
                if is_valid_id(candidate) and not _NOT_AN_ID.fullmatch(candidate):
                    return candidate, "filename", None, candidate
        if self.pattern is not None:
            m = self.pattern.search(name)
            if m and m.group("id") and is_valid_id(m.group("id")):
                return m.group("id"), "pattern", None, None
        return None

    def _from_sidecar(self, fd: int, base: str, name: str) -> tuple[str, str | None, str | None] | None:
        """(yt-dlp's id, extractor, videofetchd_id) of a sidecar, or None (counted as an error)."""
        try:
            data = _read_file(fd, name, MAX_SIDECAR_BYTES)
            found = _sidecar_fast(data)
            if found is not None:
                return found
            info = json.loads(data)
        except OSError as exc:
            why = "a symlink (not followed)" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            self.tally.error(f"ignored sidecar {show_path(base + name)}: {why}")
            return None
        except (ValueError, RecursionError) as exc:  # ValueError: JSON and UTF-8 errors, too large
            self.tally.error(f"ignored sidecar {show_path(base + name)}: {printable(exc)}")
            return None
        video_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(video_id, str) or not is_valid_id(video_id):
            self.tally.error(f"ignored sidecar {show_path(base + name)}: no usable 'id'")
            return None
        extractor = info.get("extractor_key") or info.get("extractor")
        queue_id = info.get("videofetchd_id")
        return (video_id, extractor if isinstance(extractor, str) and _EXTRACTOR.fullmatch(extractor) else None,
                queue_id if isinstance(queue_id, str) and is_valid_id(queue_id) else None)


#: what an extractor name may be (yt-dlp's are "Youtube", "vimeo:album", ...); anything else is
#: dropped rather than stored: an archive line must stay one word
_EXTRACTOR = re.compile(r"[A-Za-z0-9_:.\-]{1,100}")
_WS = rb"[ \t\n\r]*"  # JSON's whitespace (not regex \s, which also takes \v and \f)
#: yt-dlp writes "id" as the first key of an info.json; a valid ID needs no JSON escapes
_SIDECAR_ID = re.compile(rb'%s\{%s"id"%s:%s"([A-Za-z0-9_\-][A-Za-z0-9_\-.:@~+]{0,%d})"%s[,}]'
                         % (_WS, _WS, _WS, _WS, MAX_ID_LENGTH - 1, _WS))
_SIDECAR_KEYS = (b'"extractor_key"', b'"extractor"')
_QUEUE_KEY = b'"videofetchd_id"'  #: the queue ID a videofetchd download adds (its last key)
_KEY_BEFORE = re.compile(rb"[,{]%s\Z" % _WS)
_COLON = re.compile(_WS + rb":")
_SIDECAR_VALUE = re.compile(rb'%s:%s"([A-Za-z0-9_:.\-]{1,100})"%s[,}]' % (_WS, _WS, _WS))
_QUEUE_VALUE = re.compile(rb'%s:%s"([A-Za-z0-9_\-][A-Za-z0-9_\-.:@~+]{0,%d})"%s[,}]'
                          % (_WS, _WS, MAX_ID_LENGTH - 1, _WS))


def _key_value(data: bytes, key: bytes, value: re.Pattern[bytes]) -> bytes | None | bool:
    """The value of the first ``key`` that stands as a key (after a comma or a brace, before a
    colon): its bytes, None when there is no such key, False when its value is odd."""
    at = data.find(key)
    while at >= 0:
        end = at + len(key)
        if _COLON.match(data, end) and _KEY_BEFORE.search(data, max(0, at - 64), at):
            v = value.match(data, end)
            return False if v is None else v[1]
        at = data.find(key, end)
    return None


def _sidecar_fast(data: bytes) -> tuple[str, str | None, str | None] | None:
    """(id, extractor, videofetchd_id) of a yt-dlp info.json without parsing it, or None to
    parse it in full.

    A real info.json is hundreds of kilobytes (every format's URL, every caption language) and
    json.loads costs about 0.6 ms of it; this costs a sixth of that. It takes what yt-dlp writes:
    the top-level object's first key is "id", and the extractor is the first "extractor_key"
    (else "extractor") that stands as a key: after a comma or a brace and before a colon. Nested
    dicts that carry one (requested formats) are copies of the same info, so the first is as good
    as the top-level one. Hand-made oddities may read differently from json.loads (a repeated
    "id" key: json takes the last), and the rest of the file is not validated: a truncated
    sidecar still names its video, as the file name next to it does.
    """
    m = _SIDECAR_ID.match(data)
    if m is None:
        return None
    queue_id = _key_value(data, _QUEUE_KEY, _QUEUE_VALUE) if _QUEUE_KEY in data else None
    if queue_id is False:
        return None  # an odd value (escapes, null, not a string): let json decide
    for key in _SIDECAR_KEYS:
        v = _key_value(data, key, _SIDECAR_VALUE)
        if v is False:
            return None
        if v is not None:
            assert isinstance(v, bytes)
            return m[1].decode(), v.decode(), queue_id.decode() if isinstance(queue_id, bytes) else None
    return m[1].decode(), None, queue_id.decode() if isinstance(queue_id, bytes) else None


def _listing(fd: int) -> Iterator[tuple[list[os.DirEntry[str]], set[str]]]:
    """The directory's entries, in slices, each with the stems of all the directory's sidecars.

    Up to LARGE_DIR entries are one slice. A larger directory (yt-dlp's default puts a whole
    archive in one) is listed twice so that memory stays flat: first the sidecars' names only,
    through a descriptor of its own (a dup would share the read position), then the entries,
    streamed SLICE at a time.
    """
    with os.scandir(fd) as it:
        head = list(itertools.islice(it, LARGE_DIR))
        if len(head) < LARGE_DIR:
            yield head, {e.name[:-len(SIDECAR_SUFFIX)] for e in head if e.name.endswith(SIDECAR_SUFFIX)}
            return
        again = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            with os.scandir(again) as names:
                sidecars = {e.name[:-len(SIDECAR_SUFFIX)] for e in names if e.name.endswith(SIDECAR_SUFFIX)}
        finally:
            os.close(again)
        while head:
            yield head, sidecars
            head = list(itertools.islice(it, SLICE))


def _read_file(dir_fd: int, name: str, limit: int) -> bytes:
    """The whole file, read with plain system calls sized by fstat (no buffered file object: a
    scan reads thousands of sidecars); ValueError when it is not a regular file or is larger
    than ``limit``."""
    # O_NONBLOCK: a FIFO must not hang us; O_NOFOLLOW: a symlink fails with ELOOP
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        size = st.st_size
        if size > limit:
            raise ValueError(f"larger than {limit} bytes")
        data = b""
        while part := os.read(fd, size + 1 - len(data)):  # until EOF, never past size + 1 bytes
            data += part
            if len(data) > size:
                raise ValueError("changed while being read")
        return data
    finally:
        os.close(fd)


def show_path(path: str) -> str:
    """A path safe to print: undecodable bytes and control characters shown as escapes."""
    return printable(path.encode("utf-8", "backslashreplace").decode("utf-8"))
