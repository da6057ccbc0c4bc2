"""What the forkserver does once so that every worker child starts warm (see ``preload``).

yt-dlp loads lazily: a new child's first job would import the extractor's module, compile URL
patterns, build TLS contexts, ask ffmpeg its version and compile format selection's patterns,
~0.4 s of CPU per child and again after every recycle. Done here, before any child forks, each
child inherits it all by fork. Imports yt-dlp inside its functions only: the forkserver's preload
is the one caller, and the parent never loads it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import select
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .download import Downloader


#: a made-up video that ``warm_downloader`` runs through format selection (nothing is downloaded)
_WARM_INFO = {"id": "warmup", "title": "warm-up", "ext": "mp4", "url": "http://warm-up.invalid/warmup.mp4",
              "extractor": "generic", "extractor_key": "Generic", "webpage_url": "http://warm-up.invalid/warmup"}


def probe_ffmpeg(location: str | None) -> threading.Thread:
    """Ask ffmpeg and ffprobe their versions on a thread (two subprocesses, ~100 ms of waiting),
    while the caller compiles patterns; yt-dlp caches the answers per class, so every child
    forked afterwards knows them. Join the thread before forking."""
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    def probe() -> None:
        try:
            FFmpegPostProcessor._ffmpeg_location.set(location)  # this thread's own context
            pp = FFmpegPostProcessor()
            pp._version, pp._probe_version  # noqa: B018 - cached properties: run the checks
        except Exception:  # noqa: BLE001 - best effort: the first job asks again
            pass

    thread = threading.Thread(target=probe, name="ffmpeg-probe", daemon=True)
    thread.start()
    return thread


SAMPLE_ID = "a1B2c3D4e5F"  #: an ID shaped like most sites' (YouTube's 11 characters among them)


class ExtractorSearch:
    """Which extractor takes ``url_template``'s URLs, so that children forked afterwards go
    straight to it. Learning that none but the generic one fits takes every extractor's URL
    pattern compiled: ~0.3 s of CPU, the bulk of yt-dlp's own start, and on the path of a cold
    start's first file. So the answer is kept in ``cache_dir`` under yt-dlp's version and
    extractor list (a later start only imports that one extractor's module; the generic one
    imports YouTube's), and on a miss the patterns are split over two processes: a forked helper
    tries the second half while this process tries the first. The first match in yt-dlp's own
    order wins, as in yt-dlp; a helper that fails costs time, never the answer. A child that
    meets a URL of another shape compiles the patterns itself, as plain yt-dlp would.

    Construct it before starting any thread (it may fork); ``result`` joins the helper."""

    HELPER_TIMEOUT_S = 10.0

    def __init__(self, url_template: str | None, cache_dir: str | None) -> None:
        from yt_dlp.extractor import gen_extractor_classes
        self.classes: list[Any] = gen_extractor_classes()
        self.url_template = url_template
        self.sample = url_template.replace("{id}", SAMPLE_ID) if url_template else None
        self.cache = _ExtractorCache(cache_dir, self.classes) if self.sample and cache_dir else None
        self.key = self.cache.get(url_template) if self.cache is not None and url_template else None
        self.split = len(self.classes) // 2
        self._helper: tuple[int, int] | None = None  # (pid, read end of its pipe)
        if self.key is None and self.sample is not None and _cores() > 1 and not os.environ.get("VFD_NOSPLIT"):
            self._helper = self._fork_helper(self.sample)

    def result(self) -> str | None:
        key = self.key
        if key is None and self.sample is None:
            for ie in self.classes:  # nothing to search for: compile every pattern for the children
                ie.suitable("http://warm-up.invalid/")
        elif key is None and self.sample is not None:
            mine = self.classes[:self.split] if self._helper is not None else self.classes
            key = next((ie.ie_key() for ie in mine if ie.suitable(self.sample)), None)
            if self._helper is not None:
                index = self._join_helper(wanted=key is None)
                rest = range(self.split, len(self.classes)) if index == _FAILED else [index]
                key = key or next((self.classes[i].ie_key() for i in rest
                                   if i >= 0 and self.classes[i].suitable(self.sample)), None)
            if self.cache is not None and key is not None and self.url_template:
                self.cache.put(self.url_template, key)
        for ie in self.classes:
            if ie.ie_key() == (key or "Generic"):
                getattr(ie, "real_class", ie)  # a lazy extractor imports its module here
        return key

    def _fork_helper(self, sample: str) -> tuple[int, int] | None:
        """Fork a process that tries the second half of the classes and writes the index of the
        first that takes ``sample`` (-1: none) to a pipe."""
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return None
        if pid == 0:  # the helper: answer and leave, running no atexit handler of the forkserver's
            code = 1
            try:
                os.close(r)
                _name_process(HELPER_NAME)
                found = next((i for i in range(self.split, len(self.classes))
                              if self.classes[i].suitable(sample)), -1)
                os.write(w, str(found).encode("ascii"))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        return pid, r

    def _join_helper(self, *, wanted: bool) -> int:
        """The helper's answer (an index, -1 for none, ``_FAILED`` when it gave none); reaped in
        any case. Not wanted (this half matched, and it comes first): the helper is killed."""
        assert self._helper is not None
        pid, r = self._helper
        self._helper = None
        answer = _FAILED
        try:
            if wanted and select.select([r], [], [], self.HELPER_TIMEOUT_S)[0]:
                answer = int(os.read(r, 32).decode("ascii") or "x")
        except (OSError, ValueError):
            answer = _FAILED
        finally:
            os.close(r)
            if answer == _FAILED:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return answer if -1 <= answer < len(self.classes) else _FAILED


_FAILED = -2  #: the helper gave no answer
HELPER_NAME = b"vfd-ie-search"  #: the helper's name in ps and top (the comm of /proc/<pid>/stat)


def _name_process(name: bytes) -> None:
    """Name this process for ps and top (PR_SET_NAME): a fork is otherwise a second forkserver
    there, and tools that count our processes could not tell it from a worker child."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _cores() -> int:
    """The cores this process may run on (its affinity: a container or CPUAffinity= may give
    it fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _ExtractorCache:
    """url_template -> extractor key, valid for one yt-dlp version and extractor list (plugins
    add extractors). One small JSON file, replaced atomically; any trouble is a cache miss."""

    def __init__(self, directory: str, classes: list[Any]) -> None:
        names = ",".join(ie.ie_key() for ie in classes)
        self.path = os.path.join(directory, "extractors.json")
        from yt_dlp.version import __version__
        self.stamp = f"{__version__}:{hashlib.sha256(names.encode()).hexdigest()[:16]}"

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        ok = isinstance(data, dict) and data.get("stamp") == self.stamp and isinstance(data.get("templates"), dict)
        return data["templates"] if ok else {}

    def get(self, url_template: str) -> str | None:
        key = self._load().get(url_template)
        return key if isinstance(key, str) else None

    def put(self, url_template: str, key: str) -> None:
        templates = {**self._load(), url_template: key}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"stamp": self.stamp, "templates": dict(list(templates.items())[-64:])}, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only or full cache directory costs the next start 0.25 s, nothing else


def warm_downloader(d: Downloader) -> None:
    """Do now what ``d``'s first job would do lazily in every child: ask ffmpeg its version (a
    subprocess, ~50 ms; yt-dlp caches it per class), compile format selection's and file
    naming's patterns (~30 ms), and build each HTTP handler's opener with its TLS context
    (loading the CA certificates, ~60 ms). Best effort: these are yt-dlp's internals, and a
    change in them costs speed, never a job."""
    from yt_dlp.networking import Request
    from yt_dlp.postprocessor import FFmpegMergerPP
    try:
        FFmpegMergerPP(d.ydl).available  # noqa: B018 - runs and caches the version check
        d.ydl.process_ie_result(dict(_WARM_INFO), download=False)  # nothing is downloaded
    except Exception:  # noqa: BLE001
        pass
    request = Request("http://warm-up.invalid/")
    handlers = d.ydl._request_director.handlers
    # the handler yt-dlp prefers for plain HTTP(S): Requests when installed (yt-dlp[default]),
    # else Urllib; a TLS context for one it never uses would cost the start ~60 ms for nothing
    handler = handlers.get("Requests") or handlers.get("Urllib")
    try:
        keys: dict[str, Any] = {"cookiejar": handler._get_cookiejar(request), "legacy_ssl_support": None}
        if handler.RH_KEY == "Urllib":
            keys["proxies"] = handler._get_proxies(request)
        handler._get_instance(**keys)
    except Exception:  # noqa: BLE001
        pass
