"""Children that cannot be killed or cannot finish starting: the supervisor gives up on them,
says so, and carries on.

Real daemon, real yt-dlp children. A child that outlives SIGKILL is made with the cgroup v1
freezer (a frozen task keeps a pending SIGKILL until it is thawed, exactly like uninterruptible
sleep on a hung mount); a warm-up that hangs reads its cookie file from a FIFO nobody writes.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from vfd import running

KiB = 1024
FREEZER = Path("/sys/fs/cgroup/freezer")


@contextlib.contextmanager
def freezer() -> Iterator[Path]:
    if not (FREEZER / "cgroup.procs").exists() or os.geteuid() != 0:
        pytest.skip("needs root and the cgroup v1 freezer")
    group = FREEZER / f"vfd-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            (group / "freezer.state").write_text("THAWED")
        for pid in (group / "cgroup.procs").read_text().split():  # back to the root group, then remove
            with contextlib.suppress(OSError):
                (FREEZER / "cgroup.procs").write_text(pid)
        wait_until(lambda: not (group / "cgroup.procs").read_text().split(), timeout=10)
        group.rmdir()


def row(db: Path, video_id: str) -> dict[str, Any]:
    return {r["video_id"]: r for r in vfd.rows(db)}[video_id]


def conditions(cfg: Path) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in vfd.status(cfg)["health"]["conditions"]}


def test_a_child_that_outlives_sigkill_is_given_up_and_reported(tmp_path: Path) -> None:
    with MediaServer(default_size=400 * KiB, rate_bps=100 * KiB) as srv, freezer() as group:
        srv.configure("frozen", stall_after=16 * KiB, stall_times=1)  # no more bytes: the freeze looks stalled
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "stall_timeout": "2s", "kill_grace": "1s",
                                         "retry_backoff": "0.1s"})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "frozen").returncode == 0
            pid = wait_until(lambda: vfd.worker_pids(cfg).get("frozen"), timeout=30, message="job never started")
            wait_until(lambda: srv.stalled_count == 1, timeout=30, message="the download never reached the stall")
            (group / "cgroup.procs").write_text(str(pid))
            (group / "freezer.state").write_text("FROZEN")
            # stall -> SIGTERM -> SIGKILL -> kill_grace: the row goes back, the condition is up
            cond = wait_until(lambda: conditions(cfg).get("worker_unkillable"), timeout=30,
                              message="the unkillable child was never reported")
            assert str(pid) in cond["detail"], cond
            r = row(db, "frozen")
            assert r["status"] == "queued" and r["lease_owner"] is None and "outlived SIGKILL" in r["last_error"], r
            st = vfd.status(cfg)
            assert st["workers"][0]["pid"] not in (None, pid), st["workers"]  # the slot has a new child
            assert os.path.exists(f"/proc/{pid}"), "the frozen child should still exist"
            # nothing is claimed while a child is stuck; once it can die, it does, and work resumes
            (group / "freezer.state").write_text("THAWED")
            wait_until(lambda: "worker_unkillable" not in conditions(cfg), timeout=30,
                       message="the condition did not clear after the child died")
            r = wait_until(lambda: (x := row(db, "frozen")) and x["status"] == "done" and x, timeout=60,
                           message="the row was not downloaded after the condition cleared")
            log = d.log()
    assert r["attempts"] == 2, r
    assert Path(r["file_path"]).read_bytes() == srv.content("frozen")
    assert log.count("sending SIGKILL") == 1, log  # SIGKILL once, not every tick
    assert "outlived SIGKILL" in log and "exited after" in log, log


def test_a_warm_up_that_hangs_is_killed_and_the_slot_recovers(tmp_path: Path) -> None:
    fifo = tmp_path / "cookies.txt"
    os.mkfifo(fifo)
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 1, "stall_timeout": "2s", "kill_grace": "1s",
                                         "ytdlp": {"cookiefile": str(fifo)}})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            first = wait_until(lambda: vfd.status(cfg)["workers"][0]["pid"], timeout=30)
            assert vfd.ctl(cfg, "add", "after-warm").returncode == 0
            wait_until(lambda: "warming up for" in d.log(), timeout=40, message="the hung warm-up was never killed")
            # the kill is logged as it is sent: the child is gone (or a zombie) moments later
            wait_until(lambda: not os.path.exists(f"/proc/{first}") or _state(first) == "Z", timeout=5,
                       message="the child killed for a hung warm-up is still running")
            fifo.unlink()
            fifo.write_text("# Netscape HTTP Cookie File\n")  # the mount is back: a plain file
            r = wait_until(lambda: (x := row(db, "after-warm")) and x["status"] == "done" and x, timeout=60,
                           message="the slot never recovered")
            log = d.log()
    assert r["attempts"] == 1, r
    assert log.count("warming up for") >= 1 and "warm-up hung" in log, log


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
