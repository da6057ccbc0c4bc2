"""One download through yt-dlp's Python API. The only module that imports ``yt_dlp``.

Runs inside a worker child. A ``YoutubeDL`` object is built once per config generation and
reused for every job of that generation (a new one costs ~140 ms; a warm one fetches a small
file in ~35 ms). Progress and post-processor hooks report to a ``Reporter`` that the worker
wires to shared memory the parent reads; nothing here touches the database.

A job is extracted before anything is downloaded, so a playlist is known as one while nothing
of it has been fetched (it fails at once, or its entries go back as rows to queue); the
generic extractor's guess that a non-media answer is a "direct video link" is refused; the
bytes received are counted against ``download.max_filesize``; and ``netguard`` checks every
connection against ``download.allow_addresses``.

Whole files only: a job downloads and post-processes in its own temporary directory under the
download directory (``jobs.job_temp_dir``, same file system), and only yt-dlp's final move puts
a file under its final name, so a job killed mid-download or mid-ffmpeg leaves nothing a scan
could take for a finished video, and its retry resumes the ``.part`` where it was. The info
dict carries the queue's ID (``videofetchd_id``) into the ``.info.json`` sidecar, so a scan of
the library can tell which row a file belongs to even when yt-dlp's own ID differs.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from typing import Any, Protocol

import yt_dlp
from yt_dlp.postprocessor import PostProcessor
from yt_dlp.utils import DownloadError

from . import netguard
from .hostprobe import os_errno
from ..config import DownloadConfig
from ..errors import InvalidVideoId
from ..queue.jobs import (PHASE_EXTRACTING, PHASE_IDLE, PHASE_POSTPROCESSING, ErrorKind, Job, Outcome, classify,
                          id_for_url, job_temp_dir, validate_url, validate_video_id)

#: YoutubeDL params videofetchd sets itself; ``download.ytdlp`` may not override them
RESERVED_PARAMS = frozenset({"progress_hooks", "postprocessor_hooks", "logger", "paths", "outtmpl",
                             "noplaylist", "quiet", "noprogress", "progress_with_newline", "extract_flat",
                             "enable_file_urls", "max_filesize", "progress_delta"})
MAX_URL_HOPS = 10  #: extractors handing a URL on to the next (redirects, embeds) before we give up


class Reporter(Protocol):
    def phase(self, phase: int) -> None: ...
    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None: ...
    def files(self, paths: list[str]) -> None: ...


class SizeLimitExceeded(yt_dlp.utils.DownloadCancelled):
    """Raised from the progress hook: yt-dlp closes the file and lets it through to us."""


class _Logger:
    """Collects yt-dlp's error lines (the exception text alone sometimes lacks the HTTP reason)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        pass

    def error(self, msg: str) -> None:
        self.errors.append(msg)


