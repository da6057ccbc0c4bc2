"""Gaps in the integration coverage: the daemon's own scan at start-up and on SIGHUP, ``download.ytdlp``
pass-through, the live progress view of one-shot ``fetch`` on a real pseudo-terminal, ``lease_owner``
in ``list --json``, hostile rows inserted straight into the table by another program, and full-URL rows.

Everything is real: the daemon and videofetchctl are ``python -m videofetchd`` processes, downloads go
through real yt-dlp to the local media server, the queue is a SQLite file in tmp_path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import vfd
from vfd import running
from helpers import video_tree, wait_until
from mediaserver import MediaServer

KiB = 1024


# -- helpers ----------------------------------------------------------------------------------------


def by_id(db: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(db)}


def settled(db: Path, video_id: str) -> dict[str, Any] | None:
    """The row once it is done or failed, else None."""
    row = by_id(db).get(video_id)
    return row if row is not None and row["status"] in ("done", "failed") else None


def edit_config(config: Path, **sections: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(data))


def ids_requested(srv: MediaServer) -> set[str | None]:
    return {r.video_id for r in srv.requests()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- 1. scan.directories: at start-up and on SIGHUP ---------------------------------------------------

STARTUP_ROUNDS = ("abc123", "abd124", "abe125")


def test_daemon_scans_directories_at_startup_and_on_reload(tmp_path: Path) -> None:
    """Rows whose files are in scan.directories are marked done by the daemon's start-up scan and
    never downloaded. The start-up is repeated a few times (one new queued ID each) because the
    product bug this guards against is an ordering race between the first claim and the scan."""
    lib1, lib2 = tmp_path / "lib1", tmp_path / "lib2"
    lib2.mkdir()
    # a library of ordinary size, the queued IDs' files in a sub-directory listed after 3,000 others
    (lib1 / "channel").mkdir(parents=True)
    for n in range(3000):
        (lib1 / f"Clip {n} [lib{n:05d}x].mp4").write_bytes(b"c")
    db = tmp_path / "queue.db"
    with MediaServer(default_size=64 * KiB) as srv:  # would serve every ID happily if asked
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, scan={"directories": [str(lib1)]},
                               database={"poll_interval": "0.05s"})
        seen: dict[str, dict[str, Any]] = {}
        for i, vid in enumerate(STARTUP_ROUNDS):
            (lib1 / "channel" / f"Title {i} [{vid}].mp4").write_bytes(b"v" * (5000 + i))
            assert vfd.ctl(cfg, "add", vid).returncode == 0
            with running(cfg):
                seen[vid] = wait_until(lambda: settled(db, vid), timeout=20, message=f"{vid} never settled")
        downloaded = {vid: seen[vid]["found_by"] for vid in STARTUP_ROUNDS if seen[vid]["found_by"] != "filename"}
        assert not downloaded and not ids_requested(srv), (
            f"the start-up scan lost the race to the first claim: {downloaded} "
            f"(requests: {[r.video_id for r in srv.requests()]})")
        for i, vid in enumerate(STARTUP_ROUNDS):
            row = seen[vid]
            assert row["status"] == "done" and row["file_size"] == 5000 + i, row
            assert row["file_path"] == str(lib1 / "channel" / f"Title {i} [{vid}].mp4"), row

        with running(cfg) as d:
            # the start-up scan first: a reload while it runs leaves the new list for the next one
            wait_until(lambda: (st := vfd.status(cfg)["scan"]) and not st["running"] and st.get("last_result"),
                       timeout=30, message="the start-up scan never finished")
            # a second directory, added by a reload, for an ID queued while claims are paused
            assert vfd.ctl(cfg, "pause").returncode == 0
            second = lib2 / "Other title [def456].mkv"
            second.write_bytes(b"w" * 7000)
            assert vfd.ctl(cfg, "add", "def456").returncode == 0
            edit_config(cfg, scan={"directories": [str(lib1), str(lib2)]})
            d.signal(signal.SIGHUP)
            row = wait_until(lambda: settled(db, "def456"), timeout=20,
                             message="the reload did not scan the new directory")
            assert row["status"] == "done" and row["found_by"] == "filename", row
            assert row["file_path"] == str(second) and row["file_size"] == 7000, row
            assert vfd.status(cfg)["config"]["generation"] == 2
            # status tells how the last scan went
            scan = wait_until(lambda: (st := vfd.status(cfg)["scan"]) and not st["running"] and st,
                              timeout=20, message="the reload's scan never finished")
            assert scan["last_ok"] and scan["directories"] == [str(lib1), str(lib2)], scan
            assert scan["last_result"].startswith("3004 files, 3004 videos"), scan
            text = vfd.ctl(cfg, "status").stdout
            assert f"last scan ({scan['last_finished']}): 3004 files" in text, text

            # claims work again, and the scanned ID was never fetched
            assert vfd.ctl(cfg, "resume").returncode == 0
            assert vfd.ctl(cfg, "add", "after-scan").returncode == 0
            row = wait_until(lambda: settled(db, "after-scan"), timeout=30)
            assert row["status"] == "done", row
            assert srv.body_requests("def456") == 0
            assert ids_requested(srv) == {"after-scan"}, ids_requested(srv)
    assert second.stat().st_size == 7000  # the scan never touches files


def test_a_refused_scan_shows_in_status_and_downloads_go_on(tmp_path: Path) -> None:
    """An unmounted scan directory is an error in the log and in status, not a dead daemon."""
    db = tmp_path / "queue.db"
    gone = tmp_path / "not-mounted"
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, scan={"directories": [str(gone)]},
                               database={"poll_interval": "0.05s"})
        with running(cfg) as d:
            scan = wait_until(lambda: (st := vfd.status(cfg)["scan"]) and st["last_result"] and st, timeout=20)
            assert not scan["last_ok"] and "does not exist" in scan["last_result"], scan
            assert "last scan FAILED" in vfd.ctl(cfg, "status").stdout
            assert vfd.ctl(cfg, "add", "after-refusal").returncode == 0
            row = wait_until(lambda: settled(db, "after-refusal"), timeout=30)
            assert row["status"] == "done" and d.proc.poll() is None, row


# -- 2. download.ytdlp pass-through --------------------------------------------------------------------

def test_ytdlp_ratelimit_is_passed_through(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"

    def elapsed(video_id: str) -> float:
        assert vfd.ctl(cfg, "add", video_id).returncode == 0
        row = wait_until(lambda: settled(db, video_id), timeout=30, message=f"{video_id} never settled")
        assert row["status"] == "done", row
        assert Path(row["file_path"]).stat().st_size == 300 * KiB
        return float(row["finished_at"] - row["created_at"])

    with MediaServer(default_size=300 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"ytdlp": {"ratelimit": 100000}})
        with running(cfg) as d:
            slow = elapsed("limited-1")
            # the same size without the option, after a reload drops it
            edit_config(cfg, download={"ytdlp": {}})
            d.signal(signal.SIGHUP)
            wait_until(lambda: vfd.status(cfg)["config"]["generation"] == 2, timeout=10)
            fast = elapsed("unlimited-1")
    # 307,200 bytes at 100,000 B/s: about 3 s; unthrottled on loopback: a fraction of a second
    assert slow >= 2.5, f"ratelimit 100000 B/s downloaded 300 KiB in {slow:.2f}s: option not passed through"
    assert fast < 1.0, f"without ratelimit 300 KiB took {fast:.2f}s (the option outlived the reload?)"


# -- 3. the live view of one-shot fetch on a terminal -------------------------------------------------

def run_on_pty(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run ``args`` with a pseudo-terminal as stdin/stdout/stderr; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    out = bytearray()
    deadline = time.monotonic() + timeout

    def drain(wait: float) -> bool:
        """Read what is there (waiting up to ``wait`` s for more); False once the pty is closed."""
        ready, _, _ = select.select([master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave end closed
                return False
            raise
        out.extend(data)
        return bool(data)

    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"fetch on a pty did not finish in {timeout}s; output so far:\n"
                                     + out.decode("utf-8", "replace")[-3000:])
            drain(0.1)
        # the process is gone; take what it left in the pty (children may hold the slave a bit longer)
        end = time.monotonic() + 2
        while time.monotonic() < end and drain(0.1):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return proc.returncode, out.decode("utf-8", "replace")


def test_fetch_live_view_on_a_terminal_and_plain_output_without_one(tmp_path: Path) -> None:
    ids = ["tty-1", "tty-2", "tty-3"]
    with MediaServer(default_size=200 * KiB, rate_bps=200 * KiB) as srv:
        tty_dir, pipe_dir = tmp_path / "tty", tmp_path / "pipe"
        tty_dir.mkdir()
        pipe_dir.mkdir()

        cfg = vfd.write_config(tty_dir, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", *ids).returncode == 0
        code, text = run_on_pty([vfd.PY, "-m", "videofetchd", "fetch", "--num-workers", "2", "--config", str(cfg)])
        assert code == 0, text[-3000:]
        assert "fetched 3" in text, text[-3000:]
        assert "\x1b[F" in text, f"no cursor-up redraw on a terminal:\n{text[-3000:]!r}"
        assert "slot" in text and "[#" in text, f"no per-slot progress bar on a terminal:\n{text[-3000:]!r}"
        assert all(r["status"] == "done" for r in vfd.rows(tty_dir / "queue.db"))

        cfg = vfd.write_config(pipe_dir, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", *ids).returncode == 0
        r = vfd.ctl(cfg, "fetch", "--num-workers", "2", timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "fetched 3" in r.stdout, r.stdout
        assert "\x1b" not in r.stdout + r.stderr, f"ANSI escapes without a terminal: {(r.stdout + r.stderr)!r}"
        assert all(row["status"] == "done" for row in vfd.rows(pipe_dir / "queue.db"))


def test_scan_progress_line_on_a_terminal_only(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    video_tree(lib, 3, 1200, "tty")
    (tmp_path / "tty").mkdir()
    (tmp_path / "pipe").mkdir()
    cfg = vfd.write_config(tmp_path / "tty", url_template="http://127.0.0.1:9/{id}")
    code, text = run_on_pty([vfd.PY, "-m", "videofetchd", "scan", str(lib), "--config", str(cfg)])
    assert code == 0, text[-2000:]
    assert "\rscanning: 1200 videos found so far" in text, repr(text[-2000:])
    assert "\r\x1b[K" in text and "3600 files, 3600 videos" in text, repr(text[-2000:])  # erased, then the summary

    r = vfd.ctl(vfd.write_config(tmp_path / "pipe", url_template="http://127.0.0.1:9/{id}"), "scan", str(lib))
    assert r.returncode == 0 and "3600 files, 3600 videos" in r.stdout, r.stderr
    assert "scanning:" not in r.stderr and "\x1b" not in r.stdout + r.stderr


# -- 4. lease_owner in list --json ---------------------------------------------------------------------

def test_list_json_lease_owner_is_the_daemons_node(tmp_path: Path) -> None:
    with MediaServer(default_size=64 * KiB) as srv:
        srv.configure("slow-lease", size=400 * KiB, rate_bps=100 * KiB)  # ~4 s of running
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, database={"node_name": "node-a"})
        with running(cfg) as daemon:
            node = vfd.status(cfg)["node"]
            assert node == "node-a"
            assert vfd.ctl(cfg, "add", "slow-lease").returncode == 0

            def running_rows() -> list[dict[str, Any]]:
                r = vfd.ctl(cfg, "list", "--status", "running", "--json", timeout=20)
                assert r.returncode == 0, r.stderr
                result: list[dict[str, Any]] = json.loads(r.stdout)
                return result

            listed = wait_until(running_rows, timeout=20, message="slow-lease never listed as running")
            assert [x["video_id"] for x in listed] == ["slow-lease"], listed
            assert "lease_owner" in listed[0], listed[0]
            owner = vfd.status(cfg)["lease_owner"]
            assert owner == f"node-a:{daemon.pid}@daemon", owner  # <node_name>:<pid>@<scope>: unique per process
            assert listed[0]["lease_owner"] == owner, listed[0]

            every = json.loads(vfd.ctl(cfg, "list", "--json").stdout)
            assert [x["lease_owner"] for x in every if x["video_id"] == "slow-lease"] in ([owner], [None])


# -- 5. hostile rows inserted by another program -------------------------------------------------------

BAD_IDS = ["../../etc/passwd", "--exec=touch x"]


def test_hostile_rows_inserted_directly_fail_as_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the daemon's working directory: where a relative 'x' would appear
    cwd_x_before = (Path.cwd() / "x").exists()
    db = tmp_path / "queue.db"
    with MediaServer(default_size=32 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        with running(cfg) as d:
            con = sqlite3.connect(db, timeout=10)
            try:
                with con:
                    con.executemany("INSERT INTO videos (video_id) VALUES (?)", [(v,) for v in BAD_IDS])
            finally:
                con.close()
            for vid in BAD_IDS:
                row = wait_until(lambda: settled(db, vid), timeout=20, message=f"{vid!r} never settled")
                assert row["status"] == "failed" and row["error_kind"] == "invalid", row
                assert vid in (row["last_error"] or "") and "invalid video ID" in row["last_error"], row
                assert row["file_path"] is None, row
            assert vfd.status(cfg)["state"] == "running" and d.proc.poll() is None

            assert vfd.ctl(cfg, "add", "good-after-bad").returncode == 0
            row = wait_until(lambda: settled(db, "good-after-bad"), timeout=30)
            assert row["status"] == "done", row
            assert sha256_of(Path(row["file_path"])) == srv.sha256("good-after-bad")
            # queue counts in status are refreshed periodically, not per request
            wait_until(lambda: vfd.status(cfg)["queue"].get("failed") == 2, timeout=10)

    assert ids_requested(srv) == {"good-after-bad"}, f"requests for bad rows: {srv.requests()}"
    videos = (tmp_path / "videos").resolve()
    cache = (tmp_path / "cache").resolve()  # download.cache_dir's default, next to the database
    made = [p for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(videos)
            and not p.resolve().is_relative_to(cache)]
    expected = {"videofetchd.yaml", "queue.db", "queue.db-wal", "queue.db-shm", "control.sock.lock"}
    stray = [p for p in made if p.name not in expected and not p.name.startswith("daemon-")]
    assert stray == [], f"files outside download.directory: {stray}"
    assert not any(p.name == "x" for p in tmp_path.rglob("*")), "a file named 'x' appeared"
    assert (Path.cwd() / "x").exists() == cwd_x_before
    assert not (tmp_path.parent / "etc").exists() and not (tmp_path / "etc").exists()
    assert not any("passwd" in p.name for p in tmp_path.rglob("*"))


# -- 6. a full URL row ---------------------------------------------------------------------------------

def test_full_url_row_downloads_from_its_url(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    with MediaServer(default_size=48 * KiB) as srv:
        # the template leads nowhere (404): only the row's own URL can succeed
        cfg = vfd.write_config(tmp_path, url_template=srv.base_url + "/nowhere/{id}.mp4")
        url = srv.url("someid")
        added = vfd.ctl(cfg, "add", url)
        assert added.returncode == 0, added.stderr
        [row] = vfd.rows(db)
        assert row["url"] == url and row["status"] == "queued", row
        r = vfd.ctl(cfg, "fetch", "--num-workers", "1", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        [row] = vfd.rows(db)
        assert row["status"] == "done" and row["url"] == url, row
        assert srv.body_requests("someid") >= 1
        assert ids_requested(srv) == {"someid"}, srv.requests()  # no request through the template
        path = Path(row["file_path"])
        assert path.resolve().is_relative_to((tmp_path / "videos").resolve()), path
        assert sha256_of(path) == srv.sha256("someid") and row["file_size"] == 48 * KiB
