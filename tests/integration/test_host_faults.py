"""Faults of the host, not of a row: a full disk, a download directory that goes away or becomes
read-only, a database file deleted under the daemon, children that cannot start, a SIGKILL.

Real file systems (a tmpfs of a few MiB, grown with ``mount -o remount``; ``chattr +i``; a
directory removed and replaced by a file), the real daemon as a process, real yt-dlp against the
local media server, systemd's notify socket as a real datagram socket. Nothing is simulated: the
disk really fills, and the daemon must pause, burn no row, say why, and resume by itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

import vfd
from helpers import wait_until
from hostfs import immutable, resize, tmpfs
from mediaserver import MediaServer
from vfd import running, shutdown

KiB = 1024
MiB = 1024 * KiB


def by_id(db: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(db)}


def condition(config: Path, name: str) -> dict[str, Any] | None:
    """The named health condition in the daemon's status, or None."""
    health = vfd.status(config)["health"]
    return next((c for c in health["conditions"] if c["name"] == name), None)


def stays(predicate: Callable[[], Any], seconds: float, message: str = "") -> None:
    """``predicate`` holds on every poll for ``seconds`` (something that must NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        assert value, f"{message or 'condition broke'} (last value: {value!r})"
        time.sleep(0.1)


def checksums_good(db: Path, srv: MediaServer, ids: list[str]) -> None:
    rows = by_id(db)
    for vid in ids:
        row = rows[vid]
        assert row["status"] == "done", row
        assert Path(row["file_path"]).read_bytes() == srv.content(vid), f"{vid}: wrong bytes"


def log_count(d: vfd.Daemon, text: str) -> int:
    return d.log().count(text)


# -- a full disk --------------------------------------------------------------------------------------

def test_a_disk_that_fills_up_pauses_and_resumes_by_itself(tmp_path: Path) -> None:
    """12 IDs of 4 MiB on a 20 MiB tmpfs: before, ENOSPC was charged to every row until the queue
    was burnt. Now the rows go back uncharged, status and STATUS= name the condition, and growing
    the disk is all it takes for every row to end done with the right bytes."""
    ids = [f"fill-{i:02d}" for i in range(12)]
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    videos = tmp_path / "videos"
    try:
        with tmpfs(videos, "20m"), MediaServer(default_size=4 * MiB) as srv:
            cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                                   download={"workers": 2, "min_free_space": "1MiB", "max_attempts": 3})
            db = tmp_path / "queue.db"
            with running(cfg, env={"NOTIFY_SOCKET": listener.path}) as d:
                assert vfd.ctl(cfg, "add", *ids).returncode == 0
                cond = wait_until(lambda: condition(cfg, "disk_space"), timeout=60,
                                  message="a full disk never became a condition")
                assert "No space left on device" in cond["detail"] or "below download.min_free_space" \
                    in cond["detail"], cond
                assert cond["since"] and not vfd.status(cfg)["health"]["ok"]
                # nothing runs, nothing failed, no attempt was charged to a row that did not finish
                wait_until(lambda: "running" not in vfd.counts(db), timeout=30)
                rows = by_id(db)
                assert not [r for r in rows.values() if r["status"] == "failed"], rows
                waiting = [r for r in rows.values() if r["status"] == "queued"]
                assert waiting and all(r["attempts"] == 0 for r in waiting), waiting
                # and nothing is tried while the disk is full (before: 10 GETs per ID)
                requests = len(srv.requests())
                stays(lambda: len(srv.requests()) == requests and condition(cfg, "disk_space"), 3,
                      "the daemon kept trying on a full disk")
                human = vfd.ctl(cfg, "status")
                assert "HOST CONDITION disk_space" in human.stdout, human.stdout
                wait_until(lambda: any(f.startswith("STATUS=") and "disk_space" in f for f in listener.fields()),
                           timeout=10, message="STATUS= never named the condition")

                resize(videos, "80m")
                wait_until(lambda: vfd.counts(db) == {"done": 12}, timeout=120,
                           message="not every row ended done after the disk grew")
                checksums_good(db, srv, ids)
                assert all(r["attempts"] == 1 for r in by_id(db).values()), by_id(db)
                wait_until(lambda: vfd.status(cfg)["health"] == {"ok": True, "conditions": []}, timeout=10)
                assert d.stop() == 0
            log = d.log_path.read_text()
            assert log.count("host condition disk_space:") == 1, log  # logged once when it began...
            assert log.count("host condition disk_space cleared") == 1, log  # ...and once when it ended
            assert "failed for good" not in log
    finally:
        listener.close()


def test_below_min_free_space_nothing_is_claimed_until_there_is_room(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    with tmpfs(videos, "8m"), MediaServer(default_size=64 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"min_free_space": "16MiB"})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            cond = wait_until(lambda: condition(cfg, "disk_space"), timeout=20)
            assert "below download.min_free_space 16.0 MiB" in cond["detail"], cond
            assert vfd.ctl(cfg, "add", "waits-1", "waits-2").returncode == 0
            stays(lambda: vfd.counts(db) == {"queued": 2} and not srv.requests(), 3, "claimed below min_free_space")
            resize(videos, "64m")
            wait_until(lambda: vfd.counts(db) == {"done": 2}, timeout=30)
            checksums_good(db, srv, ["waits-1", "waits-2"])
            assert d.stop() == 0


# -- the download directory ---------------------------------------------------------------------------

def test_a_download_directory_removed_and_made_a_file_then_restored(tmp_path: Path) -> None:
    ids = [f"dir-{i}" for i in range(6)]
    videos = tmp_path / "videos"
    with MediaServer(default_size=512 * KiB, rate_bps=512 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2, "max_attempts": 2})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: vfd.counts(db).get("done", 0) >= 1 and vfd.counts(db).get("running") == 2,
                       timeout=60, message="downloads never got going")
            # gone under two running downloads: moved away at once (an rmtree here raced with the
            # children still writing into it and failed with ENOTEMPTY), then removed
            gone = videos.rename(tmp_path / "videos-removed")
            videos.write_text("not a directory any more\n")
            shutil.rmtree(gone, ignore_errors=True)
            cond = wait_until(lambda: condition(cfg, "download_directory"), timeout=60,
                              message="the directory's loss never became a condition")
            assert "not a directory" in cond["detail"], cond
            wait_until(lambda: "running" not in vfd.counts(db), timeout=30)
            rows = by_id(db)
            assert "failed" not in vfd.counts(db), rows
            assert all(r["attempts"] == 0 for r in rows.values() if r["status"] == "queued"), rows
            stays(lambda: condition(cfg, "download_directory") and "running" not in vfd.counts(db), 2)

            videos.unlink()
            videos.mkdir()
            wait_until(lambda: vfd.counts(db) == {"done": len(ids)}, timeout=90,
                       message="the rows did not finish once the directory was back")
            rows = by_id(db)
            assert all(r["attempts"] == 1 for r in rows.values()), rows
            for vid in ids:  # the files written before the loss are gone with the directory
                if Path(rows[vid]["file_path"]).exists():
                    assert Path(rows[vid]["file_path"]).read_bytes() == srv.content(vid)
            assert condition(cfg, "download_directory") is None
            assert d.stop() == 0


def test_an_immutable_download_directory_pauses_until_it_is_writable(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    with MediaServer(default_size=64 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"max_attempts": 2})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            with immutable(videos):
                assert vfd.ctl(cfg, "add", "imm-1", "imm-2", "imm-3").returncode == 0
                cond = wait_until(lambda: condition(cfg, "download_directory"), timeout=30)
                assert "not writable" in cond["detail"], cond
                wait_until(lambda: "running" not in vfd.counts(db), timeout=30)
                assert vfd.counts(db) == {"queued": 3}, by_id(db)
                assert all(r["attempts"] == 0 for r in vfd.rows(db)), vfd.rows(db)
            wait_until(lambda: vfd.counts(db) == {"done": 3}, timeout=30)
            checksums_good(db, srv, ["imm-1", "imm-2", "imm-3"])
            assert d.stop() == 0


# -- the database file --------------------------------------------------------------------------------

def test_the_database_directory_deleted_mid_run_stops_the_daemon(tmp_path: Path) -> None:
    """SQLite would go on writing into the unlinked file and status would count rows done that
    are lost at the next start. The daemon must stop at once, name the file, and report nothing
    done that it wrote after the deletion (we keep the unlinked file with a hard link to look)."""
    ids = [f"gone-{i:02d}" for i in range(40)]
    dbdir = tmp_path / "state"
    db = dbdir / "queue.db"
    keep = tmp_path / "kept"
    keep.mkdir()
    with MediaServer(default_size=48 * KiB, rate_bps=96 * KiB) as srv:  # two finish every ~0.5 s
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, db_url=f"sqlite:///{db}",
                               download={"workers": 2})
        d = vfd.Daemon(cfg)
        try:
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: vfd.counts(db).get("done", 0) >= 3, timeout=60)
            for suffix in ("", "-wal", "-shm"):
                os.link(f"{db}{suffix}", keep / f"queue.db{suffix}")
            t_deleted = time.time()
            shutil.rmtree(dbdir)
            code = d.proc.wait(timeout=20)
        finally:
            shutdown(d)
        log = d.log_path.read_text()
    assert code == 75, (code, log[-3000:])
    assert f"the database file {db} was deleted" in log, log[-3000:]
    # what the daemon wrote into the deleted file after the deletion was never reported done
    con = sqlite3.connect(f"file:{keep / 'queue.db'}?mode=ro", uri=True)
    late = {r[0] for r in con.execute("SELECT video_id FROM videos WHERE status = 'done' AND finished_at > ?",
                                      [t_deleted])}
    con.close()
    reported = {line.split("job ", 1)[1].split(" ", 1)[0] for line in log.splitlines() if " done: " in line}
    assert reported and not reported & late, (reported & late, late)


# -- children that cannot start -------------------------------------------------------------------------

def test_children_that_cannot_start_pause_the_daemon_until_they_can(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "yt_dlp").mkdir(parents=True)
    (broken / "yt_dlp" / "__init__.py").write_text("raise ImportError('yt_dlp is broken on purpose')\n")
    env = {"PYTHONPATH": f"{broken}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with MediaServer(default_size=64 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"crash_limit": 3})
        db = tmp_path / "queue.db"
        with running(cfg, env=env) as d:
            cond = wait_until(lambda: condition(cfg, "workers_cannot_start"), timeout=60)
            assert "yt_dlp is broken on purpose" in cond["detail"], cond
            assert vfd.ctl(cfg, "add", "after-fix").returncode == 0
            stays(lambda: vfd.counts(db) == {"queued": 1}, 2, "claimed with no child able to run it")
            shutil.rmtree(broken / "yt_dlp")  # the install is repaired: the next try starts children
            wait_until(lambda: vfd.counts(db) == {"done": 1}, timeout=90)
            assert condition(cfg, "workers_cannot_start") is None
            assert d.stop() == 0


# -- after a SIGKILL -------------------------------------------------------------------------------------

def test_a_restart_after_sigkill_resumes_rows_and_removes_the_dead_process_tempdir(tmp_path: Path) -> None:
    tmpdir = Path(tempfile.mkdtemp(prefix="vfdt-", dir="/tmp"))  # short: the forkserver's socket lives in it
    env = {"TMPDIR": str(tmpdir)}
    try:
        _sigkill_and_restart(tmp_path, tmpdir, env)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _sigkill_and_restart(tmp_path: Path, tmpdir: Path, env: dict[str, str]) -> None:
    children: list[psutil.Process] = []
    with MediaServer(default_size=1 * MiB, rate_bps=200 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 1})
        db = tmp_path / "queue.db"
        d = vfd.Daemon(cfg, env=env)
        try:
            assert vfd.ctl(cfg, "add", "killed-1").returncode == 0
            wait_until(lambda: vfd.counts(db) == {"running": 1}, timeout=30)
            mine = [p for p in tmpdir.iterdir() if p.name.startswith(f"vfdmp-{d.pid}-")]
            assert len(mine) == 1, list(tmpdir.iterdir())
            children = psutil.Process(d.pid).children(recursive=True)
            d.signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
            psutil.wait_procs(children, timeout=10)
        finally:
            shutdown(d)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
        assert mine[0].exists(), "SIGKILL left nothing behind: the test proves nothing"
        t0 = time.monotonic()
        with running(cfg, env=env) as d2:
            wait_until(lambda: vfd.counts(db) == {"done": 1}, timeout=40)
            assert time.monotonic() - t0 < 30, "the dead daemon's row waited for its lease"
            assert not mine[0].exists(), f"{mine[0]} of the killed daemon is still there"
            assert [p.name.split("-")[1] for p in tmpdir.iterdir()] == [str(d2.pid)]
            assert d2.stop() == 0
        assert list(tmpdir.iterdir()) == [], "a clean stop left a temporary directory"
        checksums_good(db, srv, ["killed-1"])


# -- the one-shot fetch stops, with one message ---------------------------------------------------------

def test_one_shot_fetch_stops_when_children_cannot_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "yt_dlp").mkdir(parents=True)
    (broken / "yt_dlp" / "__init__.py").write_text("raise ImportError('yt_dlp is broken on purpose')\n")
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4")
    assert vfd.ctl(cfg, "add", "never-started").returncode == 0
    r = vfd.ctl(cfg, "fetch", "--num-workers", "2", timeout=60,
                env={**os.environ, "PYTHONPATH": f"{broken}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "videofetchctl: stopped: workers_cannot_start:" in r.stderr and "broken on purpose" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert [(row["status"], row["attempts"]) for row in vfd.rows(tmp_path / "queue.db")] == [("queued", 0)]


def test_one_shot_fetch_on_a_full_disk_stops_and_burns_nothing(tmp_path: Path) -> None:
    ids = [f"small-disk-{i}" for i in range(6)]
    with tmpfs(tmp_path / "videos", "6m"), MediaServer(default_size=2 * MiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "min_free_space": "512KiB"})
        assert vfd.ctl(cfg, "add", *ids).returncode == 0
        r = vfd.ctl(cfg, "fetch", timeout=120)
        assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
        assert "videofetchctl: stopped: disk_space:" in r.stderr, r.stderr[-3000:]
        rows = by_id(tmp_path / "queue.db")
        assert "failed" not in vfd.counts(tmp_path / "queue.db"), rows
        assert all(row["attempts"] == 0 for row in rows.values() if row["status"] == "queued"), rows
        resize(tmp_path / "videos", "32m")
        r = vfd.ctl(cfg, "fetch", timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        checksums_good(tmp_path / "queue.db", srv, ids)
