"""Real media shapes end to end: HLS, DASH, an HTML <video> page, audio extraction, sidecars.

Media is made by ffmpeg at test time (``mediashapes``) and served over HTTP with byte ranges;
downloads run through the real ``videofetchctl fetch`` or the real daemon, yt-dlp's generic
extractor and a real ffmpeg. Each test checks that a finished video is one whole, ffprobe-valid
file under its final name, that nothing half-made is left where a scan could take it, and that
a scan of the download directory adds no second row for a file a row already owns.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import vfd
from helpers import wait_until
from mediashapes import ShapeServer, have_ffmpeg, make_shapes, probe, video_page

pytestmark = pytest.mark.skipif(not have_ffmpeg(), reason="needs ffmpeg and ffprobe")
TMP_DIR = ".videofetchd-tmp"
PARTIAL = (".part", ".ytdl", ".temp")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShapeServer]:
    root = make_shapes(tmp_path_factory.mktemp("shapes"))
    with ShapeServer(root) as srv:
        srv.alias["/watch/clipa"] = root / "clip.mp4"
        srv.alias["/watch/clipb"] = root / "clip.mp4"
        for page in ("page1", "page2", "page3"):
            srv.page(f"watch/{page}", video_page(f"Clip {page}", "/clip.mp4", poster="/thumb.jpg", track="/subs.vtt"))
        yield srv


def leftovers(videos: Path) -> list[str]:
    """Files in the download directory that are not finished: partial names, or anything left
    in the jobs' temporary directory."""
    found = []
    for dirpath, _, names in os.walk(videos):
        for name in names:
            if TMP_DIR in Path(dirpath).parts or name.endswith(PARTIAL) or ".part-Frag" in name:
                found.append(os.path.join(dirpath, name))
    return found


def config(tmp: Path, srv: ShapeServer, **download: Any) -> Path:
    return vfd.write_config(tmp, url_template=srv.url("watch/{id}"),
                            download={"workers": 2, "output_template": "%(title)s [%(id)s].%(ext)s", **download})


