"""``videofetchd --check``: the doctor, run as a user would, against set-ups that are really broken.

Each broken set-up is made for real (a directory that is a file, ``chattr +i``, a tmpfs too small,
a database from the future, a daemon already on the socket) and must be an ``error`` with a
detail that says what is wrong; a good set-up is all ``ok``. The daemon runs the same checks at
start and logs one line about them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

import vfd
from helpers import wait_until
from hostfs import immutable, tmpfs
from vfd import running

TEMPLATE = "http://127.0.0.1:9/v/{id}.mp4"
NAMES = ["config", "database", "download_directory", "free_space", "control_socket", "identities",
         "cache_dir", "ytdlp", "ytdlp_ejs", "js_runtime", "ffmpeg", "ffprobe"]


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "VIDEOFETCHD_CONFIG"}
    return subprocess.run([vfd.PY, "-m", "videofetchd", "--check", *args], capture_output=True, text=True,
                          timeout=120, env={**full, **(env or {})})


def checks(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """(exit code, name -> check) of ``--check --json``."""
    r = doctor("--config", str(config), "--json")
    assert "Traceback" not in r.stderr, r.stderr
    data = json.loads(r.stdout)
    assert set(data) == {"checks"} and all(set(c) == {"name", "status", "detail"} for c in data["checks"]), data
    return r.returncode, {c["name"]: c for c in data["checks"]}


def config(tmp_path: Path, **sections: Any) -> Path:
    return vfd.write_config(tmp_path, url_template=TEMPLATE, **sections)


def test_a_good_set_up_is_all_ok(tmp_path: Path) -> None:
    cfg = config(tmp_path, download={"min_free_space": "1MiB"})
    code, found = checks(cfg)
    assert code == 0 and list(found) == NAMES, found
    assert all(c["status"] == "ok" for c in found.values()), found
    assert "does not exist yet; it is created at start" in found["database"]["detail"]
    # the yt-dlp stack of the test venv (the sites extra) and the distribution's ffmpeg
    venv_bin = os.path.dirname(vfd.PY)
    assert found["js_runtime"]["detail"].startswith("deno ") and f"({venv_bin}/deno)" in found["js_runtime"]["detail"]
    assert "runs yt-dlp's challenge solver scripts" in found["js_runtime"]["detail"]
    assert "the version yt-dlp" in found["ytdlp_ejs"]["detail"] and "days old" in found["ytdlp"]["detail"]
    assert "/ffmpeg)" in found["ffmpeg"]["detail"] and "/ffprobe)" in found["ffprobe"]["detail"]
    # nothing was created by looking
    assert not (tmp_path / "queue.db").exists() and not (tmp_path / "videos").exists()
    human = doctor("--config", str(cfg))
    assert human.returncode == 0 and len(human.stdout.strip().splitlines()) == len(NAMES), human.stdout
    assert all(line.split()[0] == "ok" for line in human.stdout.splitlines()), human.stdout
    # once the daemon has made the database: reachable, with its schema version
    with running(cfg) as d:
        code, found = checks(cfg)
        assert found["database"]["status"] == "ok" and "schema version" in found["database"]["detail"]
        assert code == 1 and found["control_socket"]["status"] == "error"  # a daemon is on it now
        assert f"videofetchd pid {d.pid} already answers" in found["control_socket"]["detail"]
        assert d.stop() == 0
    assert ("start-up checks: config ok, database ok, download_directory ok, free_space ok, control_socket ok, "
            "identities ok, cache_dir ok") in d.log_path.read_text()


def test_no_config_at_all_says_how_to_name_one(tmp_path: Path) -> None:
    if Path("/etc/videofetchd/videofetchd.yaml").exists():
        pytest.skip("this machine has the default config file")
    r = doctor("--json")
    assert r.returncode == 1
    found = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert found["config"]["status"] == "error"
    assert "--config" in found["config"]["detail"] and "VIDEOFETCHD_CONFIG" in found["config"]["detail"]
    assert all(found[n]["status"] == "warning" for n in NAMES[1:]), found


def test_an_invalid_config_is_an_error_naming_the_key(tmp_path: Path) -> None:
    cfg = config(tmp_path, download={"workers": "two"})
    code, found = checks(cfg)
    assert code == 1 and found["config"]["status"] == "error"
    assert "download.workers" in found["config"]["detail"] and str(cfg) in found["config"]["detail"]


def test_download_directory_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    code, found = checks(config(tmp_path, download={"directory": str(tmp_path / "plain-file" / "videos")}))
    assert code == 1 and found["download_directory"]["status"] == "error", found
    assert "is not a directory" in found["download_directory"]["detail"], found


def test_download_directory_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "videos").write_text("x")
    code, found = checks(config(tmp_path))
    assert code == 1 and found["download_directory"]["status"] == "error"
    assert f"{tmp_path / 'videos'} exists but is not a directory" in found["download_directory"]["detail"]


def test_an_immutable_download_directory_is_not_writable(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    with immutable(videos):
        code, found = checks(config(tmp_path))
    assert code == 1 and found["download_directory"]["status"] == "error"
    assert "is not writable: Operation not permitted" in found["download_directory"]["detail"], found


def test_free_space_below_min_free_space(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "videos", "8m"):
        code, found = checks(config(tmp_path, download={"min_free_space": "64MiB"}))
    assert code == 1 and found["free_space"]["status"] == "error"
    assert "below download.min_free_space 64.0 MiB" in found["free_space"]["detail"], found
    assert found["download_directory"]["status"] == "ok"


def test_database_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    code, found = checks(config(tmp_path, database={"url": f"sqlite:///{tmp_path}/plain-file/q.db"}))
    assert code == 1 and found["database"]["status"] == "error"
    assert "cannot be created" in found["database"]["detail"], found


def test_database_from_a_newer_videofetchd(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert vfd.ctl(cfg, "add", "x1").returncode == 0  # makes the database
    con = sqlite3.connect(tmp_path / "queue.db")
    with con:
        con.execute("INSERT INTO videofetchd_schema (version) VALUES (99)")
    con.close()
    code, found = checks(cfg)
    assert code == 1 and "schema version 99 is newer" in found["database"]["detail"], found


def test_database_server_unreachable(tmp_path: Path) -> None:
    code, found = checks(config(tmp_path, database={"url": "postgresql://postgres@127.0.0.1:1/x"}))
    assert code == 1 and found["database"]["status"] == "error"
    assert "127.0.0.1" in found["database"]["detail"], found


def test_control_socket_directory_not_writable(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with immutable(run):
        code, found = checks(config(tmp_path, control={"socket": str(run / "control.sock")}))
    assert code == 1 and found["control_socket"]["status"] == "error"
    assert f"{run} is not writable" in found["control_socket"]["detail"], found


def test_the_daemon_starts_paused_when_the_directory_check_fails(tmp_path: Path) -> None:
    """download_directory is an error the daemon waits out (a disk not mounted yet), not a refusal."""
    (tmp_path / "videos").write_text("a file where the directory should be\n")
    cfg = config(tmp_path)
    with running(cfg) as d:
        health = vfd.status(cfg)["health"]
        assert not health["ok"] and [c["name"] for c in health["conditions"]] == ["download_directory"]
        (tmp_path / "videos").unlink()
        wait_until(lambda: vfd.status(cfg)["health"]["ok"], timeout=30)
        assert d.stop() == 0
    log = d.log_path.read_text()
    assert "start-up checks: config ok, database ok, download_directory error (" in log, log


def test_a_daemon_that_holds_the_lock_but_does_not_answer_is_an_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    sock = tmp_path / "control.sock"
    with running(cfg) as d:
        wait_until(lambda: sock.exists(), timeout=30)
        sock.unlink()  # the socket file is gone (a cleaner in /run?): the daemon holds its lock all the same
        code, found = checks(cfg)
        assert code == 1 and found["control_socket"]["status"] == "error", found
        assert f"pid {d.proc.pid}" in found["control_socket"]["detail"], found
    code, found = checks(cfg)  # the daemon stopped: the lock is free again
    assert found["control_socket"]["status"] == "ok", found


def test_without_ffmpeg_on_path_merges_are_warned_about(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    r = doctor("--config", str(config(tmp_path, download={"min_free_space": "1MiB"})), "--json",
               env={"PATH": str(empty)})
    found = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    for name in ("ffmpeg", "ffprobe"):
        assert found[name]["status"] == "warning", found[name]
        assert "merging separate video and audio (best quality) and audio extraction will fail" in found[name]["detail"]
    # deno is found next to the venv's Python, not on PATH, and still runs JavaScript
    assert found["js_runtime"]["status"] == "ok", found["js_runtime"]
    assert r.returncode == 0  # warnings only


def test_a_venv_without_deno_is_an_error(tmp_path: Path) -> None:
    """A venv of its own (no deno in its bin/) that borrows the test venv's packages; PATH has none."""
    import sysconfig
    venv = tmp_path / "venv"
    subprocess.run([vfd.PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz-test-venv.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    assert not (venv / "bin" / "deno").exists()
    cfg = config(tmp_path, download={"min_free_space": "1MiB"})
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "videofetchd", "--check", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    found = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1
    assert found["js_runtime"]["status"] == "error", found["js_runtime"]
    assert "no usable JavaScript runtime (enabled in download.ytdlp.js_runtimes: deno)" in found["js_runtime"]["detail"]
    assert found["ytdlp"]["status"] == "ok" and found["ffmpeg"]["status"] == "ok"
