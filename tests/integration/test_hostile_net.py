"""Hostile sites and queue writers against the real one-shot fetch (issue 13): internal addresses,
redirects into them, non-media "direct links", endless bodies, playlists and escape sequences.

``sites.Site`` on 127.0.0.2 plays the public web (the tests' ``download.allow_addresses`` names
it); the media server on 127.0.0.1 plays an internal service (named or not, per test). Each test
runs ``videofetchctl fetch`` as a process and reads the queue straight from SQLite.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from netproxy import FreezableProxy
from sites import Site

PUBLIC = ["127.0.0.2/32"]  #: the "public" site's address; the media server's 127.0.0.1 is not in it


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with MediaServer(default_size=20 * 1024) as srv:
        yield srv


@pytest.fixture
def site() -> Iterator[Site]:
    with Site("127.0.0.2") as s:
        yield s


def setup(tmp: Path, media: MediaServer, urls: dict[str, str], **download: Any) -> Path:
    """A config plus a queue holding ``urls`` (video_id -> url), written as another program would."""
    cfg = vfd.write_config(tmp, url_template=media.url_template, download={"max_attempts": 2, **download})
    assert vfd.ctl(cfg, "add", "placeholder0").returncode == 0  # creates the database and its schema
    con = sqlite3.connect(tmp / "queue.db")
    with con:
        con.execute("DELETE FROM videos")
        con.executemany("INSERT INTO videos (video_id, url) VALUES (?, ?)", list(urls.items()))
    con.close()
    return cfg


def fetch(cfg: Path) -> Any:
    return vfd.ctl(cfg, "fetch", timeout=180)


def by_id(tmp: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(tmp / "queue.db")}


def files(tmp: Path) -> list[str]:
    videos = tmp / "videos"
    return sorted(os.listdir(videos)) if videos.exists() else []


def failed_for_good(row: dict[str, Any], needle: str) -> None:
    assert row["status"] == "failed", row
    assert row["error_kind"] == "permanent" and row["attempts"] == 1, row  # refused, never retried
    assert needle in row["last_error"], row


# -- where a download may connect -------------------------------------------------------------------

def test_row_urls_at_loopback_are_refused_by_address_and_by_name(tmp_path: Path, media: MediaServer) -> None:
    local = media.url("secret")
    cfg = setup(tmp_path, media, {"byaddr": local, "byname": local.replace("127.0.0.1", "localhost")},
                allow_addresses=[])
    r = fetch(cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = by_id(tmp_path)
    for vid in ("byaddr", "byname"):
        failed_for_good(rows[vid], "loopback address, not in download.allow_addresses")
    assert media.requests() == [] or all(x.video_id != "secret" for x in media.requests())
    assert files(tmp_path) == []


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(tmp_path: Path, media: MediaServer,
                                                                site: Site) -> None:
    before = len(media.requests())
    site.page("/clip.mp4", b"\0" * 4096, "video/mp4")
    urls = {"tointernal": site.redirect("/go", media.url("internal-secret")),
            "tosite": site.redirect("/go-public", site.url("/clip.mp4"))}  # allowed all the way: works
    cfg = setup(tmp_path, media, urls, allow_addresses=PUBLIC)
    fetch(cfg)
    rows = by_id(tmp_path)
    failed_for_good(rows["tointernal"], f"refused to connect to 127.0.0.1 port {media.port}")
    assert site.hits("/go") >= 1                      # the public hop was taken ...
    assert len(media.requests()) == before            # ... the internal one never
    assert rows["tosite"]["status"] == "done", rows["tosite"]
    assert files(tmp_path) == [os.path.basename(rows["tosite"]["file_path"])]


def test_a_host_in_no_proxy_is_checked_like_any_direct_connection(tmp_path: Path, media: MediaServer) -> None:
    """With a proxy in the environment, a row whose host matches ``no_proxy`` is fetched directly:
    that connection is a download like any other and meets the same address check (a ``no_proxy``
    entry once passed as a proxy's own address and opened the way)."""
    with FreezableProxy(("127.0.0.1", media.port)) as proxy:  # a real listening proxy on loopback
        cfg = setup(tmp_path, media, {"direct": media.url("nosecret")}, allow_addresses=[])
        env = {**os.environ, "http_proxy": f"http://127.0.0.1:{proxy.port}", "https_proxy": "",
               "no_proxy": f"127.0.0.1:{media.port}", "NO_PROXY": f"127.0.0.1:{media.port}"}
        r = vfd.ctl(cfg, "fetch", timeout=180, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    failed_for_good(by_id(tmp_path)["direct"], f"refused to connect to 127.0.0.1 port {media.port}: loopback")
    assert all(x.video_id != "nosecret" for x in media.requests())
    assert files(tmp_path) == []


def test_an_answer_that_is_not_audio_or_video_is_not_saved_as_a_direct_link(tmp_path: Path, media: MediaServer,
                                                                            site: Site) -> None:
    urls = {"secret": site.page("/secret", "user=admin\npassword=hunter2\n", "text/plain"),
            "secretmp4": site.page("/secret.mp4", '{"token": "abc"}', "application/json"),
            "clip": site.page("/clip", b"\0" * 4096, "video/mp4")}
    cfg = setup(tmp_path, media, urls, allow_addresses=PUBLIC)
    fetch(cfg)
    rows = by_id(tmp_path)
    failed_for_good(rows["secret"], "not a video")
    failed_for_good(rows["secretmp4"], "not a video")
    assert rows["clip"]["status"] == "done", rows["clip"]
    assert files(tmp_path) == [os.path.basename(rows["clip"]["file_path"])]


# -- size limits ------------------------------------------------------------------------------------

def test_endless_and_lying_bodies_stop_at_max_filesize_and_leave_nothing(tmp_path: Path, media: MediaServer,
                                                                         site: Site) -> None:
    urls = {"endless": site.endless("/endless"),                      # no Content-Length at all
            "huge": site.endless("/huge", declared=10 * 1000**4),     # "10 TB", then zeros forever
            "fits": site.page("/small", b"\0" * 100_000, "video/mp4")}
    cfg = setup(tmp_path, media, urls, allow_addresses=PUBLIC, max_filesize="1MiB")
    r = fetch(cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = by_id(tmp_path)
    failed_for_good(rows["endless"], "more than download.max_filesize (1048576 bytes)")
    failed_for_good(rows["huge"], "announces 10000000000000 bytes")
    assert rows["fits"]["status"] == "done"
    # the .part files of the refused downloads are gone; only the finished file is left
    assert files(tmp_path) == [os.path.basename(rows["fits"]["file_path"])]
    assert site.sent["/endless"] < 64 * 1024**2 and site.sent["/huge"] < 64 * 1024**2, site.sent


def test_a_stalled_download_that_fails_for_good_leaves_no_part_file(tmp_path: Path, media: MediaServer) -> None:
    """The child is killed here, so the supervisor cleans up from the file names it reported."""
    media.configure("stall-last", size=2 * 1024**2, stall_after=1024**2, stall_times=5)
    cfg = setup(tmp_path, media, {"stall-last": media.url("stall-last")}, max_attempts=1, stall_timeout="2s")
    try:
        fetch(cfg)
    finally:
        media.release_stalls()
    row = by_id(tmp_path)["stall-last"]
    assert row["status"] == "failed" and row["error_kind"] == "stalled", row
    assert files(tmp_path) == []


# -- playlists --------------------------------------------------------------------------------------

def _feed(media: MediaServer, prefix: str, n: int) -> str:
    items = "".join(f"<item><title>item {i}</title><enclosure url='{media.url(f'{prefix}{i}')}' type='video/mp4'/>"
                    "</item>" for i in range(n))
    return f"<?xml version='1.0'?><rss version='2.0'><channel><title>feed</title>{items}</channel></rss>"


def _page(media: MediaServer, prefix: str, n: int) -> str:
    tags = "".join(f"<video src='{media.url(f'{prefix}{i}')}'></video>" for i in range(n))
    return f"<html><head><title>five clips</title></head><body>{tags}</body></html>"


def test_a_playlist_url_fails_at_once_and_downloads_nothing(tmp_path: Path, media: MediaServer, site: Site) -> None:
    urls = {"feed": site.page("/feed.rss", _feed(media, "feeditem", 3), "application/rss+xml"),
            "page": site.page("/clips.html", _page(media, "pageclip", 5), "text/html")}
    cfg = setup(tmp_path, media, urls, allow_addresses=vfd.LOCAL)
    fetch(cfg)
    rows = by_id(tmp_path)
    for vid in ("feed", "page"):
        failed_for_good(rows[vid], "URL is a playlist")
        assert "download.expand_playlists" in rows[vid]["last_error"]
    assert not [r for r in media.requests() if (r.video_id or "").startswith(("feeditem", "pageclip"))]
    assert files(tmp_path) == [] and set(rows) == {"feed", "page"}


def test_expand_playlists_queues_each_entry_as_a_row_of_its_own(tmp_path: Path, media: MediaServer,
                                                                site: Site) -> None:
    urls = {"feed": site.page("/feed.rss", _feed(media, "xfeed", 3), "application/rss+xml"),
            "page": site.page("/clips.html", _page(media, "xclip", 5), "text/html")}
    cfg = setup(tmp_path, media, urls, allow_addresses=vfd.LOCAL, expand_playlists=True)
    r = fetch(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = by_id(tmp_path)
    for vid in ("feed", "page"):
        assert rows[vid]["status"] == "done" and rows[vid]["found_by"] == "playlist", rows[vid]
        assert rows[vid]["file_path"] is None
    entries = [r for vid, r in rows.items() if vid not in ("feed", "page")]
    assert sorted(r["url"] for r in entries) == sorted([media.url(f"xfeed{i}") for i in range(3)]
                                                       + [media.url(f"xclip{i}") for i in range(5)])
    assert all(r["status"] == "done" and r["found_by"] == "download" for r in entries), entries
    assert len(files(tmp_path)) == 8
    # queueing the feed again adds nothing: its entries are known by the same keys `add URL` uses
    again = vfd.ctl(cfg, "add", media.url("xfeed0"))
    assert "added 0, already known 1" in again.stdout, again.stdout + again.stderr


def test_an_expanded_playlist_is_counted_once_and_its_rows_at_once(tmp_path: Path, media: MediaServer,
                                                                   site: Site) -> None:
    """The daemon's cached counts, counters and metrics account for a playlist exactly once (its
    row done, no file) and for its entries as queued rows, the moment it is recorded: before,
    the row stayed "running" in the counts and out of videofetchd_jobs_finished_total."""
    from promserver import free_port, scrape
    for i in range(3):
        media.configure(f"slowentry{i}", size=64 * 1024, rate_bps=64 * 1024)  # ~1 s each: time to look
    port = free_port()
    cfg = vfd.write_config(tmp_path, url_template=media.url_template, metrics={"listen": f"127.0.0.1:{port}"},
                           download={"workers": 1, "expand_playlists": True, "allow_addresses": vfd.LOCAL})
    feed = site.page("/slow.rss", _feed(media, "slowentry", 3), "application/rss+xml")
    with vfd.running(cfg) as d:
        wait_until(lambda: vfd.status(cfg)["queue"], timeout=20)  # the first count is in
        assert vfd.ctl(cfg, "add", feed).returncode == 0
        replies = []

        def settled() -> bool:
            st = vfd.status(cfg)
            replies.append(st)
            return st["counters"]["completed"] == 4

        wait_until(settled, timeout=60, interval=0.05, message="the playlist and its entries did not finish")
        text = scrape(port)
        assert d.stop() == 0
    for r in replies:  # every reply: the counts agree with the counters, and no row is lost or doubled
        q, c = r["queue"], r["counters"]
        assert q["done"] == c["completed"] and q["failed"] == c["failed"] == 0, (q, c)
        if c["completed"] >= 1:
            assert q["queued"] + q["running"] + q["done"] == 4, q
    assert 'videofetchd_jobs_finished_total{error_kind="",outcome="done"} 4.0' in text, text
    rows = by_id(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows.values()), rows


# -- escape sequences -------------------------------------------------------------------------------

ESC = "\x1b"


def test_escape_sequences_from_a_site_are_never_stored_or_printed_raw(
        tmp_path: Path, media: MediaServer, site: Site) -> None:
    evil = "Not Found\x1b]0;owned\x07\x1b[2J\x1b[31m"
    cfg = setup(tmp_path, media, {"evil": site.error("/evil", 404, evil)}, allow_addresses=PUBLIC)
    r = fetch(cfg)
    row = by_id(tmp_path)["evil"]
    assert row["status"] == "failed" and "HTTP Error 404" in row["last_error"], row
    assert ESC not in row["last_error"] and "\\x1b]0;owned\\x07" in row["last_error"]
    assert ESC not in r.stdout + r.stderr and "\\x1b[2J" in r.stdout + r.stderr  # summary and log lines
    listed = vfd.ctl(cfg, "list")
    assert ESC not in listed.stdout and "\\x1b[2J" in listed.stdout
