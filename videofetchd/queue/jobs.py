"""Pure job policy: what a job is, which IDs are safe, how errors are classified, retry delays.

No I/O, no processes, no database: everything here is a function of its arguments, so the
supervisor, the store and the tests share one definition of each rule.
"""

from __future__ import annotations

import enum
import hashlib
import os
import random
import re
import urllib.parse
from dataclasses import dataclass

from ..errors import InvalidVideoId

#: a row to make ``done``: (video_id, file_path, file_size, found_by, extractor, ytdlp_id). Plain
#: tuples, because the scanner makes one per file and a tuple costs a fraction of a NamedTuple;
#: defined here so that the walker (which makes them) need not import the database layer (which
#: stores them). ``video_id`` is the queue's key; ``ytdlp_id`` yt-dlp's own ID of the video, when
#: known (an ``.info.json`` that names its queue ID has both, and they may differ)
DoneFile = tuple[str, str | None, int | None, str, str | None, str | None]

#: the directory, inside the download directory, where jobs download and post-process (one
#: subdirectory per queue ID); the scanner never looks inside
TEMP_DIR_NAME = ".videofetchd-tmp"


def job_temp_dir(directory: str, video_id: str) -> str:
    """Where the job of ``video_id`` writes before yt-dlp's final move (a valid ID is one path
    component: no '/', never '.' or '..')."""
    return os.path.join(directory, TEMP_DIR_NAME, video_id)


#: host -> yt-dlp extractor key (lowercased) for sites whose key is not the host's name
_SITE_EXTRACTORS = {"youtube.com": "youtube", "youtu.be": "youtube", "m.youtube.com": "youtube",
                    "music.youtube.com": "youtube", "youtube-nocookie.com": "youtube"}


def site_extractor(url: str) -> str:
    """The lowercased yt-dlp extractor key of ``url``'s site, as an archive line names it: a
    guess from the host name (``youtube`` for youtube.com and youtu.be, ``vimeo`` for vimeo.com,
    ``generic`` for an IP address), made without yt-dlp, which only the worker child loads."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    host = host[4:] if host.startswith("www.") else host
    if host in _SITE_EXTRACTORS:
        return _SITE_EXTRACTORS[host]
    labels = host.split(".")
    if len(labels) < 2 or labels[-1].isdigit() or ":" in host:  # an IP address: yt-dlp's generic extractor
        return "generic"
    return labels[-2]


def same_extractor(a: str | None, b: str | None) -> bool:
    """Can two sides' extractors name the same video? Yes unless both are known and differ
    (yt-dlp's ``extractor_key`` "Youtube" and an archive's "youtube" are the same)."""
    return not a or not b or a.lower() == b.lower()


MAX_ID_LENGTH = 200
MAX_URL_LENGTH = 4096
#: letters, digits and the punctuation real extractors use in IDs; no '/', '\\', spaces or '='
ID_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.:@~+]*")


PHASE_IDLE, PHASE_EXTRACTING, PHASE_DOWNLOADING, PHASE_POSTPROCESSING = 0, 1, 2, 3
PHASE_NAMES = {PHASE_IDLE: "idle", PHASE_EXTRACTING: "extracting", PHASE_DOWNLOADING: "downloading",
               PHASE_POSTPROCESSING: "postprocessing"}


class ErrorKind(str, enum.Enum):
    """How a failed attempt is treated."""

    PERMANENT = "permanent"  #: the video cannot be had (404, private, removed): fail at once
    TRANSIENT = "transient"  #: network, 5xx, truncated body: retry with backoff
    THROTTLED = "throttled"  #: 429 or a bot check: pause the whole site, retry later
    STALLED = "stalled"  #: no progress for stall_timeout: the child was killed; retry
    CRASHED = "crashed"  #: the child died (signal, OOM): retry
    TIMEOUT = "timeout"  #: job_timeout exceeded: retry
    INVALID = "invalid"  #: the row itself is unusable (bad ID): fail at once


@dataclass(frozen=True)
class Job:
    """What a worker child receives: enough to download, nothing to reach the database with."""

    row_id: int
    video_id: str
    url: str
    attempt: int
    claim_token: str
    identity: str | None = None  #: the egress identity (download.identities) it runs under


@dataclass(frozen=True)
class Outcome:
    """What a worker child returns for one job."""

    ok: bool
    file_path: str | None = None
    file_size: int | None = None
    extractor: str | None = None
    ytdlp_id: str | None = None  #: yt-dlp's own ID of the video downloaded (may differ from the queue's)
    #: the final file was there before the job (yt-dlp downloaded nothing): maybe another row's video
    reused: bool = False
    error: str | None = None
    kind: ErrorKind | None = None  #: None: not the row's fault; handed back without charging an attempt
    condition: str | None = None  #: the host condition (health name) that made the job fail, if any
    #: the errno of the OSError behind a failure (found in the exception chain, never in its text)
    errno: int | None = None
    #: a playlist expanded (``download.expand_playlists``): (video_id, url) of each entry, to be
    #: queued as rows of their own; the child never touches the database, the recorder inserts them
    entries: tuple[tuple[str, str], ...] = ()
    #: files the job wrote (yt-dlp's file names, partial ones included), so that a row that fails
    #: for good can have its leftovers removed; filled in by the supervisor from the slot
    files: tuple[str, ...] = ()


def validate_video_id(video_id: str) -> str:
    """Return ``video_id`` if it is safe to queue, else raise InvalidVideoId saying why."""
    if not isinstance(video_id, str) or not video_id:
        raise InvalidVideoId("empty video ID")
    shown = video_id if len(video_id) <= 40 else video_id[:37] + "..."
    if len(video_id) > MAX_ID_LENGTH:
        raise InvalidVideoId(f"video ID too long ({len(video_id)} characters, at most {MAX_ID_LENGTH})")
    if any(ord(c) < 32 or ord(c) == 127 for c in video_id):
        raise InvalidVideoId(f"video ID {shown!r} contains control characters")
    if video_id in (".", "..") or not ID_RE.fullmatch(video_id):
        raise InvalidVideoId(
            f"invalid video ID {shown!r}: use letters, digits and - _ . : @ ~ + "
            "(no spaces, slashes or '='); give a full http(s) URL to queue a page")
    return video_id


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def validate_url(url: str) -> str:
    if len(url) > MAX_URL_LENGTH:
        raise InvalidVideoId(f"URL too long ({len(url)} characters, at most {MAX_URL_LENGTH})")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidVideoId("URL contains spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidVideoId(f"not an http(s) URL: {url[:60]!r}")
    return url


def id_for_url(url: str) -> str:
    """A stable queue key for a page URL that has no extractor ID we can know offline."""
    return "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]


def url_for(video_id: str, url: str | None, template: str) -> str:
    """The URL a job downloads: the row's own URL, or the template with the ID percent-quoted.

    The ID is checked either way: it is shown by ``status`` and ``list`` and becomes part of
    file names, and a row written straight into the database may carry anything."""
    validate_video_id(video_id)
    if url:
        return validate_url(url)
    return template.format(id=urllib.parse.quote(video_id, safe=""))


def site_of(url: str) -> str:
    """The throttling unit: the host name without a leading www."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


