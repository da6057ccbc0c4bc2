"""The file-system half of the library scanner: walk directories and recognise video IDs.

Walks with ``os.scandir`` and an explicit stack (no recursion limit, one directory listing in
memory at a time), follows no symlinked directories and guards against bind-mount loops by
(st_dev, st_ino). An ID comes from, in order: the ``.info.json`` sidecar next to the file (same
stem), the yt-dlp style ``[ID]`` at the end of the file stem, the configured
``scan.id_pattern``. Partial files (``.part``, ``.ytdl``, ``.temp``, ``.part-FragN``, ``.fNNN``
format parts) and empty files are never complete. Problems are counted in a ``Tally``, never
raised, except for an unreadable scan root. No database, no network, no yt-dlp here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import ScanConfig
from .errors import VideofetchdError
from .jobs import ID_RE, MAX_ID_LENGTH
from .library import DoneFile

if TYPE_CHECKING:
    from .scan import ScanReport

log = logging.getLogger("videofetchd.scan")

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


#: (video_id, path, size, found_by, extractor): the row a complete video file makes done
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
        stack = [root]
        out: list[Found] = []
        while stack:
            directory = stack.pop()
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                self.tally.error(f"cannot read directory {show_path(directory)}: {exc.strerror or exc}")
                continue
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                self._directory(directory, fd, entries, stack, out)
            except OSError as exc:
                self.tally.error(f"cannot read directory {show_path(directory)}: {exc.strerror or exc}")
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
                tally.error(f"cannot stat {show_path(base + name)}: {exc.strerror or exc}")
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
            if not (name.isascii() or utf8_ok(name)):
                tally.error(f"skipped {show_path(base + name)}: file name is not valid UTF-8")
                continue
            try:
                st = entry.stat()  # fstatat(fd, name): follows a symlinked file
            except OSError as exc:
                tally.error(f"cannot stat {show_path(base + name)}: {exc.strerror or exc}")
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
        if not utf8_ok(entry.name):
            self.tally.error(f"skipped directory {show_path(path)}: name is not valid UTF-8")
            return
        st = entry.stat(follow_symlinks=False)
        key = (st.st_dev, st.st_ino)
        if key in self.visited:  # a bind mount of an ancestor, or a root listed twice
            self.tally.error(f"skipped directory {show_path(path)}: already visited (loop)")
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
            self.tally.error(f"ignored sidecar {show_path(base + name)}: {exc}")
            return None
        video_id = info.get("id") if isinstance(info, dict) else None
        if not isinstance(video_id, str) or not is_valid_id(video_id):
            self.tally.error(f"ignored sidecar {show_path(base + name)}: no usable 'id'")
            return None
        extractor = info.get("extractor_key") or info.get("extractor")
        return video_id, extractor if isinstance(extractor, str) and extractor else None


def show_path(path: str) -> str:
    """A path safe to print: undecodable bytes shown as escapes."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")
