"""``videofetchctl`` queue commands as real processes on a real SQLite queue: add, list, retry,
where the config comes from, and ``status`` without a daemon.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import vfd

CTL = str(Path(sys.executable).parent / "videofetchctl")
TEMPLATE = "http://127.0.0.1:9/v/{id}.mp4"  # nothing here downloads


def run(*args: str, cwd: Path | None = None, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``videofetchctl ARGS`` exactly as given (the caller places --config)."""
    return subprocess.run([CTL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=input,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return vfd.write_config(tmp_path, url_template=TEMPLATE)


def db(config: Path) -> Path:
    return config.parent / "queue.db"


def ids(config: Path, where: str = "1=1") -> list[str]:
    return [r["video_id"] for r in vfd.rows(db(config), where)]


def set_rows(config: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Change rows as another program on the database would."""
    con = sqlite3.connect(db(config))
    with con:
        con.execute(sql, params)
    con.close()


# -- add ----------------------------------------------------------------------------------------

def test_add_is_idempotent(config: Path) -> None:
    r = vfd.ctl(config, "add", "dQw4w9WgXcQ", "x8k2j3f")
    assert r.returncode == 0, r.stderr
    assert "added 2, already known 0" in r.stdout
    r = vfd.ctl(config, "add", "dQw4w9WgXcQ", "_OBlgSz8sSM")
    assert r.returncode == 0, r.stderr
    assert "added 1, already known 1" in r.stdout
    assert ids(config) == ["dQw4w9WgXcQ", "x8k2j3f", "_OBlgSz8sSM"]
    assert {r["status"] for r in vfd.rows(db(config))} == {"queued"}


def test_add_an_id_with_a_leading_dash_after_separator(config: Path) -> None:
    r = run("add", "--config", str(config), "--", "-8LkfJYfx2Q", "--abcdefgh")
    assert r.returncode == 0, r.stderr
    assert ids(config) == ["-8LkfJYfx2Q", "--abcdefgh"]


def test_add_an_id_with_a_leading_dash(config: Path) -> None:
    r = vfd.ctl(config, "add", "dQw4w9WgXcQ", "-8LkfJYfx2Q")
    assert r.returncode == 0, r.stderr
    assert ids(config) == ["dQw4w9WgXcQ", "-8LkfJYfx2Q"]


def test_add_keeps_a_known_rows_state(config: Path) -> None:
    assert vfd.ctl(config, "add", "abc").returncode == 0
    set_rows(config, "UPDATE videos SET status = 'done', file_path = '/v/abc.mp4' WHERE video_id = 'abc'")
    r = vfd.ctl(config, "add", "abc")
    assert r.returncode == 0 and "already known 1" in r.stdout
    (row,) = vfd.rows(db(config))
    assert (row["status"], row["file_path"]) == ("done", "/v/abc.mp4")


def test_add_from_stdin(config: Path) -> None:
    r = vfd.ctl(config, "add", "--file", "-", input="# my list\nstdin-1\n\n   stdin-2  \n#stdin-3\nstdin-1\n")
    assert r.returncode == 0, r.stderr
    assert ids(config) == ["stdin-1", "stdin-2"]
    assert "added 2, already known 1" in r.stdout


def test_add_from_a_file_plus_arguments(config: Path, tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text("# exported 2024-01-01\n\nfile-1\n  file-2\t\n\n# file-3\nfile-4\n")
    r = vfd.ctl(config, "add", "arg-1", "--file", str(listing))
    assert r.returncode == 0, r.stderr
    assert ids(config) == ["arg-1", "file-1", "file-2", "file-4"]


def test_add_a_missing_file(config: Path, tmp_path: Path) -> None:
    r = vfd.ctl(config, "add", "--file", str(tmp_path / "absent.txt"))
    assert r.returncode == 2
    assert "absent.txt" in r.stderr and "Traceback" not in r.stderr


def test_add_nothing(config: Path) -> None:
    r = vfd.ctl(config, "add")
    assert r.returncode == 2 and "nothing to add" in r.stderr


BAD = ["--exec=touch x", "../../etc/passwd", "a/b", "a\\b", "x" * 10_000, "$(touch x)", "a;touch x"]


def test_bad_inputs_are_refused_and_good_ones_added(config: Path, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run("add", "--config", str(config), "--", "good-1", *BAD, "good-2", cwd=work, env={"HOME": str(home)})
    assert r.returncode == 2, r.stderr
    assert ids(config) == ["good-1", "good-2"]
    assert "added 2" in r.stdout and f"refused {len(BAD)}" in r.stdout
    refusals = [line for line in r.stderr.splitlines() if "refused" in line]
    assert len(refusals) == len(BAD), r.stderr
    for bad, line in zip(BAD, refusals):
        if len(bad) > 100:  # not echoed whole: named by its position, its length given
            assert "argument" in line and "10000" in line and len(line) < 500, line[:600]
        else:
            assert bad in line.replace("\\\\", "\\"), (bad, line)
    # nothing else happened: no file named x, nothing new next to the config, nothing in $HOME
    assert list(work.iterdir()) == []
    assert list(home.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("queue.db")) == \
        sorted(p for p in before if not p.startswith("queue.db"))
    assert not Path("x").exists()


def test_an_option_lookalike_without_separator_adds_nothing(config: Path, tmp_path: Path) -> None:
    r = run("add", "good-1", "--exec=touch x", "--config", str(config), cwd=tmp_path)
    assert r.returncode == 2
    assert "--exec=touch x" in r.stderr
    assert not (tmp_path / "x").exists()


def test_bad_lines_in_a_file_are_named_by_line(config: Path, tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_bytes(b"ok-1\nbad\x00nul\n../../etc/passwd\n--exec=touch x\nok-2\n")
    r = vfd.ctl(config, "add", "--file", str(listing))
    assert r.returncode == 2
    assert ids(config) == ["ok-1", "ok-2"]
    assert f"{listing}:2" in r.stderr and "control characters" in r.stderr
    assert f"{listing}:3" in r.stderr and "../../etc/passwd" in r.stderr
    assert f"{listing}:4" in r.stderr and "--exec=touch x" in r.stderr
    assert "\x00" not in r.stderr


def test_a_full_url_is_queued_as_is(config: Path) -> None:
    page = "https://example.org/media/talk-42.html?lang=en"
    r = vfd.ctl(config, "add", page, "https://www.youtube.com/watch?v=dQw4w9WgXcQ")
    assert r.returncode == 0, r.stderr
    rows = {r["url"]: r for r in vfd.rows(db(config))}
    assert set(rows) == {page, "https://www.youtube.com/watch?v=dQw4w9WgXcQ"}
    assert rows["https://www.youtube.com/watch?v=dQw4w9WgXcQ"]["video_id"] == "dQw4w9WgXcQ"  # known offline
    assert rows[page]["video_id"]
    again = vfd.ctl(config, "add", page)
    assert "already known 1" in again.stdout
    assert len(vfd.rows(db(config))) == 2


@pytest.mark.parametrize("url", ["file:///etc/passwd", "https://exa mple.org/x", "ftp://example.org/x"])
def test_bad_urls_are_refused(config: Path, url: str) -> None:
    r = run("add", "--config", str(config), "--", url, "fine")
    assert r.returncode == 2
    assert ids(config) == ["fine"]


# -- list ---------------------------------------------------------------------------------------

def test_list_json(config: Path) -> None:
    assert vfd.ctl(config, "add", "a1", "a2", "a3").returncode == 0
    set_rows(config, "UPDATE videos SET status = 'failed', attempts = 5, last_error = 'HTTP Error 404: Not Found' "
             "WHERE video_id = 'a2'")
    set_rows(config, "UPDATE videos SET status = 'done', file_path = '/lib/a3.mp4', file_size = 7 "
             "WHERE video_id = 'a3'")
    r = vfd.ctl(config, "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert isinstance(rows, list) and len(rows) == 3
    for row in rows:
        assert {"video_id", "status", "attempts", "last_error", "file_path"} <= set(row)
    by_id = {row["video_id"]: row for row in rows}
    assert (by_id["a1"]["status"], by_id["a1"]["attempts"], by_id["a1"]["file_path"]) == ("queued", 0, None)
    assert (by_id["a2"]["status"], by_id["a2"]["last_error"]) == ("failed", "HTTP Error 404: Not Found")
    assert (by_id["a3"]["status"], by_id["a3"]["file_path"]) == ("done", "/lib/a3.mp4")

    failed = json.loads(vfd.ctl(config, "list", "--status", "failed", "--json").stdout)
    assert [row["video_id"] for row in failed] == ["a2"]
    plain = vfd.ctl(config, "list", "--status", "failed")
    assert plain.returncode == 0 and "a2" in plain.stdout and "a1" not in plain.stdout


def test_list_empty_queue(config: Path) -> None:
    r = vfd.ctl(config, "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_list_refuses_an_unknown_status(config: Path) -> None:
    r = vfd.ctl(config, "list", "--status", "bogus")
    assert r.returncode == 2


# -- retry --------------------------------------------------------------------------------------

def fail_all(config: Path, *video_ids: str) -> None:
    marks = ", ".join("?" for _ in video_ids)
    set_rows(config, f"UPDATE videos SET status = 'failed', attempts = 5, last_error = 'gone' "
             f"WHERE video_id IN ({marks})", video_ids)


def test_retry_named_ids(config: Path) -> None:
    assert vfd.ctl(config, "add", "r1", "r2", "r3").returncode == 0
    fail_all(config, "r1", "r2")
    r = vfd.ctl(config, "retry", "r1", "r3")
    assert r.returncode == 0, r.stderr
    assert "requeued 1" in r.stdout
    rows = {row["video_id"]: row for row in vfd.rows(db(config))}
    assert (rows["r1"]["status"], rows["r1"]["attempts"]) == ("queued", 0)
    assert rows["r2"]["status"] == "failed"


def test_retry_failed(config: Path) -> None:
    assert vfd.ctl(config, "add", "r1", "r2", "r3").returncode == 0
    fail_all(config, "r1", "r2")
    set_rows(config, "UPDATE videos SET status = 'done' WHERE video_id = 'r3'")
    r = vfd.ctl(config, "retry", "--failed")
    assert r.returncode == 0 and "requeued 2" in r.stdout
    assert {row["video_id"]: row["status"] for row in vfd.rows(db(config))} == \
        {"r1": "queued", "r2": "queued", "r3": "done"}
    assert "requeued 0" in vfd.ctl(config, "retry", "--failed").stdout


def test_ids_with_a_leading_dash_for_retry_and_list_after(config: Path) -> None:
    """YouTube IDs may start with '-': ``retry -8LkfJYfx2Q``, ``retry -- -8LkfJYfx2Q`` and
    ``list --after -8LkfJYfx2Q`` (space or '=') take them as IDs, not as unknown options."""
    assert vfd.ctl(config, "add", "a0", "-8LkfJYfx2Q", "-Zz9", "b1").returncode == 0
    fail_all(config, "-8LkfJYfx2Q", "-Zz9")
    r = vfd.ctl(config, "retry", "-8LkfJYfx2Q")
    assert r.returncode == 0 and "requeued 1" in r.stdout, r.stdout + r.stderr
    r = run("retry", "--config", str(config), "--", "-Zz9")
    assert r.returncode == 0 and "requeued 1" in r.stdout, r.stdout + r.stderr
    for after in (["--after", "-8LkfJYfx2Q"], ["--after=-8LkfJYfx2Q"]):
        r = vfd.ctl(config, "list", *after, "--json")
        assert r.returncode == 0, (after, r.stderr)
        assert [x["video_id"] for x in json.loads(r.stdout)] == ["-Zz9", "b1"], (after, r.stdout)
    r = vfd.ctl(config, "list", "--after")  # still a usage error without a value
    assert r.returncode == 2 and "expected one argument" in r.stderr


def test_retry_needs_ids_or_failed(config: Path) -> None:
    r = vfd.ctl(config, "retry")
    assert r.returncode == 2 and "--failed" in r.stderr


# -- where the config comes from ----------------------------------------------------------------

def test_config_before_and_after_the_subcommand(config: Path) -> None:
    assert run("--config", str(config), "add", "before").returncode == 0
    assert run("add", "after", "--config", str(config)).returncode == 0
    listed = run("--config", str(config), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["video_id"] for row in json.loads(listed.stdout)] == ["before", "after"]


def test_config_from_the_environment(config: Path, tmp_path: Path) -> None:
    env = {"VIDEOFETCHD_CONFIG": str(config)}
    assert run("add", "from-env", env=env, cwd=tmp_path).returncode == 0
    assert ids(config) == ["from-env"]
    r = run("list", "--json", env=env)
    assert [row["video_id"] for row in json.loads(r.stdout)] == ["from-env"]


def test_an_explicit_config_beats_the_environment(config: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    other_cfg = vfd.write_config(other, url_template=TEMPLATE)
    r = run("add", "explicit", "--config", str(other_cfg), env={"VIDEOFETCHD_CONFIG": str(config)})
    assert r.returncode == 0, r.stderr
    assert ids(other_cfg) == ["explicit"]
    assert not db(config).exists()


def test_a_bad_config_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("download:\n  workers: two\n")
    r = run("list", "--config", str(bad))
    assert r.returncode == 78
    assert str(bad) in r.stderr and "download.workers" in r.stderr


# -- no daemon ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["status", "pause", "resume", "reload"])
def test_socket_commands_without_a_daemon_exit_3(config: Path, command: str) -> None:
    r = vfd.ctl(config, command)
    assert r.returncode == 3, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "not running" in lines[0] and str(config.parent / "control.sock") in lines[0]
    assert r.stdout == ""


def test_status_json_without_a_daemon_exits_3(config: Path) -> None:
    r = vfd.ctl(config, "status", "--json")
    assert r.returncode == 3 and "not running" in r.stderr
