"""Who holds a row: ``lease_owner`` is ``<node>:<pid>@<scope>`` (daemon, fetch, scan), and a
daemon that starts reclaims at once only the rows of its own node whose process is dead.

A real daemon against real SQLite; the rows of "other processes" are written as they would be
(a live pid: this test's own; a dead one: a process that has exited).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from videofetchd.queue.jobs import lease_owner, parse_owner

NODE = "node-a"
FAR = 4102444800.0  #: 2100-01-01: a lease that never expires during the test


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_the_owner_names_node_pid_and_scope_and_a_restart_reclaims_only_dead_local_rows(tmp_path: Path) -> None:
    dead, live = dead_pid(), os.getpid()
    owners = {"deadfetch": lease_owner(NODE, dead, "fetch"),        # ours, gone: reclaimed at once
              "deadold": f"{NODE}:{dead}",                          # written by an earlier version: too
              "livefetch": lease_owner(NODE, live, "fetch"),        # ours, alive (a fetch beside us): kept
              "othernode": lease_owner("node-b", dead, "daemon")}   # another host's: its lease decides
    with MediaServer(default_size=8 * 1024) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, database={"node_name": NODE})
        assert vfd.ctl(cfg, "add", *owners).returncode == 0
        con = sqlite3.connect(tmp_path / "queue.db")
        with con:
            for vid, owner in owners.items():
                con.execute("UPDATE videos SET status = 'running', attempts = 1, lease_owner = ?, claim_token = ?, "
                            "lease_expires = ? WHERE video_id = ?", [owner, "t-" + vid, FAR, vid])
        con.close()
        with vfd.running(cfg) as d:
            st = vfd.status(cfg)
            assert st["lease_owner"] == f"{NODE}:{d.pid}@daemon" and parse_owner(st["lease_owner"]) == (
                NODE, d.pid, "daemon")
            db = tmp_path / "queue.db"
            wait_until(lambda: {r["video_id"] for r in vfd.rows(db) if r["status"] == "done"}
                       == {"deadfetch", "deadold"}, timeout=60, message="the dead local rows were not reclaimed")
            rows = {r["video_id"]: r for r in vfd.rows(db)}
            for vid in ("livefetch", "othernode"):
                assert rows[vid]["status"] == "running" and rows[vid]["lease_owner"] == owners[vid], rows[vid]
            assert "requeued 2 rows left running by a dead daemon on this host" in d.log()
            assert d.stop() == 0


def test_owner_strings_parse_back() -> None:
    assert lease_owner("h", 12, "scan") == "h:12@scan"
    assert parse_owner("h.example:12@fetch") == ("h.example", 12, "fetch")
    assert parse_owner("h:12") == ("h", 12, "")  # the form before scopes
    assert parse_owner("x") is None and parse_owner("h:abc@daemon") is None and parse_owner(":12@daemon") is None
