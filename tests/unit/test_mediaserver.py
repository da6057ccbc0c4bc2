"""Tests of the local test media server (tests/mediaserver.py), with real HTTP clients and real yt-dlp.

Besides checking the server, the yt-dlp tests pin down how yt-dlp (Python API, ``YoutubeDL``)
reacts to each injected fault, because videofetchd classifies errors from exactly these
exceptions and messages.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import yt_dlp
import yt_dlp.networking.exceptions

from helpers import wait_until
from mediaserver import MediaServer, RequestRecord, parse_size

KiB = 1024
MiB = 1024 * KiB
SIZE = 50 * KiB  # the default size of a video
MEDIASERVER_PY = Path(__file__).resolve().parent.parent / "mediaserver.py"


@pytest.fixture
def server() -> Iterator[MediaServer]:
    with MediaServer() as srv:
        yield srv


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET",
        timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def records(srv: MediaServer, video_id: str) -> list[RequestRecord]:
    return [r for r in srv.requests() if r.video_id == video_id]


def final_records(srv: MediaServer, video_id: str, count: int) -> list[RequestRecord]:
    """The records of an ID once there are ``count`` of them and none is still in progress."""
    def ready() -> list[RequestRecord] | None:
        recs = records(srv, video_id)
        return recs if len(recs) == count and all(r.outcome != "in-progress" for r in recs) else None
    return wait_until(ready, message=f"{count} finished requests for {video_id}")


# -- plain HTTP ------------------------------------------------------------------------------------

def test_serves_deterministic_content_with_headers(server: MediaServer) -> None:
    assert server.url_template == server.base_url + "/v/{id}.mp4"
    assert server.url_template.format(id="abc") == server.url("abc")
    status, headers, body = get(server.url("abc"))
    assert status == 200
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Content-Length"] == str(SIZE)
    assert headers["Accept-Ranges"] == "bytes"
    assert body == server.content("abc") and len(body) == SIZE
    assert server.sha256("abc") == hashlib.sha256(body).hexdigest()
    assert server.content("other") != body
    with MediaServer(default_size=SIZE) as other:  # same bytes in every server and process
        assert other.content("abc") == body
    assert server.bytes_sent_total == SIZE


def test_configured_size_and_percent_decoded_id(server: MediaServer) -> None:
    server.configure("a b/ü", size=8 * MiB)
    start = time.monotonic()
    content = server.content("a b/ü")
    assert len(content) == 8 * MiB and time.monotonic() - start < 2
    assert "%20" in server.url("a b/ü")
    status, _, body = get(server.url("a b/ü"))
    assert status == 200 and body == content
    assert server.requests()[-1].video_id == "a b/ü"
    assert server.body_requests("a b/ü") == 1


def test_range_requests(server: MediaServer) -> None:
    content = server.content("r")
    status, headers, body = get(server.url("r"), {"Range": "bytes=1000-"})
    assert status == 206 and body == content[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
    assert headers["Content-Length"] == str(SIZE - 1000)
    status, headers, body = get(server.url("r"), {"Range": "bytes=10-19"})
    assert status == 206 and body == content[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{SIZE}"
    status, headers, body = get(server.url("r"), {"Range": f"bytes={SIZE - 5}-{SIZE + 100}"})
    assert status == 206 and body == content[-5:]
    status, headers, _ = get(server.url("r"), {"Range": f"bytes={SIZE}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{SIZE}"
    assert [r.range_start for r in records(server, "r")] == [1000, 10, SIZE - 5, None]
    assert [r.status for r in records(server, "r")] == [206, 206, 206, 416]


def test_head_and_unknown_paths(server: MediaServer) -> None:
    status, headers, body = get(server.url("h"), method="HEAD")
    assert (status, body) == (200, b"") and headers["Content-Length"] == str(SIZE)
    assert server.body_requests("h") == 0  # HEAD is not a body request
    for path in ("/", "/v/h.webm", "/v/h.mp4/x", "/x/h.mp4"):
        assert get(server.base_url + path)[0] == 404
    assert [r.video_id for r in server.requests()] == ["h", None, None, None, None]
    assert [r.method for r in server.requests()] == ["HEAD", "GET", "GET", "GET", "GET"]


@pytest.mark.parametrize("status", [404, 403, 429, 500])
def test_error_prefixes_always_fail(server: MediaServer, status: int) -> None:
    video_id = f"e{status}-x"
    assert get(server.url(video_id))[0] == status
    assert get(server.url(video_id))[0] == status
    assert get(server.url(video_id), method="HEAD")[0] == status
    assert server.body_requests(video_id) == 2
    assert [r.status for r in records(server, video_id)] == [status] * 3


def test_fail_times_then_success(server: MediaServer) -> None:
    server.configure("flaky", fail_status=503, fail_times=2)
    assert [get(server.url("flaky"))[0] for _ in range(3)] == [503, 503, 200]
    server.configure("e429-ok", fail_times=1)  # the prefix supplies the status
    assert [get(server.url("e429-ok"))[0] for _ in range(2)] == [429, 200]
    assert server.body_requests("flaky") == 3


def test_throttle_per_connection_rate() -> None:
    rate = 2 * MiB
    with MediaServer(default_size=MiB, rate_bps=rate) as srv:
        srv.configure("fast", rate_bps=8 * MiB)
        results: dict[str, float] = {}

        def fetch(video_id: str) -> None:
            start = time.monotonic()
            assert get(srv.url(video_id))[2] == srv.content(video_id)
            results[video_id] = time.monotonic() - start

        threads = [threading.Thread(target=fetch, args=(v,)) for v in ("a", "b", "fast")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Per connection: two concurrent 1 MiB downloads at 2 MiB/s each take ~0.5 s, not 1 s.
    # The lower bounds are tight (the server never runs ahead of its rate); the upper ones leave
    # room for a loaded machine.  Measured: 99-100 % of the rate for 1-8 MiB at 2 MiB/s.
    for video_id in ("a", "b"):
        assert 0.47 < results[video_id] < 0.9, results
    assert 0.11 < results["fast"] < 0.45, results


def test_drop_closes_mid_body_once(server: MediaServer) -> None:
    with urllib.request.urlopen(server.url("drop-1"), timeout=5) as resp:
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
    assert len(info.value.partial) == SIZE // 2
    assert info.value.partial == server.content("drop-1")[:SIZE // 2]
    assert get(server.url("drop-1"))[2] == server.content("drop-1")  # only the first one drops
    assert [(r.bytes_sent, r.outcome) for r in final_records(server, "drop-1", 2)] == [
        (SIZE // 2, "dropped"), (SIZE, "complete")]

    server.configure("d2", drop_after=100, drop_times=2)
    for _ in range(2):
        with urllib.request.urlopen(server.url("d2"), timeout=5) as resp:
            with pytest.raises(http.client.IncompleteRead):
                resp.read()
    assert get(server.url("d2"))[0] == 200


def test_stall_hangs_until_released(server: MediaServer) -> None:
    content = server.content("stall-1")
    with urllib.request.urlopen(server.url("stall-1"), timeout=5) as resp:
        assert resp.read(SIZE // 2) == content[:SIZE // 2]
        wait_until(lambda: server.stalled_count == 1, message="server never stalled")
        assert records(server, "stall-1")[0].outcome == "in-progress"
        server.release_stalls()
        assert resp.read() == content[SIZE // 2:]
    wait_until(lambda: records(server, "stall-1")[0].outcome == "stalled")
    assert server.stalled_count == 0
    assert get(server.url("stall-1"))[2] == content  # only the first one stalls


def test_stall_ends_when_the_client_leaves(server: MediaServer) -> None:
    with urllib.request.urlopen(server.url("stall-2"), timeout=5) as resp:
        resp.read(SIZE // 2)
        wait_until(lambda: server.stalled_count == 1)
    wait_until(lambda: server.stalled_count == 0, message="stall not ended by the client leaving")
    assert final_records(server, "stall-2", 1)[0].outcome == "stalled"


def test_stop_is_quick_with_stalled_and_throttled_connections() -> None:
    srv = MediaServer(default_size=4 * MiB).start()
    srv.configure("slow", rate_bps=10 * KiB)
    srv.configure("stall-x", stall_after=1024)
    url = srv.url("slow")
    stalled = urllib.request.urlopen(srv.url("stall-x"), timeout=5)
    slow = urllib.request.urlopen(url, timeout=5)
    with stalled, slow:
        stalled.read(1024)
        slow.read(1024)
        wait_until(lambda: srv.stalled_count == 1)
        start = time.monotonic()
        srv.stop()
        assert time.monotonic() - start < 1.0
        with pytest.raises(http.client.IncompleteRead):
            slow.read()
    outcomes = {r.video_id: r.outcome for r in srv.requests()}
    assert outcomes == {"stall-x": "stalled", "slow": "aborted"}
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    srv.stop()  # idempotent


def test_concurrent_clients_and_request_counting(server: MediaServer) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                video_id = f"c{i % 5}"
                assert get(server.url(video_id))[2] == server.content(video_id)
        except BaseException as exc:  # noqa: B902 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [server.body_requests(f"c{i}") for i in range(5)] == [40] * 5
    assert len(server.requests()) == 200
    wait_until(lambda: all(r.outcome != "in-progress" for r in server.requests()))
    assert all(r.outcome == "complete" and r.bytes_sent == SIZE for r in server.requests())
    assert server.bytes_sent_total == 200 * SIZE


def test_parse_size() -> None:
    assert parse_size("2MiB") == 2 * MiB
    assert parse_size("50KiB") == parse_size("50k") == 50 * KiB
    assert parse_size("1MB") == 1_000_000
    assert parse_size("1.5M") == 3 * MiB // 2
    assert parse_size("8000") == 8000
    with pytest.raises(ValueError):
        parse_size("fast")


def test_script_prints_template_and_stops_on_sigterm() -> None:
    cmd = [sys.executable, str(MEDIASERVER_PY), "--port", "0", "--rate", "4MiB", "--size", "1KiB"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        template = proc.stdout.readline().strip()
        assert template.startswith("http://127.0.0.1:") and template.endswith("/v/{id}.mp4")
        status, headers, body = get(template.format(id="cli"))
        assert status == 200 and len(body) == 1024
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


# -- real yt-dlp -----------------------------------------------------------------------------------

class _QuietLogger:
    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug


def ydl_download(srv: MediaServer, video_id: str, out: Path, **params: Any) -> dict[str, Any]:
    """What videofetchd does: YoutubeDL(...).extract_info(url_template.format(id=...), download=True)."""
    opts = {"outtmpl": str(out / "%(id)s.%(ext)s"), "quiet": True, "noprogress": True,
            "cachedir": False, "logger": _QuietLogger(), **params}
    with yt_dlp.YoutubeDL(opts) as ydl:
        info: dict[str, Any] = ydl.extract_info(srv.url_template.format(id=video_id), download=True)
    return info


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ytdlp_downloads_direct_file(server: MediaServer, tmp_path: Path) -> None:
    info = ydl_download(server, "clip1", tmp_path)
    assert info["extractor"] == "generic" and info["id"] == "clip1" and info["ext"] == "mp4"
    assert sha256_file(tmp_path / "clip1.mp4") == server.sha256("clip1")
    assert os.listdir(tmp_path) == ["clip1.mp4"]
    # The generic extractor's probe GET (reads the headers only) + the download GET.
    assert server.body_requests("clip1") == 2
    assert [r.range_start for r in records(server, "clip1")] == [None, None]


def test_ytdlp_dropped_connection(server: MediaServer, tmp_path: Path) -> None:
    # Observed with yt-dlp 2026.10.26: through the Python API the downloader's `retries` defaults to
    # 0 (the CLI's default of 10 is not applied), so a dropped connection is NOT retried: the
    # downloader sees fewer bytes than Content-Length (ContentTooShortError), extract_info raises
    # DownloadError("ERROR: \r[download] Got error: Downloaded 25600 bytes, expected 51200 bytes")
    # with exc_info (None, None, None), and leaves <id>.mp4.part holding the 25600 bytes received.
    # With yt-dlp[default] (the sites extra) yt-dlp reads through requests/urllib3, whose wording is
    # "25600 bytes read, 25600 more expected", and the .part keeps only what reached the file
    # before urllib3 raised (whole 5 KiB blocks, 15360 bytes here); the resume starts there.
    # A second extract_info call (continuedl defaults to True) probes again, then resumes with
    # "Range: bytes=25600-" (206) and completes: 4 GETs in all.
    with pytest.raises(yt_dlp.utils.DownloadError) as info:
        ydl_download(server, "drop-a", tmp_path)
    assert str(info.value) in ("ERROR: \r[download] Got error: Downloaded 25600 bytes, expected 51200 bytes",
                               "ERROR: \r[download] Got error: 25600 bytes read, 25600 more expected")
    assert info.value.exc_info == (None, None, None)
    kept = (tmp_path / "drop-a.mp4.part").stat().st_size
    assert 0 < kept <= SIZE // 2
    assert server.body_requests("drop-a") == 2  # probe, dropped download
    ydl_download(server, "drop-a", tmp_path)
    assert sha256_file(tmp_path / "drop-a.mp4") == server.sha256("drop-a")
    assert os.listdir(tmp_path) == ["drop-a.mp4"]
    assert [(r.range_start, r.status, r.outcome) for r in final_records(server, "drop-a", 4)] == [
        (None, 200, "client-gone"), (None, 200, "dropped"), (None, 200, "complete"),
        (kept, 206, "complete")]

    # With retries > 0 the same extract_info call resumes from the .part with a Range request
    # (3 GETs: probe, dropped download, "Range: bytes=25600-").
    ydl_download(server, "drop-b", tmp_path, retries=3)
    assert sha256_file(tmp_path / "drop-b.mp4") == server.sha256("drop-b")
    starts = [r.range_start for r in records(server, "drop-b")]
    assert starts[:2] == [None, None] and len(starts) == 3 and 0 < (starts[2] or 0) <= SIZE // 2, starts


@contextlib.contextmanager
def collect_ytdlp_leaked_sockets() -> Iterator[None]:
    """Run a yt-dlp call that times out, then close the socket it leaks (see the test below).

    The garbage collector closes it with a ResourceWarning, which filterwarnings=error would turn
    into an unraisable-exception failure of whatever test happens to trigger that collection. The
    automatic collector is off meanwhile: a collection that some allocation happened to trigger
    closed the socket early, and the test below then saw no stalled connection (a flaky failure).
    """
    enabled = gc.isenabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()
            gc.collect()


def test_ytdlp_stalled_connection(server: MediaServer, tmp_path: Path) -> None:
    # Observed with yt-dlp 2026.10.26 and socket_timeout=1: the download read times out after ~1 s;
    # with the default retries=0 extract_info raises DownloadError("ERROR: \r[download] Got error:
    # timed out") with exc_info (None, None, None), leaving a .part that holds only what yt-dlp had
    # written (whole read blocks, e.g. 15360 of the 25600 bytes sent; the partial block being read
    # is lost).  A second call resumes with "Range: bytes=<size of .part>-".  With retries > 0 the
    # same call resumes the same way after the timeout.
    # yt-dlp does not close the timed-out response: it stays referenced from a reference cycle
    # (real_download frame -> RetryManager.error -> exception traceback -> frames), so its socket
    # stays open (the server keeps stalling) until the cyclic GC runs, and the GC then emits
    # "ResourceWarning: unclosed <socket.socket [closed] ...>".
    start = time.monotonic()
    with collect_ytdlp_leaked_sockets():
        try:
            ydl_download(server, "stall-a", tmp_path, socket_timeout=1)
        except yt_dlp.utils.DownloadError as exc:
            message, exc_info = str(exc), exc.exc_info
        else:
            pytest.fail("no DownloadError")
        assert 0.9 < time.monotonic() - start < 5
        assert server.stalled_count == 1  # the client socket is still open...
    wait_until(lambda: server.stalled_count == 0)  # ...until collected
    # urllib's wording, or (yt-dlp[default]: requests/urllib3) "HTTPConnectionPool(...): Read timed out."
    assert re.fullmatch(r"ERROR: \r\[download\] Got error: (timed out|HTTPConnectionPool\(.*\): Read timed out\.)",
                        message), message
    assert exc_info == (None, None, None)
    partial = (tmp_path / "stall-a.mp4.part").stat().st_size
    assert 0 < partial <= SIZE // 2
    assert server.body_requests("stall-a") == 2
    ydl_download(server, "stall-a", tmp_path, socket_timeout=1)
    assert sha256_file(tmp_path / "stall-a.mp4") == server.sha256("stall-a")
    assert [(r.range_start, r.outcome) for r in final_records(server, "stall-a", 4)] == [
        (None, "client-gone"), (None, "stalled"), (None, "complete"), (partial, "complete")]

    with collect_ytdlp_leaked_sockets():
        ydl_download(server, "stall-b", tmp_path, socket_timeout=1, retries=3)
    assert sha256_file(tmp_path / "stall-b.mp4") == server.sha256("stall-b")
    resumed = records(server, "stall-b")[-1].range_start
    assert len(records(server, "stall-b")) == 3 and resumed is not None and 0 < resumed <= SIZE // 2


@pytest.mark.parametrize("status, reason", [
    (404, "Not Found"), (403, "Forbidden"), (429, "Too Many Requests"), (500, "Internal Server Error")])
def test_ytdlp_http_errors(server: MediaServer, tmp_path: Path, status: int, reason: str) -> None:
    # Observed with yt-dlp 2026.10.26: the error happens on the generic extractor's first GET, so it
    # is an extraction error; yt-dlp makes exactly one request even with retries=3, and raises
    # DownloadError whose exc_info holds the yt_dlp.networking.exceptions.HTTPError (with .status).
    video_id = f"e{status}-v"
    with pytest.raises(yt_dlp.utils.DownloadError) as info:
        ydl_download(server, video_id, tmp_path, retries=3)
    assert str(info.value) == (f"ERROR: [generic] {video_id}: Unable to download webpage: "
                               f"HTTP Error {status}: {reason} (caused by <HTTPError {status}: {reason}>)")
    exc_type, exc, _ = info.value.exc_info
    assert exc_type is yt_dlp.networking.exceptions.HTTPError
    assert isinstance(exc, yt_dlp.networking.exceptions.HTTPError) and exc.status == status
    # the error holds the response; through requests/urllib3 (yt-dlp[default]) its socket stays open
    # until closed, and a garbage collection in some later test would report it unclosed
    exc.response.close()
    assert server.body_requests(video_id) == 1
    assert os.listdir(tmp_path) == []
