"""One-shot fetch, end to end: the real CLI (and the Fetcher API), real yt-dlp worker processes,
the real local media server and a real SQLite queue.

The acceptance run (200 small files plus 404s and dropped connections through
``videofetchctl fetch --num-workers 4``) happens once per module; each test checks one property.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import vfd
from mediaserver import MediaServer
from videofetchd import Fetcher
from videofetchd import config as config_mod
SIZE = 50 * 1024
GOOD = [f"ok-{i:03d}" for i in range(200)]
MISSING = ["e404-gone-1", "e404-gone-2", "e404-gone-3"]
DROPPED = ["drop-cut-1", "drop-cut-2"]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def final_path(videos: Path, video_id: str) -> Path:
    """Where the generic extractor puts /v/<id>.mp4 with the default output template."""
    return videos / f"{video_id} [{video_id}].mp4"


@pytest.fixture(scope="module")
def server() -> Iterator[MediaServer]:
    with MediaServer(default_size=SIZE) as srv:
        yield srv


@dataclass
class Run:
    tmp: Path
    config: Path
    result: subprocess.CompletedProcess[str]

    @property
    def db(self) -> Path:
        return self.tmp / "queue.db"

    @property
    def videos(self) -> Path:
        return self.tmp / "videos"

    def rows(self) -> dict[str, dict[str, Any]]:
        return {r["video_id"]: r for r in vfd.rows(self.db)}


def new_config(tmp: Path, server: MediaServer, **download: Any) -> Path:
    return vfd.write_config(tmp, url_template=server.url_template, download=download)


@pytest.fixture(scope="module")
def acceptance(server: MediaServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("acceptance")
    config = new_config(tmp, server)
    added = vfd.ctl(config, "add", *GOOD, *MISSING, *DROPPED)
    assert added.returncode == 0, added.stderr
    result = vfd.ctl(config, "fetch", "--num-workers", "4", timeout=240)
    return Run(tmp, config, result)


# -- the acceptance run -------------------------------------------------------------------------

def test_exit_code_one_when_some_failed(acceptance: Run) -> None:
    assert acceptance.result.returncode == 1, acceptance.result.stderr[-3000:]


def test_summary_names_the_404_reason(acceptance: Run) -> None:
    out = acceptance.result.stdout
    assert "fetched 202" in out and "failed 3" in out, out
    assert "404" in out
    assert all(v in out for v in MISSING), out


def test_summary_groups_identical_reasons(acceptance: Run) -> None:
    lines = [line for line in acceptance.result.stdout.splitlines() if "404" in line]
    assert len(lines) == 1 and "3 failed" in lines[0], lines


def test_every_good_file_is_complete(acceptance: Run, server: MediaServer) -> None:
    rows = acceptance.rows()
    for video_id in GOOD + DROPPED:
        path = final_path(acceptance.videos, video_id)
        assert path.is_file(), video_id
        assert sha256_of(path) == server.sha256(video_id), video_id
        assert rows[video_id]["status"] == "done", rows[video_id]


def test_done_rows_store_path_and_size(acceptance: Run) -> None:
    for video_id, r in acceptance.rows().items():
        if r["status"] != "done":
            continue
        assert r["file_path"] == str(final_path(acceptance.videos, video_id))
        assert r["file_size"] == SIZE == Path(r["file_path"]).stat().st_size
        assert r["last_error"] is None and r["finished_at"] is not None


def test_404_rows_fail_at_once(acceptance: Run, server: MediaServer) -> None:
    rows = acceptance.rows()
    for video_id in MISSING:
        r = rows[video_id]
        assert (r["status"], r["attempts"], r["error_kind"]) == ("failed", 1, "permanent"), r
        assert "404" in r["last_error"]
        assert r["file_path"] is None
        assert not final_path(acceptance.videos, video_id).exists()


def test_dropped_downloads_resume(acceptance: Run, server: MediaServer) -> None:
    rows = acceptance.rows()
    requests = server.requests()
    for video_id in DROPPED:
        assert rows[video_id]["status"] == "done"
        starts = [r.range_start for r in requests if r.video_id == video_id and r.method == "GET"]
        assert any(s is not None and s > 0 for s in starts), (video_id, starts)


def test_nothing_left_running_or_partial(acceptance: Run) -> None:
    assert vfd.counts(acceptance.db) == {"done": 202, "failed": 3}
    for r in acceptance.rows().values():
        assert r["lease_owner"] is None and r["claim_token"] is None
    leftovers = [p.name for p in acceptance.videos.iterdir() if p.suffix in (".part", ".ytdl")]
    assert leftovers == []


def test_a_second_fetch_downloads_nothing(acceptance: Run, server: MediaServer) -> None:
    before = len(server.requests())
    again = vfd.ctl(acceptance.config, "fetch", "--num-workers", "2")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "fetched 0" in again.stdout
    assert len(server.requests()) == before


# -- other ways in ------------------------------------------------------------------------------

def test_underscore_option_form(server: MediaServer, tmp_path: Path) -> None:
    config = new_config(tmp_path, server)
    ids = ["under-1", "under-2", "under-3"]
    assert vfd.ctl(config, "add", *ids).returncode == 0
    r = vfd.ctl(config, "fetch", "--num_workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fetched 3" in r.stdout
    for video_id in ids:
        assert sha256_of(final_path(tmp_path / "videos", video_id)) == server.sha256(video_id)


def test_fetcher_api_in_process(server: MediaServer, tmp_path: Path) -> None:
    config = new_config(tmp_path, server)
    assert vfd.ctl(config, "add", "api-1", "api-2", "e404-api").returncode == 0
    summary = asyncio.run(Fetcher(str(config)).fetch(num_workers=2))
    assert (summary.completed, summary.failed) == (2, 1)
    assert not summary.ok
    assert [v for v, _ in summary.failures] == ["e404-api"]
    rows = {r["video_id"]: r for r in vfd.rows(tmp_path / "queue.db")}
    assert rows["api-1"]["status"] == rows["api-2"]["status"] == "done"
    assert sha256_of(final_path(tmp_path / "videos", "api-2")) == server.sha256("api-2")


def test_fetcher_accepts_a_config_object(server: MediaServer, tmp_path: Path) -> None:
    config = new_config(tmp_path, server)
    assert vfd.ctl(config, "add", "obj-1").returncode == 0
    summary = asyncio.run(Fetcher(config_mod.load(config)).fetch(num_workers=1))
    assert (summary.completed, summary.failed) == (1, 0)


def test_a_row_with_its_own_url(server: MediaServer, tmp_path: Path) -> None:
    # the row's url wins over url_template, which here points nowhere
    config = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/nothing/{id}")
    added = vfd.ctl(config, "add", server.url("by-url"))
    assert added.returncode == 0, added.stderr
    r = vfd.ctl(config, "fetch", "--num-workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    (row,) = vfd.rows(tmp_path / "queue.db")
    assert (row["status"], row["url"]) == ("done", server.url("by-url"))
    assert sha256_of(Path(row["file_path"])) == server.sha256("by-url")


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "2"])
def test_fetcher_refuses_non_positive_workers(tmp_path: Path, bad: Any) -> None:
    config = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4")
    with pytest.raises(ValueError):
        asyncio.run(Fetcher(str(config)).fetch(num_workers=bad))
    assert not (tmp_path / "queue.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_cli_refuses_non_positive_workers(tmp_path: Path, bad: str) -> None:
    config = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4")
    r = vfd.ctl(config, "fetch", "--num-workers", bad)
    assert r.returncode == 2
    assert "num_workers" in r.stderr and "Traceback" not in r.stderr


# -- partial files ------------------------------------------------------------------------------

def test_part_file_from_an_earlier_run_is_resumed(server: MediaServer, tmp_path: Path) -> None:
    """A job writes in its own temporary directory (``.videofetchd-tmp/<ID>``); the .part an
    earlier, killed run left there is resumed, and the directory is gone once the file is whole."""
    video_id = "resume-me"
    data = server.content(video_id)
    half = len(data) // 2
    videos = tmp_path / "videos"
    (videos / ".videofetchd-tmp" / video_id).mkdir(parents=True)
    part = videos / ".videofetchd-tmp" / video_id / f"{video_id} [{video_id}].mp4.part"
    part.write_bytes(data[:half])
    config = new_config(tmp_path, server)
    assert vfd.ctl(config, "add", video_id).returncode == 0
    r = vfd.ctl(config, "fetch", "--num-workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sha256_of(final_path(videos, video_id)) == server.sha256(video_id)
    assert not part.exists() and not (videos / ".videofetchd-tmp").exists()
    starts = [q.range_start for q in server.requests() if q.video_id == video_id and q.method == "GET"]
    assert half in starts, starts  # it asked for the rest only (yt-dlp's header probe is a plain GET)


@pytest.mark.parametrize("drop_after, expect", [(SIZE // 4, "done"), (1000, "failed")])
def test_a_truncated_download_is_never_done_short(server: MediaServer, tmp_path: Path, drop_after: int,
                                                  expect: str) -> None:
    # SIZE // 4: four cut connections, each resumed where the last stopped, still make the whole file;
    # 1000: two attempts of a few resumed 1000-byte pieces each cannot, so the row must end failed
    video_id = f"cut-after-{drop_after}"
    server.configure(video_id, drop_after=drop_after, drop_times=10)
    config = new_config(tmp_path, server, max_attempts=2)
    assert vfd.ctl(config, "add", video_id).returncode == 0
    r = vfd.ctl(config, "fetch", "--num-workers", "1")
    (row,) = vfd.rows(tmp_path / "queue.db")
    final = final_path(tmp_path / "videos", video_id)
    gets = [q for q in server.requests() if q.video_id == video_id and q.method == "GET"]
    if expect == "done":
        # with yt-dlp[default] (the sites extra) yt-dlp reads through urllib3, which loses what it had
        # buffered when the connection is cut: 1000-byte pieces never reach the .part, so there is
        # nothing to resume from; the row must still end failed, never done short
        assert any(q.range_start for q in gets), "a cut download was not resumed"
    assert row["status"] == expect, (row, r.stdout)
    if expect == "done":
        assert r.returncode == 0
        assert sha256_of(final) == server.sha256(video_id)
        assert row["file_size"] == SIZE
    else:
        assert r.returncode == 1, r.stdout
        assert (row["attempts"], row["error_kind"]) == (2, "transient"), row
        assert row["file_path"] is None and row["file_size"] is None
        assert not final.exists()
        assert all(p.stat().st_size < SIZE for p in (tmp_path / "videos").iterdir())