class _TagQueueIdPP(PostProcessor):
    """Puts the queue's ID into the info dict before anything is written (``pre_process``), so
    the ``.info.json`` says which row the files belong to."""

    def __init__(self) -> None:
        super().__init__()
        self.video_id: str | None = None

    def run(self, info: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        if self.video_id is not None:
            info["videofetchd_id"] = self.video_id
        return [], info


_DEFAULT_EXTRACTORS: list[str] | None = None


def _default_extractors() -> list[str]:
    """yt-dlp's ``allowed_extractors`` default (``["default"]``) spelt so that it costs ~30 ms
    less per YoutubeDL, on the forkserver's prebuild (the first file's path) and in every child
    that builds its own. yt-dlp expands "default" into ~1,750 names and looks each up in a list
    of all of them (quadratic); a regex is filtered over the list once. "every extractor but the
    disabled ones and the end marker" is the same list, in the same order
    (``tests/unit/test_download_params.py`` checks it against the installed yt-dlp). Should
    yt-dlp's attributes ever change, this falls back to its own default."""
    global _DEFAULT_EXTRACTORS
    if _DEFAULT_EXTRACTORS is None:
        try:
            from yt_dlp.extractor import gen_extractor_classes
            names = {ie.IE_NAME.lower(): ie for ie in gen_extractor_classes()}
            off = [name for name, ie in names.items() if not ie._ENABLED]
            _DEFAULT_EXTRACTORS = [".*", "-end", *("-" + re.escape(name) for name in off)]
        except Exception:  # noqa: BLE001 - only speed is at stake
            _DEFAULT_EXTRACTORS = ["default"]
    return _DEFAULT_EXTRACTORS


class Downloader:
    """A warm YoutubeDL for one config generation and egress identity, plus the bookkeeping of
    the current job. The identity's ``ytdlp`` and ``source_address`` go over ``download.ytdlp``."""

    def __init__(self, cfg: DownloadConfig, reporter: Reporter, identity: str | None = None) -> None:
        self.cfg = cfg
        self.reporter = reporter
        self.logger = _Logger()
        self.finished: dict[str, int] = {}  # file name -> bytes, from 'finished' progress events
        self.received: dict[str, int] = {}  # file being written -> bytes so far (max_filesize counts them all)
        self.written: list[str] = []  # every file name the job's downloads used, partial ones included
        self.postprocessed = False
        params: dict[str, Any] = {
            "socket_timeout": cfg.socket_timeout,
            "retries": 3,
            "fragment_retries": 3,
            "continuedl": True,
            "cachedir": cfg.cache_dir or False,  # shared by every child: player code, solver results
            "no_color": True,
        }
        params.update({k: v for k, v in cfg.ytdlp_params(identity).items() if k not in RESERVED_PARAMS})
        params.update({
            "paths": {"home": cfg.directory},
            "outtmpl": {"default": cfg.output_template},
            "noplaylist": True,
            "quiet": True,
            "noprogress": True,
            "logger": self.logger,
            "progress_hooks": [self._on_progress],
            "postprocessor_hooks": [self._on_postprocess],
            # a playlist's entries are listed, not resolved, until we decide what to do with it
            "extract_flat": "in_playlist",
            "enable_file_urls": False,  # an extractor's file:// format URL would copy a local file
            # yt-dlp formats a console progress line for every progress event even when quiet and
            # noprogress (~1.5 ms per small file); nobody reads a daemon child's console
            "progress_delta": 3600,
        })
        chosen = params.get("external_downloader")  # the user's own choice: str or {protocol: name}
        programs = [chosen] if isinstance(chosen, str) else list(chosen.values()) if isinstance(chosen, dict) else []
        self.policy = policy = netguard.policy_for(cfg.allow_addresses, params.get("proxy"),
                                                   [p for p in programs if isinstance(p, str)])
        if not policy.open and "external_downloader" not in params:
            # yt-dlp's own HLS/DASH downloaders run in this process, where every connection is checked
            params["external_downloader"] = {"default": "native"}
        if "allowed_extractors" not in params:
            params["allowed_extractors"] = _default_extractors()
        self.ydl = yt_dlp.YoutubeDL(params)
        if not policy.open:
            # libcurl (browser impersonation) connects below Python, out of the checker's sight
            self.ydl._request_director.handlers.pop("CurlCFFI", None)
        if not self.ydl.params.get("forceprint") and not self.ydl.params.get("print_to_file"):
            # with nothing to --print, yt-dlp still builds the file name and renders four tables
            # at each of seven stages of every video (~1/3 of a small file's CPU)
            self.ydl._forceprint = _nothing_to_print
        self.tagger = _TagQueueIdPP()
        self.ydl.add_post_processor(self.tagger, when="pre_process")
        self.temp_dir = ""  # the current job's temporary directory (see the module docstring)
        self.ydl.cookiejar  # noqa: B018 - loaded at warm-up: a bad (or hung) cookie file shows now, not per job
        self._ie_by_shape: dict[str, str] = {}  # URL with the ID cut out -> extractor that took it

    def expect(self, url_template: str, extractor_key: str) -> None:
        """URLs made from ``url_template`` go to this extractor (found in the forkserver)."""
        self._ie_by_shape[url_template.replace("{id}", "\0")] = extractor_key

    def _shape(self, job: Job) -> str | None:
        quoted = urllib.parse.quote(job.video_id, safe="")
        return job.url.replace(quoted, "\0") if job.url.count(quoted) == 1 else None

    def _known_extractor(self, job: Job, shape: str | None) -> str | None:
        """The extractor that took URLs of this shape before, so that yt-dlp need not try its
        ~1,800 URL patterns again for every job of a url_template (verified, except Generic)."""
        key = self._ie_by_shape.get(shape) if shape else None
        if key is None or key == "Generic" or self.ydl.get_info_extractor(key).suitable(job.url):
            return key
        return None

    def _learn_extractor(self, shape: str | None, info: dict[str, Any]) -> None:
        key = info.get("extractor_key")
        if shape and isinstance(key, str):
            if len(self._ie_by_shape) >= 256:
                self._ie_by_shape.clear()
            self._ie_by_shape[shape] = key

    def _on_progress(self, d: dict[str, Any]) -> None:
        status = d.get("status")
        new = [os.path.abspath(n) for n in (d.get("filename"), d.get("tmpfilename")) if n and n != "-"]
        new = [n for n in new if n not in self.written]
        if new:
            self.written.extend(new)
            self.reporter.files(self.written)
        if status == "downloading":
            self._check_size(d)
            self.reporter.progress(float(d.get("downloaded_bytes") or 0),
                                   float(d.get("total_bytes") or d.get("total_bytes_estimate") or 0),
                                   float(d.get("speed") or 0), float(d.get("eta") or -1))
        elif status == "finished":
            size = d.get("total_bytes") or d.get("downloaded_bytes")
            if d.get("filename") and size:
                self.finished[os.path.abspath(d["filename"])] = int(size)
            self.reporter.progress(float(size or 0), float(size or 0), 0.0, 0.0)

    def _check_size(self, d: dict[str, Any]) -> None:
        """Refuse a download once the bytes received (every file of the job together) or a
        declared length pass ``max_filesize``: an endless body has no length to check up front."""
        limit = self.cfg.max_filesize
        if not limit:
            return
        self.received[d.get("tmpfilename") or d.get("filename") or ""] = int(d.get("downloaded_bytes") or 0)
        declared, got = int(d.get("total_bytes") or 0), sum(self.received.values())
        if declared > limit:
            raise SizeLimitExceeded(f"refused: the server announces {declared} bytes, more than "
                                    f"download.max_filesize ({limit} bytes)")
        if got > limit:
            raise SizeLimitExceeded(f"refused: received {got} bytes, more than download.max_filesize "
                                    f"({limit} bytes), and the file had not ended")

    def _on_postprocess(self, d: dict[str, Any]) -> None:
        if d.get("postprocessor") == self.tagger.pp_key():
            return  # ours, before the download: nothing is processed
        self.reporter.phase(PHASE_POSTPROCESSING)
        if d.get("postprocessor") != "MoveFiles":  # the final move (it always runs) keeps the bytes
            self.postprocessed = True  # fixups and post-processors rewrite the file: sizes change

    def run(self, job: Job) -> Outcome:
        self.logger.errors.clear()
        self.finished.clear()
        self.received.clear()
        self.written.clear()
        self.postprocessed = False
        self.temp_dir = job_temp_dir(self.cfg.directory, job.video_id)
        self.ydl.params["paths"] = {"home": self.cfg.directory, "temp": self.temp_dir}
        self.tagger.video_id = job.video_id
        netguard.take_refusals()
        self.reporter.phase(PHASE_EXTRACTING)
        try:
            with netguard.enforcing(self.policy):
                outcome = self._run(job)
        except SizeLimitExceeded as exc:
            outcome = Outcome(False, error=str(exc), kind=ErrorKind.PERMANENT)
        except DownloadError as exc:
            outcome = _failure(_reason(exc, self.logger.errors), _http_status(exc), os_errno(exc))
        except yt_dlp.utils.YoutubeDLError as exc:
            outcome = _failure(str(exc), None, os_errno(exc))
        finally:
            self.reporter.phase(PHASE_IDLE)
        if outcome.ok:  # a failed job's leftovers stay for its retry (or the recorder removes them)
            # its own directory only: removing the shared parent too would race another slot's
            # job creating its directory there (os.makedirs fails when the parent goes meanwhile)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        refused = netguard.take_refusals()
        if refused and not outcome.ok and "HTTP Error" not in (outcome.error or ""):
            # yt-dlp's wording of a failed connect varies by handler; say what happened instead
            outcome = Outcome(False, error=refused[0], kind=ErrorKind.PERMANENT)
        return outcome

    def _run(self, job: Job) -> Outcome:
        """Extract first (nothing is downloaded yet), decide, then download a single video."""
        ydl, shape = self.ydl, self._shape(job)
        info = ydl.extract_info(job.url, download=False, process=False, ie_key=self._known_extractor(job, shape))
        if not info:
            return _failure(_reason(None, self.logger.errors) or "yt-dlp returned no result")
        self._learn_extractor(shape, info)
        hops = 0
        while info.get("_type") == "url":  # a redirect or an embed handing over: extract that one, unprocessed
            if hops == MAX_URL_HOPS:
                return Outcome(False, error=f"more than {MAX_URL_HOPS} extractors handed the URL on",
                               kind=ErrorKind.PERMANENT)
            info = ydl.extract_info(info["url"], download=False, process=False, ie_key=info.get("ie_key"))
            hops += 1
            if not info:
                return _failure(_reason(None, self.logger.errors) or "yt-dlp returned no result")
        processed = False
        if info.get("_type") == "url_transparent":  # yt-dlp merges those itself; a playlist stays flat
            info, processed = ydl.process_ie_result(info, download=False), True
        if info.get("_type") in ("playlist", "multi_video"):
            return self._playlist(job, info, processed)
        if info.get("extractor_key") == "Generic" and info.get("direct") and not info.get("formats"):
            # the generic extractor's last resort: "not HTML, so maybe a video"; its Content-Type
            # said neither audio nor video (a direct link that does gets a format of that type)
            return Outcome(False, kind=ErrorKind.PERMANENT,
                           error="not a video: the answer's Content-Type is not audio/* or video/*")
        info = ydl.process_ie_result(info, download=True)
        if not info:
            return _failure(_reason(None, self.logger.errors) or "yt-dlp returned no result")
        return self._verify(info)

    def _playlist(self, job: Job, info: dict[str, Any], processed: bool) -> Outcome:
        """Fail a playlist at once, or list its entries (flat: nothing resolved or downloaded)
        as (video_id, url) rows for the recorder to queue."""
        if not self.cfg.expand_playlists:
            return Outcome(False, kind=ErrorKind.PERMANENT,
                           error="URL is a playlist, not a single video (set download.expand_playlists: true "
                                 "to queue its entries as rows of their own)")
        if not processed:
            info = self.ydl.process_ie_result(info, download=False)
        rows: dict[str, str] = {}
        for entry in info.get("entries") or ():
            url = _entry_url(entry, job.url)
            if url is not None:
                rows.setdefault(key_for_url(url), url)
        if not rows:
            return Outcome(False, error="URL is a playlist with no entries to queue", kind=ErrorKind.PERMANENT)
        return Outcome(True, entries=tuple(rows.items()), extractor=info.get("extractor_key"))

    def _verify(self, info: dict[str, Any]) -> Outcome:
        """Done only when the final file exists inside the directory with the expected size."""
        downloads = info.get("requested_downloads") or []
        path = (downloads[0].get("filepath") if downloads else None) or info.get("filepath")
        if not path:
            return Outcome(False, error="yt-dlp reported no output file", kind=ErrorKind.TRANSIENT)
        path = os.path.abspath(path)
        root = os.path.realpath(self.cfg.directory)
        if not os.path.realpath(path).startswith(root + os.sep):
            return Outcome(False, error=f"output path escapes download.directory: {path}",
                           kind=ErrorKind.INVALID)
        try:
            size = os.path.getsize(path)
        except OSError:
            return Outcome(False, error=f"final file is missing: {path}", kind=ErrorKind.TRANSIENT)
        # the downloader wrote the file in the job's temporary directory; yt-dlp moved it here
        written = os.path.join(self.temp_dir, os.path.relpath(path, os.path.abspath(self.cfg.directory)))
        expected = None if self.postprocessed else self.finished.get(written, self.finished.get(path))
        if size == 0 or (expected is not None and size != expected):
            # the file is exactly what the downloader wrote, so it is broken: remove it, or the
            # retry would take it for "already downloaded"
            os.unlink(path)
            return Outcome(False, error=f"final file has {size} bytes, expected {expected}",
                           kind=ErrorKind.TRANSIENT)
        ytdlp_id = info.get("id")
        return Outcome(True, file_path=path, file_size=size, extractor=info.get("extractor_key"),
                       ytdlp_id=ytdlp_id if isinstance(ytdlp_id, str) else None,
                       reused=not self.finished and not self.postprocessed)


def _nothing_to_print(key: str, info_dict: dict[str, Any] | None) -> dict[str, Any] | None:
    """``YoutubeDL._forceprint`` when nothing is to be printed: the copy its caller reads."""
    return dict(info_dict) if info_dict is not None else None


def _entry_url(entry: Any, playlist_url: str) -> str | None:
    """The URL to queue for one flat playlist entry, or None when it has no usable one."""
    if not isinstance(entry, dict):
        return None
    if entry.get("_type") in ("url", "url_transparent"):
        candidates = [entry.get("url")]
    else:  # resolved in place (a page's <video> tags): its page, unless that is the playlist itself
        candidates = [entry.get("webpage_url"), entry.get("url")]
    for url in candidates:
        if isinstance(url, str) and url != playlist_url:
            try:
                return validate_url(url)
            except InvalidVideoId:
                continue
    return None


def key_for_url(url: str) -> str:
    """The queue key of a URL: the extractor's ID when one is known offline and is a valid
    video ID, else a hash of the URL (``videofetchctl add URL`` and playlist entries agree)."""
    video_id = offline_id(url)
    if video_id:
        try:
            return validate_video_id(video_id)
        except InvalidVideoId:
            pass
    return id_for_url(url)


def _reason(exc: BaseException | None, errors: list[str]) -> str:
    text = str(exc) if exc is not None else ""
    if not text and errors:
        text = errors[-1]
    text = text.replace("ERROR: ", "", 1).strip()
    # "[generic] abc: Unable to ..." -> "Unable to ...": the row already names the video, and
    # equal reasons must compare equal for the one-shot summary
    text = re.sub(r"^\[[\w:.-]+\] [^:\s]+: ", "", text)
    return text or (type(exc).__name__ if exc else "")


def _http_status(exc: DownloadError) -> int | None:
    """The HTTP status behind a yt-dlp error, when there is one (exc_info carries the cause)."""
    cause = (getattr(exc, "exc_info", None) or (None, None, None))[1]
    status = getattr(cause, "status", None)
    return status if isinstance(status, int) else None


def _failure(message: str, http_status: int | None = None, errno: int | None = None) -> Outcome:
    return Outcome(False, error=message, kind=classify(message, http_status), errno=errno)


def offline_id(url: str) -> str | None:
    """The extractor's video ID for ``url`` when a specific extractor knows it without the network."""
    from yt_dlp.extractor import gen_extractor_classes
    for ie in gen_extractor_classes():
        if ie.ie_key() != "Generic" and ie.suitable(url):
            video_id = ie.get_temp_id(url)
            return str(video_id) if video_id else None
    return None
