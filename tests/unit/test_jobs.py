"""Job policy: which IDs are safe, how IDs become URLs, how real yt-dlp errors are classified,
and how long retries wait.

The error messages classified here are produced by running the real yt-dlp (through
``videofetchd.workers.download.Downloader``, the code path the workers use) against the local media server.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from mediaserver import MediaServer
from videofetchd.config import DownloadConfig
from videofetchd.errors import InvalidVideoId
from videofetchd.queue.jobs import (MAX_ID_LENGTH, ErrorKind, Job, Outcome, backoff_delay, classify, site_of,
                                    throttle_delay, url_for, validate_url, validate_video_id)
from videofetchd.workers.download import Downloader

TEMPLATE = "http://media.test/v/{id}.mp4"


# -- video IDs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("video_id", [
    "dQw4w9WgXcQ", "-8LkfJYfx2Q", "_OBlgSz8sSM", "--abcdefgh", "a", "x" * MAX_ID_LENGTH,
    "BV1xx411c7mD", "x8k2j3f", "12345678", "sm9", "a.b", "user:123", "ab@c", "v~1", "a+b"])
def test_accepts_real_ids(video_id: str) -> None:
    assert validate_video_id(video_id) == video_id


@pytest.mark.parametrize("video_id", [
    "--exec=touch x", "../../etc/passwd", "a/b", "a\\b", "a\x00b", "a\nb", "a\rb", "\x00", "x" * 10_000,
    "", "..", ".", "a b", " abc", "abc ", "a\tb", "$(touch x)", "`id`", "a;b", "a|b", "id=1", "a\x7fb",
    "x" * (MAX_ID_LENGTH + 1), "http:x/../y", "-o/tmp/x"])
def test_refuses_unsafe_ids(video_id: str) -> None:
    with pytest.raises(InvalidVideoId) as info:
        validate_video_id(video_id)
    msg = str(info.value)
    assert msg
    assert len(msg) < 300  # a 10 kB ID is not echoed back whole
    assert "\x00" not in msg and "\n" not in msg


@pytest.mark.parametrize("value", [None, 5, b"abc"])
def test_refuses_non_strings(value: Any) -> None:
    with pytest.raises(InvalidVideoId):
        validate_video_id(value)


def test_error_names_the_id() -> None:
    with pytest.raises(InvalidVideoId, match=r"a/b"):
        validate_video_id("a/b")


# -- URLs ---------------------------------------------------------------------------------------

def test_url_for_fills_the_template() -> None:
    assert url_for("dQw4w9WgXcQ", None, "https://www.youtube.com/watch?v={id}") == \
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    assert url_for("-8LkfJYfx2Q", None, TEMPLATE) == "http://media.test/v/-8LkfJYfx2Q.mp4"


@pytest.mark.parametrize("video_id, quoted", [
    ("user:123", "user%3A123"), ("ab@c", "ab%40c"), ("a+b", "a%2Bb"), ("v~1", "v~1"), ("a.b", "a.b")])
def test_url_for_percent_quotes_the_id(video_id: str, quoted: str) -> None:
    assert url_for(video_id, None, TEMPLATE) == f"http://media.test/v/{quoted}.mp4"


def test_url_for_prefers_the_rows_url() -> None:
    own = "https://example.org/watch?v=1&list=2"
    assert url_for("url-0123", own, TEMPLATE) == own


@pytest.mark.parametrize("video_id", ["a/b", "../../etc/passwd", "--exec=touch x", "", "\x1b[2Jowned"])
def test_url_for_refuses_bad_ids(video_id: str) -> None:
    with pytest.raises(InvalidVideoId):
        url_for(video_id, None, TEMPLATE)
    with pytest.raises(InvalidVideoId):  # a row's own URL does not excuse its ID (issue 13)
        url_for(video_id, "https://example.org/v", TEMPLATE)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x", "http://", "https://h/a b",
                                 "https://h/\x00", "https://h/" + "a" * 5000, "javascript:alert(1)"])
def test_url_for_refuses_bad_urls(url: str) -> None:
    with pytest.raises(InvalidVideoId):
        url_for("x", url, TEMPLATE)
    with pytest.raises(InvalidVideoId):
        validate_url(url)


def test_site_of() -> None:
    assert site_of("https://www.YouTube.com/watch?v=x") == "youtube.com"
    assert site_of("http://127.0.0.1:8080/v/x.mp4") == "127.0.0.1"


# -- classification of real yt-dlp errors -------------------------------------------------------

class _Reporter:
    def phase(self, phase: int) -> None:
        pass

    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None:
        pass

    def files(self, paths: list[str]) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    with MediaServer(default_size=8 * 1024) as srv:
        yield srv


@pytest.fixture(scope="module")
def downloader(tmp_path_factory: pytest.TempPathFactory) -> Downloader:
    directory = tmp_path_factory.mktemp("videos")
    # the local test server is on loopback, which downloads may not reach by default
    cfg = DownloadConfig(directory=str(directory), socket_timeout=5.0, ytdlp={"retries": 0},
                         allow_addresses=("127.0.0.0/8", "::1/128"))
    return Downloader(cfg, _Reporter())


def fetch(downloader: Downloader, url: str, video_id: str = "x") -> Outcome:
    return downloader.run(Job(row_id=1, video_id=video_id, url=url, attempt=1, claim_token="t"))


@pytest.mark.parametrize("video_id, kind, needle", [
    ("e404-gone", ErrorKind.PERMANENT, "404"),
    ("e403-denied", ErrorKind.TRANSIENT, "403"),  # signed media URLs expire with 403: retry
    ("e429-slow", ErrorKind.THROTTLED, "429"),
    ("e500-oops", ErrorKind.TRANSIENT, "500"),
])
def test_classifies_real_http_errors(server: MediaServer, downloader: Downloader, video_id: str,
                                     kind: ErrorKind, needle: str) -> None:
    outcome = fetch(downloader, server.url(video_id), video_id)
    assert not outcome.ok
    assert outcome.error and needle in outcome.error
    assert classify(outcome.error) is kind
    assert outcome.kind is kind


def test_classifies_connection_refused_as_transient(downloader: Downloader) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on the port now
    outcome = fetch(downloader, f"http://127.0.0.1:{port}/v/x.mp4")
    assert not outcome.ok
    assert outcome.error and "refused" in outcome.error.lower()
    assert outcome.kind is ErrorKind.TRANSIENT


def test_classifies_a_truncated_body_as_transient(server: MediaServer, downloader: Downloader) -> None:
    server.configure("short-body", drop_after=1000, drop_times=100)
    outcome = fetch(downloader, server.url("short-body"), "short-body")
    assert not outcome.ok
    assert outcome.error and "expected" in outcome.error
    assert outcome.kind is ErrorKind.TRANSIENT


def test_a_good_download_succeeds(server: MediaServer, downloader: Downloader) -> None:
    # the control case: the same downloader does work, so the failures above are the server's
    outcome = fetch(downloader, server.url("fine-1"), "fine-1")
    assert outcome.ok, outcome.error
    assert outcome.file_path and Path(outcome.file_path).stat().st_size == 8 * 1024


@pytest.mark.parametrize("message, kind", [
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", ErrorKind.PERMANENT),
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video",
     ErrorKind.PERMANENT),
    ("ERROR: [youtube] abc: Sign in to confirm you're not a bot. Use --cookies-from-browser",
     ErrorKind.THROTTLED),
    ("ERROR: [generic] x: Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name "
     "resolution>", ErrorKind.TRANSIENT),
    ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", ErrorKind.TRANSIENT),
    ("ERROR: [generic] x: Unable to download webpage: The read operation timed out", ErrorKind.TRANSIENT),
])
def test_classifies_known_site_messages(message: str, kind: ErrorKind) -> None:
    # YouTube's texts cannot come from the local server; these are yt-dlp's own wording
    assert classify(message) is kind


@pytest.mark.parametrize("status, kind", [
    (404, ErrorKind.PERMANENT), (410, ErrorKind.PERMANENT), (429, ErrorKind.THROTTLED), (500, ErrorKind.TRANSIENT),
    (503, ErrorKind.TRANSIENT), (403, ErrorKind.TRANSIENT)])
def test_http_status_wins_over_the_text(status: int, kind: ErrorKind) -> None:
    assert classify("Unable to extract something odd", status) is kind


# -- retry delays -------------------------------------------------------------------------------

@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_jitter_stays_within_half_and_full_nominal(attempt: int) -> None:
    base, cap = 30.0, 3600.0
    nominal = min(cap, base * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base, cap, rng) for _ in range(500)]
    assert all(nominal / 2 <= d <= nominal for d in delays), (min(delays), max(delays), nominal)
    assert max(delays) - min(delays) > nominal / 4  # it is jittered, not constant


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(1)
    lows = [min(backoff_delay(a, 10.0, 300.0, rng) for _ in range(50)) for a in range(1, 10)]
    assert lows[0] >= 5.0 and lows[1] >= 10.0 and lows[2] >= 20.0
    assert all(d <= 300.0 for d in (backoff_delay(a, 10.0, 300.0, rng) for a in range(1, 40)))


def test_backoff_attempt_zero_is_like_the_first() -> None:
    d = backoff_delay(0, 8.0, 100.0, random.Random(0))
    assert 4.0 <= d <= 8.0


def test_backoff_default_rng() -> None:
    assert 1.0 <= backoff_delay(1, 2.0, 10.0) <= 2.0


def test_backoff_stays_capped_for_huge_attempt_counts() -> None:
    # download.max_attempts has no maximum, and retry_backoff is a float (a duration)
    assert 1800.0 <= backoff_delay(2000, 30.0, 3600.0, random.Random(0)) <= 3600.0


def test_throttle_delay_doubles_and_caps() -> None:
    assert throttle_delay(1, 900.0) == 900.0
    assert throttle_delay(2, 900.0) == 1800.0
    assert throttle_delay(30, 900.0) == 24 * 3600.0


def test_leftovers_of_a_failed_job_are_removed_and_nothing_else(tmp_path: Path) -> None:
    from videofetchd.workers.recorder import remove_leftovers
    d = tmp_path / "videos"
    d.mkdir()
    leftovers = ["T [id].f137.mp4", "T [id].f137.mp4.part", "T [id].f140.m4a.ytdl", "T [id].f140.m4a.part-Frag3",
                 "T [id].f140.m4a.part-Frag3.part", "T [id].temp.mp4", "T [id].mp4.part"]
    kept = ["T [id].mp4", "T [id].en.vtt", "Other [id2].mp4.part", "T [id].f137.mp4.info.json"]
    for name in leftovers + kept:
        (d / name).write_bytes(b"x")
    outside = tmp_path / "elsewhere.mp4.part"
    outside.write_bytes(b"x")
    reported = [str(d / n) for n in ("T [id].f137.mp4", "T [id].f137.mp4.part", "T [id].f140.m4a",
                                     "T [id].f140.m4a.part", "T [id].mp4", "T [id].mp4.part")]
    removed = remove_leftovers(reported + [str(tmp_path / "elsewhere.mp4")], str(d))
    assert sorted(os.path.basename(p) for p in removed) == sorted(leftovers)
    assert sorted(os.listdir(d)) == sorted(kept) and outside.exists()
