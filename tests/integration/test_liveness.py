"""Progress is measured where the bytes arrive: a healthy slow download is never killed as a stall.

yt-dlp's progress hook reports after each read; after a fast start its reads are 4 MiB, so on a
link that then slows down the hook is silent for many seconds while bytes keep arriving, and an
external downloader reports nothing until it ends. The supervisor asks the kernel (the I/O
counters of the child's process tree) in between. Real daemon, real yt-dlp, real curl, the real
media server bursting then trickling.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from pathlib import Path

import psutil
import pytest
import yaml

import vfd
from helpers import video_tree, wait_until
from mediaserver import MediaServer
from vfd import running

KiB = 1024
MiB = 1024 * KiB


def _done(db: Path, video_id: str) -> dict | None:  # type: ignore[type-arg]
    rows = {r["video_id"]: r for r in vfd.rows(db)}
    row = rows.get(video_id)
    return row if row and row["status"] in ("done", "failed") else None


def test_a_burst_then_a_trickle_is_not_a_stall(tmp_path: Path) -> None:
    """12 MiB at full speed grows yt-dlp's read to 4 MiB; the last 4 MiB then come at 400 KiB/s,
    one read of ~10 s with no hook report. With stall_timeout 3 s the job must still finish on its
    first attempt, and the server must have sent the file once."""
    size, burst = 16 * MiB, 12 * MiB
    with MediaServer(default_size=size) as srv:
        srv.configure("bursty", rate_bps=400 * KiB, burst_bytes=burst)
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "stall_timeout": "3s", "kill_grace": "1s"})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "bursty").returncode == 0
            row = wait_until(lambda: _done(db, "bursty"), timeout=90, message="the bursty download did not end")
            st = vfd.status(cfg)
            log = d.log()
    assert row["status"] == "done" and row["attempts"] == 1, (row, log)
    assert Path(row["file_path"]).read_bytes() == srv.content("bursty")
    assert st["counters"]["stalled_killed"] == 0 and "no progress" not in log
    full = [r for r in srv.requests() if r.video_id == "bursty" and r.outcome == "complete" and r.bytes_sent > burst]
    assert len(full) == 1, srv.requests()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_an_external_downloader_at_a_steady_rate_is_not_a_stall(tmp_path: Path) -> None:
    """With curl as yt-dlp's external downloader no progress hook fires until the end; 6 MiB at
    1 MiB/s take 6 s against a stall_timeout of 2 s."""
    size = 6 * MiB
    with MediaServer(default_size=size, rate_bps=MiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "stall_timeout": "2s", "kill_grace": "1s",
                                         "ytdlp": {"external_downloader": {"default": "curl"}}})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "steady").returncode == 0
            row = wait_until(lambda: _done(db, "steady"), timeout=90, message="the curl download did not end")
            st = vfd.status(cfg)
            log = d.log()
    assert row["status"] == "done" and row["attempts"] == 1, (row, log)
    assert Path(row["file_path"]).read_bytes() == srv.content("steady")
    assert st["counters"]["stalled_killed"] == 0 and "no progress" not in log


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_an_external_downloader_that_stalls_is_still_killed(tmp_path: Path) -> None:
    """The kernel's counters do not hide a real stall: curl hangs after half the file, its
    whole process group is killed within stall_timeout + 2 s, and the retry finishes the file."""
    size = 2 * MiB
    with MediaServer(default_size=size, rate_bps=2 * MiB) as srv:
        srv.configure("hangs", stall_after=size // 2, stall_times=1)
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "stall_timeout": "2s", "kill_grace": "1s",
                                         "retry_backoff": "0.1s",
                                         "ytdlp": {"external_downloader": {"default": "curl"}}})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "hangs").returncode == 0
            row = wait_until(lambda: _done(db, "hangs"), timeout=90, message="the stalled download did not end")
            log = d.log()
    assert row["status"] == "done" and row["attempts"] == 2, (row, log)
    assert Path(row["file_path"]).read_bytes() == srv.content("hangs")
    kills = [line for line in log.splitlines() if "no progress for" in line and "sending SIGTERM" in line]
    assert len(kills) == 1, log
    waited = float(kills[0].split("no progress for ")[1].split("s")[0])
    assert 2.0 <= waited <= 4.0, kills[0]


# -- a scan that hangs ---------------------------------------------------------------------------------

class WalkerStopper:
    """Stops (SIGSTOP) the first walker process whose command line names ``marker``, as soon as it
    appears: what a hung NFS mount does to a walk. A thread polls the process table from before the
    daemon starts, so even a quick walk is caught."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.stopped: psutil.Process | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if "videofetchd.library.walkproc" in cmd and any(self.marker in c for c in cmd):
                    with contextlib.suppress(psutil.Error):
                        p.send_signal(signal.SIGSTOP)
                        self.stopped = p
                        return

    def __enter__(self) -> WalkerStopper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)
        self.resume()

    def resume(self) -> None:
        if self.stopped is not None:
            with contextlib.suppress(psutil.Error):
                self.stopped.send_signal(signal.SIGCONT)


def test_a_hung_scan_stops_holding_downloads_and_a_reload_during_it_is_kept(tmp_path: Path) -> None:
    """The walker hangs (SIGSTOP: what a hung NFS mount does to it). Downloads wait for the scan
    only scan.claim_hold long, then go on; directories added by a reload while the scan hangs
    are scanned once it ends, not dropped."""
    lib1, lib2 = tmp_path / "lib1", tmp_path / "lib2"
    video_tree(lib1, 20, 1000, tag="lib")  # big enough that the walker is caught while it runs
    lib2.mkdir()
    (lib2 / "Late [late-one].mp4").write_bytes(b"L" * 4321)
    db = tmp_path / "queue.db"
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               scan={"directories": [str(lib1)], "claim_hold": "3s"})
        assert vfd.ctl(cfg, "add", "wanted").returncode == 0
        with WalkerStopper(str(lib1)) as stopper, running(cfg) as d:
            wait_until(lambda: stopper.stopped, timeout=20, interval=0.01, message="the walker was never seen")
            assert vfd.status(cfg)["scan"]["running"], vfd.status(cfg)["scan"]
            edit = yaml.safe_load(cfg.read_text())
            edit["scan"]["directories"] = [str(lib1), str(lib2)]
            cfg.write_text(yaml.safe_dump(edit))
            d.signal(signal.SIGHUP)
            wait_until(lambda: vfd.status(cfg)["config"]["generation"] == 2, timeout=20, message="reload")
            row = wait_until(lambda: settled_row(db, "wanted"), timeout=30,
                             message="downloads stayed held by the hung scan")
            assert row["status"] == "done" and row["found_by"] == "download", row
            st = vfd.status(cfg)
            assert st["scan"]["running"] and any("claim_hold" in n for n in st["notes"]), st
            stopper.resume()
            late = wait_until(lambda: settled_row(db, "late-one"), timeout=30,
                              message="the directory added during the hung scan was never scanned")
            assert late["found_by"] == "filename" and late["file_size"] == 4321, late
            scan = wait_until(lambda: (s := vfd.status(cfg)["scan"]) and not s["running"] and s, timeout=20)
            assert scan["directories"] == [str(lib1), str(lib2)] and scan["last_ok"], scan
            log = d.log()
    assert "downloads go on while it does" in log and "scanned when it ends" in log, log
    assert srv.body_requests("late-one") == 0


def settled_row(db: Path, video_id: str) -> dict | None:  # type: ignore[type-arg]
    row = {r["video_id"]: r for r in vfd.rows(db)}.get(video_id)
    return row if row and row["status"] in ("done", "failed") else None