def fetch(cfg: Path, *args: str) -> None:
    r = vfd.ctl(cfg, "fetch", *args, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr


def add(cfg: Path, *items: str) -> None:
    r = vfd.ctl(cfg, "add", *items, timeout=60)
    assert r.returncode == 0, r.stderr


def scan(cfg: Path, directory: Path, *args: str) -> dict[str, Any]:
    r = vfd.ctl(cfg, "scan", str(directory), "--json", *args, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def by_id(db: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(db)}


@pytest.fixture(scope="module")
def fetched(shapes: ShapeServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One fetch of an HTML page (with poster and subtitle track), a 2-variant HLS master and a
    DASH manifest with separate audio, writing info.json, thumbnail and subtitles."""
    tmp = tmp_path_factory.mktemp("fetched")
    cfg = config(tmp, shapes, ytdlp={"writeinfojson": True, "writethumbnail": True, "writesubtitles": True})
    urls = {"page1": "page1", "hls": shapes.mount("hls/a1", shapes.root / "hls") + "master.m3u8",
            "dash": shapes.url("dash/manifest.mpd")}
    add(cfg, *urls.values())
    fetch(cfg)
    return cfg, urls


def test_hls_dash_and_a_page_end_done_with_whole_files_and_sidecars(fetched: tuple[Path, dict[str, str]]) -> None:
    cfg, urls = fetched
    rows = vfd.rows(cfg.parent / "queue.db")
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}, rows
    videos = cfg.parent / "videos"
    for r in rows:
        path = Path(r["file_path"])
        assert path.parent == videos and path.stat().st_size == r["file_size"]
        assert sorted(probe(path)["streams"]) == ["audio", "video"], path  # DASH: bv+ba merged
        assert 3.5 < float(probe(path)["duration"]) < 4.5  # type: ignore[arg-type]
        info = json.loads(path.with_suffix(".info.json").read_text())
        assert info["videofetchd_id"] == r["video_id"] and info["id"] == r["ytdlp_id"]
        assert r["extractor"] and r["found_by"] == "download"
    page = by_id(cfg.parent / "queue.db")["page1"]
    assert page["ytdlp_id"] != "page1"  # yt-dlp's own ID of an embed is not the queue's
    stem = Path(page["file_path"]).with_suffix("")
    assert Path(f"{stem}.jpg").stat().st_size > 0 and "hello" in Path(f"{stem}.en.vtt").read_text()
    hls = next(r for r in rows if r["url"] == urls["hls"])
    assert hls["ytdlp_id"] == "master" and hls["video_id"] != "master"
    assert leftovers(videos) == [] and not (videos / TMP_DIR).exists()


def test_a_scan_after_the_downloads_adds_no_row(fetched: tuple[Path, dict[str, str]]) -> None:
    cfg, _ = fetched
    before = vfd.rows(cfg.parent / "queue.db")
    report = scan(cfg, cfg.parent / "videos")
    assert report["videos_found"] == 3 and report["created"] == 0 and report["marked_done"] == 0, report
    assert report["already_done"] == 3
    assert vfd.rows(cfg.parent / "queue.db") == before


def test_a_fresh_database_takes_the_existing_file_and_downloads_nothing(
        fetched: tuple[Path, dict[str, str]], shapes: ShapeServer, tmp_path: Path) -> None:
    """The queue is lost: ``add page1`` and ``fetch --existing-videos-dir`` on the old directory
    mark page1 done on its file (the sidecar names its queue ID), add no row, fetch no byte."""
    old, _ = fetched
    cfg = config(tmp_path, shapes)
    add(cfg, "page1")
    hits = shapes.hits("/watch/page1"), shapes.hits("/clip.mp4")
    fetch(cfg, "--existing-videos-dir", str(old.parent / "videos"))
    rows = by_id(tmp_path / "queue.db")
    page = rows["page1"]
    assert page["status"] == "done" and page["file_path"] == by_id(old.parent / "queue.db")["page1"]["file_path"]
    assert page["found_by"] == "info.json" and page["ytdlp_id"] != "page1"
    assert (shapes.hits("/watch/page1"), shapes.hits("/clip.mp4")) == hits
    # the other two videos' sidecars name their rows too: a lost queue is rebuilt by the scan
    assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"done"}


def test_files_are_matched_by_path_and_by_ytdlp_id_without_sidecars(shapes: ShapeServer, tmp_path: Path) -> None:
    """No info.json: an HLS master's file is ``master [master].mp4`` and a page's ``[page2-1]``;
    a scan matches them to their rows by recorded path, and after a move by yt-dlp's ID."""
    cfg = config(tmp_path, shapes)
    hls_url = shapes.mount("hls/b1", shapes.root / "hls") + "master.m3u8"
    add(cfg, "page2", hls_url)
    fetch(cfg)
    db, videos = tmp_path / "queue.db", tmp_path / "videos"
    rows = vfd.rows(db)
    assert {r["status"] for r in rows} == {"done"} and len(rows) == 2
    assert scan(cfg, videos)["created"] == 0 and len(vfd.rows(db)) == 2
    moved = videos / "sub"
    moved.mkdir()
    for r in rows:
        os.rename(r["file_path"], moved / Path(r["file_path"]).name)
    report = scan(cfg, videos)
    assert report["created"] == 0 and report["moved"] == 2 and report["missing"] == 0, report
    after = vfd.rows(db)
    assert len(after) == 2 and all(Path(r["file_path"]).parent == moved for r in after)
    assert {r["status"] for r in after} == {"done"}


def _row(db: Path, video_id: str) -> dict[str, Any] | None:
    found = vfd.rows(db, f"video_id = '{video_id}'")
    return found[0] if found else None


def test_a_stall_in_the_middle_of_an_hls_download_is_killed_and_the_retry_finishes(
        shapes: ShapeServer, tmp_path: Path) -> None:
    base = shapes.mount("hls/c1", shapes.root / "hls")
    shapes.stall("/hls/c1/hi/seg02.ts")
    cfg = config(tmp_path, shapes, workers=1, stall_timeout="2s", retry_backoff="4s")
    db = tmp_path / "queue.db"
    with vfd.running(cfg) as d:
        add(cfg, base + "master.m3u8")
        row = wait_until(lambda: (r := vfd.rows(db)) and r[0]["last_error"] and r[0], timeout=60,
                         message="the stalled HLS download was not killed")
        assert row["status"] == "queued" and row["error_kind"] == "stalled", row
        assert "stall_timeout 2s" in row["last_error"]
        # between the kill and the retry: nothing a scan could take for a finished video
        assert scan(cfg, tmp_path / "videos", "--dry-run")["videos_found"] == 0
        assert any((tmp_path / "videos" / TMP_DIR).rglob("*.part*"))  # kept for the retry
        done = wait_until(lambda: (r := vfd.rows(db)[0])["status"] == "done" and r, timeout=60,
                          message="the retry did not finish the video")
        log = d.log()
    assert done["attempts"] == 2 and sorted(probe(Path(done["file_path"]))["streams"]) == ["audio", "video"]
    waited = float(log.split("no progress for ")[1].split("s")[0])
    assert waited < 2 + 1.5, log
    assert leftovers(tmp_path / "videos") == []


def test_a_stall_while_ffmpeg_extracts_audio_names_postprocess_timeout(shapes: ShapeServer, tmp_path: Path) -> None:
    """FFmpegExtractAudio with a second input that has nothing to give yet (a FIFO no one writes:
    a slow source, as a hung mount or a pipe from a stuck program is): ffmpeg hangs while it
    post-processes. The kill names postprocess_timeout, leaves no .mp3 under its final name, and
    the retry (the FIFO delivers the clip now) finishes a whole .mp3."""
    fifo = tmp_path / "slow-input"
    os.mkfifo(fifo)
    cfg = config(tmp_path, shapes, workers=1, stall_timeout="2s", postprocess_timeout="3s", retry_backoff="4s",
                 ytdlp={"postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": "mp3"}],
                        "postprocessor_args": {"extractaudio+ffmpeg_i1": ["-f", "mp4", "-i", str(fifo)]}})
    db = tmp_path / "queue.db"
    with vfd.running(cfg) as d:
        add(cfg, "clipa")
        row = wait_until(lambda: (r := _row(db, "clipa")) and r["last_error"] and r, timeout=60,
                         message="the hung post-processing was not killed")
        assert row["error_kind"] == "stalled" and "(postprocess_timeout 3s)" in row["last_error"], row
        assert "stall_timeout" not in row["last_error"]
        assert not list((tmp_path / "videos").glob("*.mp3"))
        assert scan(cfg, tmp_path / "videos", "--dry-run")["videos_found"] == 0
        writer = threading.Thread(target=lambda: fifo.write_bytes((shapes.root / "clip.mp4").read_bytes()),
                                  daemon=True)
        writer.start()  # blocks until the retry's ffmpeg opens the FIFO
        done = wait_until(lambda: (r := _row(db, "clipa")) and r["status"] == "done" and r, timeout=60,
                          message="the retry did not finish the audio")
        log = d.log()
    waited = float(log.split("made no progress for ")[1].split("s")[0])
    assert 3 <= waited < 3 + 1.5, log
    path = Path(done["file_path"])
    assert path.suffix == ".mp3" and probe(path)["streams"] == ["audio"]
    assert 3.5 < float(probe(path)["duration"]) < 4.5  # type: ignore[arg-type]
    assert leftovers(tmp_path / "videos") == [] and not list((tmp_path / "videos").glob("*.mp4"))


def test_a_child_killed_by_a_signal_is_recorded_with_the_signal(shapes: ShapeServer, tmp_path: Path) -> None:
    base = shapes.mount("hls/d1", shapes.root / "hls")
    shapes.stall("/hls/d1/hi/seg01.ts")
    cfg = config(tmp_path, shapes, workers=1, stall_timeout="60s", retry_backoff="0.2s")
    db = tmp_path / "queue.db"
    with vfd.running(cfg):
        add(cfg, base + "master.m3u8")
        wait_until(lambda: shapes.hits("/hls/d1/hi/seg01.ts"), timeout=60, message="the download never started")
        busy = wait_until(lambda: [w for w in vfd.status(cfg)["workers"] if w["state"] == "busy" and w["pid"]],
                          timeout=30)
        os.kill(busy[0]["pid"], signal.SIGKILL)
        row = wait_until(lambda: (r := vfd.rows(db)[0])["error_kind"] == "crashed" and r, timeout=30)
        assert "killed by SIGKILL (signal 9)" in row["last_error"], row
        assert "terminated abruptly" not in row["last_error"]
        assert not psutil.pid_exists(busy[0]["pid"]) or psutil.Process(busy[0]["pid"]).status() == "zombie"
        wait_until(lambda: vfd.rows(db)[0]["status"] == "done", timeout=60, message="the retry did not finish")
    assert leftovers(tmp_path / "videos") == []


def test_another_extractors_same_id_is_not_this_rows_video(tmp_path: Path) -> None:
    """``vimeo 123456789`` in an archive, or a Vimeo sidecar of that ID, does not make the queued
    YouTube row 123456789 done; the YouTube line does, and the export writes it as YouTube's."""
    cfg = vfd.write_config(tmp_path, url_template="https://www.youtube.com/watch?v={id}")
    add(cfg, "123456789")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "Other [123456789].mp4").write_bytes(b"v" * 10)
    (lib / "Other [123456789].info.json").write_text(json.dumps({"id": "123456789", "extractor_key": "Vimeo"}))
    report = scan(cfg, lib)
    assert report["other_extractor"] == 1 and report["marked_done"] == 0, report
    archive = tmp_path / "archive.txt"
    archive.write_text("vimeo 123456789\n")
    r = vfd.ctl(cfg, "import-archive", str(archive), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["other_extractor"] == 1, r.stdout + r.stderr
    assert _row(tmp_path / "queue.db", "123456789")["status"] == "queued"  # type: ignore[index]
    archive.write_text("youtube 123456789\n")
    assert json.loads(vfd.ctl(cfg, "import-archive", str(archive), "--json").stdout)["imported"] == 1
    out = tmp_path / "out.txt"
    assert vfd.ctl(cfg, "export-archive", str(out)).returncode == 0
    assert out.read_text() == "youtube 123456789\n"
    with sqlite3.connect(tmp_path / "queue.db") as con:
        assert con.execute("SELECT count(*) FROM videos").fetchone()[0] == 1


def test_a_row_that_fails_for_good_leaves_no_temporary_files(shapes: ShapeServer, tmp_path: Path) -> None:
    base = shapes.mount("hls/e1", shapes.root / "hls")
    shapes.stall("/hls/e1/hi/seg02.ts")
    cfg = config(tmp_path, shapes, workers=1, stall_timeout="2s", max_attempts=1)
    db = tmp_path / "queue.db"
    with vfd.running(cfg):
        add(cfg, base + "master.m3u8")
        wait_until(lambda: any((tmp_path / "videos" / TMP_DIR).rglob("*.part*")), timeout=60,
                   message="the download never wrote its .part")
        row = wait_until(lambda: (r := vfd.rows(db)[0])["status"] == "failed" and r, timeout=60)
        assert row["error_kind"] == "stalled"
        wait_until(lambda: not (tmp_path / "videos" / TMP_DIR).exists(), timeout=10,
                   message="the failed row's temporary directory is still there")
    assert [p for p in (tmp_path / "videos").rglob("*") if p.is_file()] == []


def test_two_videos_that_yt_dlp_names_alike_never_share_a_file(shapes: ShapeServer, tmp_path: Path) -> None:
    """Two HLS masters at ``.../{id}/master.m3u8`` are both ``master [master].mp4`` to yt-dlp:
    the second is not recorded done on the first one's file, and says what to do about it;
    with ``%(videofetchd_id)s`` in the output template both are fetched."""
    urls = [shapes.mount(f"hls/{name}", shapes.root / "hls") + "master.m3u8" for name in ("f1", "f2")]
    (tmp_path / "a").mkdir()
    cfg = config(tmp_path / "a", shapes, workers=1)
    add(cfg, *urls)
    assert vfd.ctl(cfg, "fetch", timeout=240).returncode != 0  # one row failed for good
    rows = sorted(vfd.rows(tmp_path / "a" / "queue.db"), key=lambda r: r["status"])
    assert [r["status"] for r in rows] == ["done", "failed"], rows
    assert rows[1]["error_kind"] == "permanent" and rows[0]["video_id"] in rows[1]["last_error"]
    assert "%(videofetchd_id)s" in rows[1]["last_error"]
    (tmp_path / "b").mkdir()
    cfg = config(tmp_path / "b", shapes, workers=1, output_template="%(title)s [%(videofetchd_id)s].%(ext)s")
    add(cfg, *urls)
    fetch(cfg)
    rows = vfd.rows(tmp_path / "b" / "queue.db")
    assert {r["status"] for r in rows} == {"done"} and len({r["file_path"] for r in rows}) == 2
    assert all(f"[{r['video_id']}]" in r["file_path"] for r in rows)
