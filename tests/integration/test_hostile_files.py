"""Hostile input that is not a web site (issue 13): files in a scanned tree, rows written straight
into the queue, and what a local user may read of what videofetchd writes.

Real processes throughout: ``videofetchctl scan``/``list``/``fetch`` and the daemon, a real SQLite
queue in tmp_path, the media server on loopback for the downloads.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer

ESC = "\x1b"


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with MediaServer(default_size=20 * 1024) as srv:
        yield srv


def by_id(tmp: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(tmp / "queue.db")}


def scan(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return vfd.ctl(cfg, "scan", *args)


# -- the scanner ------------------------------------------------------------------------------------

def test_the_scanner_follows_no_symlinked_video_or_sidecar(tmp_path: Path, media: MediaServer) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.info.json"
    secret.write_text(json.dumps({"id": "stolenid01", "extractor_key": "Youtube"}))
    secret.chmod(0o600)  # only root (who runs the scan) may read it; the library's writer may not
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "clip.mp4").write_bytes(b"v" * 10)
    (lib / "clip.info.json").symlink_to(secret)
    target = "/etc/shadow" if os.path.exists("/etc/shadow") else "/etc/passwd"
    (lib / "shadow [shadowid01].mp4").symlink_to(target)
    (lib / "real [realid0001].mp4").write_bytes(b"v" * 10)
    cfg = vfd.write_config(tmp_path, url_template=media.url_template)
    r = scan(cfg, str(lib), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(by_id(tmp_path)) == {"realid0001"}  # neither the secret's ID nor the shadow file's size
    assert report["skipped_errors"] == 2, report
    assert any("clip.info.json: a symlink (not followed)" in w for w in report["warnings"]), report
    assert any("shadow [shadowid01].mp4: a symlink (not followed)" in w for w in report["warnings"]), report


def _peak_rss_of(cmd: list[str]) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` from a fresh interpreter and return the largest RSS (bytes) of it and every
    descendant it waited for (the scan's walker included), with its result."""
    script = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
              "text=True); print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
              "r.returncode, r.stdout, r.stderr]))")
    out = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True, timeout=300)
    peak_kib, rc, stdout, stderr = json.loads(out.stdout)
    return peak_kib * 1024, subprocess.CompletedProcess(cmd, rc, stdout, stderr)


def test_a_huge_sidecar_is_skipped_unread_with_a_counted_warning(tmp_path: Path, media: MediaServer) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "big [bigsidecar1].mp4").write_bytes(b"v" * 10)
    with open(lib / "big [bigsidecar1].info.json", "wb") as fh:  # 60 MiB of {} items: 1.6 GB in json.loads
        fh.write(b"[" + b"{}," * (20 * 1024**2) + b"{}]")
    cfg = vfd.write_config(tmp_path, url_template=media.url_template)
    peak, r = _peak_rss_of([sys.executable, "-m", "videofetchd", "scan", str(lib), "--json", "--config", str(cfg)])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["skipped_errors"] == 1 and "larger than 4194304 bytes" in report["warnings"][0], report
    assert by_id(tmp_path)["bigsidecar1"]["found_by"] == "filename"  # the file name still names it
    assert peak < 300 * 1024**2, f"scan peaked at {peak / 1024**2:.0f} MiB"


def test_file_names_with_escapes_and_newlines_are_printed_escaped(tmp_path: Path, media: MediaServer) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    evil = "evil\x1b]0;owned\x07\x1b[2J\nline [evilname01].mp4"
    (lib / evil).write_bytes(b"v" * 10)
    (lib / "link\x1b[31m [linkname01].mp4").symlink_to(lib / evil)  # makes a warning naming it
    cfg = vfd.write_config(tmp_path, url_template=media.url_template)
    r = scan(cfg, str(lib))
    assert r.returncode == 0, r.stderr
    assert ESC not in r.stdout + r.stderr and "link\\x1b[31m [linkname01].mp4" in r.stderr
    assert by_id(tmp_path)["evilname01"]["file_path"] == str(lib / evil)  # stored as it is ...
    listed = vfd.ctl(cfg, "list")
    assert ESC not in listed.stdout and "evil\\x1b]0;owned\\x07\\x1b[2J\\nline" in listed.stdout  # ... shown escaped
    assert len(listed.stdout.splitlines()) == 1


# -- rows written straight into the database --------------------------------------------------------

def test_a_hostile_video_id_with_a_url_is_refused_at_its_claim(tmp_path: Path, media: MediaServer) -> None:
    """A queue writer inserts an ID full of escape sequences next to a URL (SQLite lets it: see
    models.schema_v3); the claim refuses it, and list shows it escaped."""
    cfg = vfd.write_config(tmp_path, url_template=media.url_template)
    assert vfd.ctl(cfg, "add", "fine00001").returncode == 0
    con = sqlite3.connect(tmp_path / "queue.db")
    with con:
        con.execute("INSERT INTO videos (video_id, url) VALUES (?, ?)", ("\x1b[2Jowned", media.url("bad")))
    con.close()
    r = vfd.ctl(cfg, "fetch", timeout=120)
    rows = by_id(tmp_path)
    bad = rows["\x1b[2Jowned"]
    assert bad["status"] == "failed" and bad["error_kind"] == "invalid", bad
    assert rows["fine00001"]["status"] == "done"
    assert not [x for x in media.requests() if x.video_id == "bad"]
    assert ESC not in r.stdout + r.stderr
    listed = vfd.ctl(cfg, "list")
    assert ESC not in listed.stdout and "\\x1b[2Jowned" in listed.stdout


# -- permissions ------------------------------------------------------------------------------------

def _world_bits(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode) & 0o007


def test_fetch_and_the_daemon_write_nothing_world_readable(tmp_path: Path, media: MediaServer) -> None:
    for name in ("cli", "api", "daemon"):
        (tmp_path / name).mkdir()
    old = os.umask(0o022)  # what a login shell usually has: new files 0644
    try:
        cli = vfd.write_config(tmp_path / "cli", url_template=media.url_template)
        assert vfd.ctl(cli, "add", "perm00001").returncode == 0  # creates the database
        r = vfd.ctl(cli, "fetch", "--num-workers", "1", timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        api = vfd.write_config(tmp_path / "api", url_template=media.url_template)
        assert vfd.ctl(api, "add", "perm00002").returncode == 0
        r = subprocess.run([sys.executable, "-c", "import asyncio, os, sys; from videofetchd import Fetcher; "
                            "asyncio.run(Fetcher(sys.argv[1]).fetch(num_workers=1)); print(oct(os.umask(0)))",
                            str(api)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "0o22", r.stdout + r.stderr  # the caller's umask is back
        daemon = vfd.write_config(tmp_path / "daemon", url_template=media.url_template)
        with vfd.running(daemon):  # the daemon creates its database itself
            assert vfd.ctl(daemon, "add", "perm00003").returncode == 0
            wait_until(lambda: by_id(tmp_path / "daemon").get("perm00003", {}).get("status") == "done", timeout=60)
    finally:
        os.umask(old)
    ours = [p for p in tmp_path.rglob("*") if (p.is_file() and p.name != "videofetchd.yaml"
                                               and not p.name.startswith("daemon-")) or p.name == "videos"]
    assert sum(p.suffix == ".mp4" for p in ours) == 3 and sum(p.name == "queue.db" for p in ours) == 3, ours
    loose = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(os.stat(p).st_mode)) for p in ours if _world_bits(p)}
    assert loose == {}
