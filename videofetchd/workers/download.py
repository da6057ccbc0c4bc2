"""One download through yt-dlp's Python API. The only module that imports ``yt_dlp``.

Runs inside a worker child. A ``YoutubeDL`` object is built once per config generation and
reused for every job of that generation (a new one costs ~140 ms; a warm one fetches a small
file in ~35 ms). Progress and post-processor hooks report to a ``Reporter`` that the worker
wires to shared memory the parent reads; nothing here touches the database.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any, Protocol

import yt_dlp
from yt_dlp.utils import DownloadError

from ..config import DownloadConfig
from ..queue.jobs import PHASE_EXTRACTING, PHASE_IDLE, PHASE_POSTPROCESSING, ErrorKind, Job, Outcome, classify

#: YoutubeDL params videofetchd sets itself; ``download.ytdlp`` may not override them
RESERVED_PARAMS = frozenset({"progress_hooks", "postprocessor_hooks", "logger", "paths", "outtmpl",
                             "noplaylist", "quiet", "noprogress", "progress_with_newline"})


class Reporter(Protocol):
    def phase(self, phase: int) -> None: ...
    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None: ...


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


class Downloader:
    """A warm YoutubeDL for one config generation and egress identity, plus the bookkeeping of
    the current job. The identity's ``ytdlp`` and ``source_address`` go over ``download.ytdlp``."""

    def __init__(self, cfg: DownloadConfig, reporter: Reporter, identity: str | None = None) -> None:
        self.cfg = cfg
        self.reporter = reporter
        self.logger = _Logger()
        self.finished: dict[str, int] = {}  # file name -> bytes, from 'finished' progress events
        self.postprocessed = False
        params: dict[str, Any] = {
            "socket_timeout": cfg.socket_timeout,
            "retries": 3,
            "fragment_retries": 3,
            "continuedl": True,
            "cachedir": False,
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
        })
        self.ydl = yt_dlp.YoutubeDL(params)
        self._ie_by_shape: dict[str, str] = {}  # URL with the ID cut out -> extractor that took it

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
        if status == "downloading":
            self.reporter.progress(float(d.get("downloaded_bytes") or 0),
                                   float(d.get("total_bytes") or d.get("total_bytes_estimate") or 0),
                                   float(d.get("speed") or 0), float(d.get("eta") or -1))
        elif status == "finished":
            size = d.get("total_bytes") or d.get("downloaded_bytes")
            if d.get("filename") and size:
                self.finished[os.path.abspath(d["filename"])] = int(size)
            self.reporter.progress(float(size or 0), float(size or 0), 0.0, 0.0)

    def _on_postprocess(self, d: dict[str, Any]) -> None:
        self.reporter.phase(PHASE_POSTPROCESSING)
        self.postprocessed = True  # fixups and post-processors rewrite the file: sizes change

    def run(self, job: Job) -> Outcome:
        self.logger.errors.clear()
        self.finished.clear()
        self.postprocessed = False
        self.reporter.phase(PHASE_EXTRACTING)
        shape = self._shape(job)
        try:
            info = self.ydl.extract_info(job.url, download=True, ie_key=self._known_extractor(job, shape))
        except DownloadError as exc:
            return _failure(_reason(exc, self.logger.errors), _http_status(exc))
        except yt_dlp.utils.YoutubeDLError as exc:
            return _failure(str(exc))
        finally:
            self.reporter.phase(PHASE_IDLE)
        if not info:
            return _failure(_reason(None, self.logger.errors) or "yt-dlp returned no result")
        self._learn_extractor(shape, info)
        return self._verify(info)

    def _verify(self, info: dict[str, Any]) -> Outcome:
        """Done only when the final file exists inside the directory with the expected size."""
        if info.get("_type") in ("playlist", "multi_video"):
            return Outcome(False, error="URL is a playlist, not a single video", kind=ErrorKind.PERMANENT)
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
        expected = None if self.postprocessed else self.finished.get(path)
        if size == 0 or (expected is not None and size != expected):
            # the file is exactly what the downloader wrote, so it is broken: remove it, or the
            # retry would take it for "already downloaded"
            os.unlink(path)
            return Outcome(False, error=f"final file has {size} bytes, expected {expected}",
                           kind=ErrorKind.TRANSIENT)
        return Outcome(True, file_path=path, file_size=size, extractor=info.get("extractor_key"))


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


def _failure(message: str, http_status: int | None = None) -> Outcome:
    return Outcome(False, error=message, kind=classify(message, http_status))


def warm_imports() -> None:
    """Load and compile what the first job would otherwise load lazily (every extractor class and
    its URL pattern, ~0.3 s of CPU), so that children forked afterwards start warm."""
    from yt_dlp.extractor import gen_extractor_classes
    for ie in gen_extractor_classes():
        ie.suitable("http://warm-up.invalid/")


def offline_id(url: str) -> str | None:
    """The extractor's video ID for ``url`` when a specific extractor knows it without the network."""
    from yt_dlp.extractor import gen_extractor_classes
    for ie in gen_extractor_classes():
        if ie.ie_key() != "Generic" and ie.suitable(url):
            video_id = ie.get_temp_id(url)
            return str(video_id) if video_id else None
    return None
