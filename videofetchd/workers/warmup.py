"""What the forkserver does once so that every worker child starts warm (see ``preload``).

yt-dlp loads lazily: a new child's first job would import the extractor's module, compile URL
patterns, build TLS contexts, ask ffmpeg its version and compile format selection's patterns,
~0.4 s of CPU per child and again after every recycle. Done here, before any child forks, each
child inherits it all by fork. Imports yt-dlp inside its functions only: the forkserver's preload
is the one caller, and the parent never loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def warm_imports(url_template: str | None = None, cache_dir: str | None = None) -> str | None:
    """Load and compile what the first job would otherwise load lazily, so that children forked
    afterwards start warm; returns the extractor that takes ``url_template``'s URLs (None when
    not asked). That takes every extractor's URL pattern compiled (~0.25 s of CPU, the bulk of
    yt-dlp's own start) to learn that none but the generic one fits; the answer is kept in
    ``cache_dir`` under yt-dlp's version and extractor list, so a later start only imports the
    module of that one extractor (the generic one imports YouTube's: ~0.2 s). A child that meets
    a URL of another shape compiles the patterns itself, as plain yt-dlp would."""
    from yt_dlp.extractor import gen_extractor_classes
    classes = gen_extractor_classes()
    sample = url_template.replace("{id}", SAMPLE_ID) if url_template else None
    cache = _ExtractorCache(cache_dir, classes) if sample and cache_dir else None
    key = cache.get(url_template) if cache is not None and url_template else None
    if key is None:
        for ie in classes:
            ie.suitable("http://warm-up.invalid/")
        if sample is not None:
            key = next((ie.ie_key() for ie in classes if ie.suitable(sample)), None)
            if cache is not None and key is not None and url_template:
                cache.put(url_template, key)
    for ie in classes:
        if ie.ie_key() == (key or "Generic"):
            getattr(ie, "real_class", ie)  # a lazy extractor imports its module here
    return key


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
