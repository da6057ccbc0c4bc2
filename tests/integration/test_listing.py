"""``videofetchctl list`` (keyset pages) and ``export`` (the per-ID manifest) on both backends.

Real ``python -m videofetchd`` processes against a real SQLite file and a real PostgreSQL database
(tests/pg.py: skipped locally without a server, required under CI=true), where rows are read
through a server-side cursor. What they print on a terminal is in tests/integration/test_views.py;
memory and time at a million rows in bench/list_export_bench.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vfd
from pg import fresh_database

FIELDS = ["video_id", "status", "attempts", "error_kind", "last_error", "file_path", "file_size", "found_by",
          "finished_at"]


class Queue:
    """A config and a way to run SQL on its database, for either backend."""

    def __init__(self, tmp: Path, db_url: str | None) -> None:
        self.cfg = vfd.write_config(tmp, url_template="http://127.0.0.1:9/{id}", db_url=db_url)
        self.db_url = db_url

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        if self.db_url is None:
            con = sqlite3.connect(self.cfg.parent / "queue.db")
            with con:
                con.execute(statement, params)
            con.close()
            return
        import psycopg2
        con = psycopg2.connect(self.db_url)
        with con, con.cursor() as cur:
            cur.execute(statement.replace("?", "%s"), params)
        con.close()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = vfd.ctl(self.cfg, *args)
        assert r.returncode == 0, r.stderr
        return r

    def add(self, n: int, prefix: str = "v") -> list[str]:
        ids = [f"{prefix}{i:04d}" for i in range(n)]
        assert vfd.ctl(self.cfg, "add", "--file", "-", input="\n".join(ids)).returncode == 0
        return ids


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Queue]:
    if request.param == "sqlite":
        yield Queue(tmp_path, None)
    else:
        with fresh_database() as url:
            yield Queue(tmp_path, url)


def listed(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split()[0] for line in r.stdout.splitlines()]


def test_list_pages_by_keyset(queue: Queue) -> None:
    ids = queue.add(25)
    assert listed(queue.ctl("list")) == ids  # not a terminal: every row, no hint
    first = queue.ctl("list", "--limit", "10")
    assert listed(first) == ids[:10]
    assert "--after v0009" in first.stderr  # the next page's command
    assert listed(queue.ctl("list", "--limit", "10", "--after", "v0009")) == ids[10:20]
    assert listed(queue.ctl("list", "--limit", "10", "--after", "v0019")) == ids[20:]
    assert listed(queue.ctl("list", "--after", ids[-1])) == []
    assert listed(queue.ctl("list", "--limit", "0")) == ids  # 0: no limit
    bad = vfd.ctl(queue.cfg, "list", "--after", "nope")
    assert bad.returncode == 2 and "no row has the video ID 'nope'" in bad.stderr
    bad = vfd.ctl(queue.cfg, "list", "--limit", "-1")
    assert bad.returncode == 2 and "--limit" in bad.stderr


def test_a_page_does_not_shift_when_rows_before_it_go_away(queue: Queue) -> None:
    """Keyset, not OFFSET: deleting rows of page 1 must not make page 2 skip rows."""
    ids = queue.add(30)
    page1 = listed(queue.ctl("list", "--limit", "10"))
    queue.sql("DELETE FROM videos WHERE video_id IN ('v0001', 'v0002', 'v0003')")
    page2 = listed(queue.ctl("list", "--limit", "10", "--after", page1[-1]))
    assert page2 == ids[10:20]


def test_list_filters_by_status_across_pages(queue: Queue) -> None:
    ids = queue.add(40)
    queue.sql("UPDATE videos SET status = 'failed', last_error = 'gone' WHERE video_id IN "
              f"({', '.join(repr(i) for i in ids[5::7])})".replace('"', "'"))
    failed = ids[5::7]
    page = listed(queue.ctl("list", "--status", "failed", "--limit", "3"))
    assert page == failed[:3]
    rest = queue.ctl("list", "--status", "failed", "--after", page[-1])
    assert listed(rest) == failed[3:] and all("gone" in line for line in rest.stdout.splitlines())


def test_list_json_is_one_valid_array(queue: Queue) -> None:
    ids = queue.add(12)
    rows = json.loads(queue.ctl("list", "--json").stdout)
    assert [r["video_id"] for r in rows] == ids
    assert {"video_id", "status", "attempts", "last_error", "file_path", "lease_owner"} <= set(rows[0])
    assert json.loads(queue.ctl("list", "--json", "--limit", "5", "--after", "v0004").stdout)[0]["video_id"] == "v0005"
    assert json.loads(queue.ctl("list", "--json", "--status", "done").stdout) == []


def fill_outcomes(queue: Queue) -> None:
    queue.add(3, "x")
    queue.sql("UPDATE videos SET status = 'done', attempts = 1, file_path = '/lib/a, \"quoted\".mp4', "
              "file_size = 1234, found_by = 'download', finished_at = 1764547200.5 WHERE video_id = 'x0000'")
    queue.sql("UPDATE videos SET status = 'failed', attempts = 5, error_kind = 'permanent', "
              "last_error = 'HTTP Error 404: Not Found\nsecond line', finished_at = 1764547300 "
              "WHERE video_id = 'x0001'")


def test_export_jsonl_is_the_manifest(queue: Queue) -> None:
    fill_outcomes(queue)
    records = [json.loads(line) for line in queue.ctl("export").stdout.splitlines()]
    assert [list(r) for r in records] == [FIELDS] * 3
    done, failed, queued = records
    assert done == {"video_id": "x0000", "status": "done", "attempts": 1, "error_kind": None, "last_error": None,
                    "file_path": '/lib/a, "quoted".mp4', "file_size": 1234, "found_by": "download",
                    "finished_at": "2025-12-01T00:00:00Z"}
    assert (failed["status"], failed["error_kind"], failed["last_error"]) == \
        ("failed", "permanent", "HTTP Error 404: Not Found\nsecond line")
    assert queued["status"] == "queued" and queued["finished_at"] is None
    only = [json.loads(line)["video_id"] for line in queue.ctl("export", "--status", "failed", "-").stdout.splitlines()]
    assert only == ["x0001"]


def test_export_csv_round_trips(queue: Queue) -> None:
    fill_outcomes(queue)
    rows = list(csv.reader(io.StringIO(queue.ctl("export", "--format", "csv").stdout)))
    assert rows[0] == FIELDS and len(rows) == 4
    assert rows[1] == ["x0000", "done", "1", "", "", '/lib/a, "quoted".mp4', "1234", "download",
                       "2025-12-01T00:00:00Z"]
    assert rows[2][4] == "HTTP Error 404: Not Found\nsecond line"  # quoted by csv, not mangled


def test_export_to_a_file_is_atomic_and_named_by_its_suffix(tmp_path: Path) -> None:
    queue = Queue(tmp_path, None)
    queue.add(5)
    target = tmp_path / "out" / "manifest.csv"
    target.parent.mkdir()
    target.write_text("old manifest\n")
    r = queue.ctl("export", str(target))
    assert r.stdout == f"exported 5 rows to {target} (csv)\n"
    assert target.read_text().splitlines()[0] == ",".join(FIELDS)  # csv from the suffix
    assert sorted(os.listdir(target.parent)) == ["manifest.csv"]  # no temporary file left
    bad = vfd.ctl(queue.cfg, "export", str(tmp_path / "missing-dir" / "m.jsonl"))
    assert bad.returncode == 1 and "cannot write" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("umask, existing, expected", [
    (0o077, None, 0o600),    # a private user's manifest stays private (it was 0644 whatever the umask)
    (0o022, None, 0o644),
    (0o002, None, 0o664),    # a shared group's file stays writable by the group
    (0o022, 0o640, 0o640),   # a replaced file keeps its own mode
    (0o077, 0o664, 0o664),
])
def test_an_export_file_gets_the_umask_mode_or_keeps_the_replaced_files(
        tmp_path: Path, umask: int, existing: int | None, expected: int) -> None:
    queue = Queue(tmp_path, None)
    queue.add(2)
    target = tmp_path / "manifest.jsonl"
    if existing is not None:
        target.write_text("old\n")
        target.chmod(existing)
    for command in ("export", "export-archive"):  # the yt-dlp archive file is replaced the same way
        r = subprocess.run([vfd.PY, "-m", "videofetchd", command, str(target), "--config", str(queue.cfg)],
                           capture_output=True, text=True, timeout=60, umask=umask)
        assert r.returncode == 0, r.stderr
        assert target.stat().st_mode & 0o777 == expected, (command, oct(target.stat().st_mode))


def test_list_and_export_into_a_pipe_closed_early(tmp_path: Path) -> None:
    queue = Queue(tmp_path, None)
    queue.add(3000)
    for command in ("list", "export"):
        r = subprocess.run(f"{vfd.PY} -m videofetchd {command} --config {queue.cfg} | head -n 1; "
                           "echo \"status ${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                           capture_output=True, text=True, timeout=60)
        assert r.stdout.splitlines()[-1] == "status 0", r.stdout + r.stderr
        assert "Traceback" not in r.stderr and "Broken pipe" not in r.stderr, r.stderr