_PERMANENT = re.compile(
    r"HTTP Error 40[0124]|HTTP Error 410|HTTP Error 451|Video unavailable|This video is private|"
    r"Private video|has been removed|no longer available|account .*terminated|"
    r"Unsupported URL|is not a valid URL|members-only|This video is only available|"
    r"copyright claim|age-restricted|not available in your country|Premieres in|"
    r"This live event will begin|Unable to extract|No video formats found|"
    r"download\.allow_addresses|download\.max_filesize|File too large|not a video:",
    re.IGNORECASE)
_THROTTLED = re.compile(
    r"HTTP Error 429|Too Many Requests|confirm you.re not a bot|rate.?limit|"
    r"sign in to confirm|temporarily blocked", re.IGNORECASE)


#: HTTP statuses that mean the video cannot be had; 403 is not among them (signed media URLs
#: expire and answer 403, and a retry with a fresh extraction succeeds)
PERMANENT_STATUSES = frozenset({400, 401, 404, 410, 451})


def classify(message: str, http_status: int | None = None) -> ErrorKind:
    """Sort a yt-dlp error into permanent, throttled or transient, by HTTP status when known."""
    if http_status == 429:
        return ErrorKind.THROTTLED
    if http_status in PERMANENT_STATUSES:
        return ErrorKind.PERMANENT
    if http_status is not None and (http_status >= 500 or http_status == 403):
        return ErrorKind.TRANSIENT
    if _THROTTLED.search(message):
        return ErrorKind.THROTTLED
    if _PERMANENT.search(message):
        return ErrorKind.PERMANENT
    return ErrorKind.TRANSIENT


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential with "equal jitter", capped.

    Half the delay is fixed and half random, so retries of rows that failed together spread out
    but none comes back sooner than half its nominal delay.
    """
    rng = rng or random.Random()
    nominal = min(cap, base * (2 ** min(max(0, attempt - 1), 60)))
    return nominal / 2 + rng.uniform(0, nominal / 2)


def throttle_delay(strikes: int, base: float, cap: float = 24 * 3600.0) -> float:
    """Site-wide pause after ``strikes`` consecutive throttling answers: doubles while it repeats."""
    return min(cap, base * (2 ** min(max(0, strikes - 1), 60)))


#: who leases rows: the daemon, a one-shot ``videofetchctl fetch``, a library scan
OWNER_SCOPES = ("daemon", "fetch", "scan")


def lease_owner(node: str, pid: int, scope: str) -> str:
    """The ``lease_owner`` a process writes on the rows it claims: ``<node>:<pid>@<scope>``.

    The node and the pid keep two processes from ever renewing (or releasing) each other's
    leases as their own; the scope tells an operator, and a restarted daemon, what kind of
    process holds a row (two pid namespaces under one host name can repeat a pid, not both it
    and the scope)."""
    if scope not in OWNER_SCOPES:
        raise ValueError(f"lease scope must be one of {', '.join(OWNER_SCOPES)}, got {scope!r}")
    return f"{node}:{pid}@{scope}"


def parse_owner(owner: str) -> tuple[str, int, str] | None:
    """(node, pid, scope) of a ``lease_owner``, or None when it is not one of ours. The form of
    earlier versions, ``<node>:<pid>``, reads with the scope "" (rows they left after an upgrade)."""
    head, at, scope = owner.rpartition("@")
    if not at or scope not in OWNER_SCOPES:
        head, scope = owner, ""
    node, colon, pid = head.rpartition(":")
    if not colon or not node or not pid.isdigit():
        return None
    return node, int(pid), scope
