"""Database errors that are not a lost connection: the daemon survives every one of them.

Real daemon on a real PostgreSQL: a failover to a read-only node (``default_transaction_read_only``
plus terminated backends, so that every new session is read-only), and an HTTP reason phrase with
a NUL byte, which PostgreSQL cannot store in text. The daemon must stay up, retry or fail the
affected row with a readable reason, and leave no row ``running`` once the database is writable.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg2
import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from pg import ADMIN_URL, pg_url  # noqa: F401  (fixture)
from vfd import running

pytestmark = pytest.mark.postgres
KiB = 1024


def admin(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    con = psycopg2.connect(ADMIN_URL)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        con.close()


def pg_rows(url: str) -> dict[str, dict[str, Any]]:
    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            cur.execute("SELECT video_id, status, attempts, last_error, error_kind FROM videos")
            return {r[0]: {"status": r[1], "attempts": r[2], "last_error": r[3], "error_kind": r[4]}
                    for r in cur.fetchall()}
    finally:
        con.close()


def set_read_only(dbname: str, on: bool) -> int:
    """A failover: new sessions of ``dbname`` are read-only (or writable again) from now on, and every
    existing session is cut, as a promoted standby or a switched DNS name would do."""
    admin(f"ALTER DATABASE {dbname} SET default_transaction_read_only = {'on' if on else 'off'}")
    return len(admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                     "AND pid <> pg_backend_pid()", dbname))


def settled(url: str, ids: list[str]) -> dict[str, dict[str, Any]] | None:
    rows = pg_rows(url)
    return rows if all(rows.get(i, {}).get("status") in ("done", "failed") for i in ids) else None


def test_a_read_only_failover_mid_run_is_survived(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    dbname = pg_url.rsplit("/", 1)[1]
    ids = [f"ro-{i}" for i in range(12)]
    with MediaServer(default_size=300 * KiB, rate_bps=300 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, db_url=pg_url,
                               download={"workers": 3}, database={"lease_duration": "20s"})
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: sum(r["status"] == "done" for r in pg_rows(pg_url).values()) >= 2, timeout=60,
                       message="the run did not start")
            try:
                assert set_read_only(dbname, True) >= 1
                # first the cut connection, then, reconnected, the read-only session
                wait_until(lambda: "read-only" in (vfd.status(cfg)["database"]["error"] or ""), timeout=30,
                           message="status never showed the database read-only")
                # downloads go on while results are held back; the daemon neither exits nor spins
                wait_until(lambda: vfd.status(cfg)["database"]["pending_results"] >= 1, timeout=60,
                           message="no result was held back while read-only")
                assert d.proc.poll() is None, d.log()
            finally:
                set_read_only(dbname, False)
            rows = wait_until(lambda: settled(pg_url, ids), timeout=120, message="rows did not settle")
            assert vfd.status(cfg)["database"]["ok"]
            assert d.proc.poll() is None
    assert {r["status"] for r in rows.values()} == {"done"}, rows
    log = d.log()
    assert "Traceback" not in log and "read-only" in log, log


def test_a_nul_byte_in_an_http_reason_is_stored_readably(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    with MediaServer(default_size=50 * KiB) as srv:
        srv.configure("nul-reason", fail_status=500, reason="Bad\x00Gateway \x1b]0;pwned\x07")
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, db_url=pg_url,
                               download={"workers": 2, "max_attempts": 2, "retry_backoff": "0.1s"})
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "nul-reason", "fine-1", "fine-2").returncode == 0
            rows = wait_until(lambda: settled(pg_url, ["nul-reason", "fine-1", "fine-2"]), timeout=60,
                              message="rows did not settle")
            assert d.proc.poll() is None, d.log()
            st = vfd.status(cfg)
    bad = rows["nul-reason"]
    assert bad["status"] == "failed" and bad["attempts"] == 2, bad
    # control characters are stored escaped (videofetchd.text.printable), NUL among them
    assert "\x00" not in bad["last_error"] and "Bad\\x00Gateway \\x1b]0;pwned" in bad["last_error"], bad
    assert rows["fine-1"]["status"] == rows["fine-2"]["status"] == "done"
    assert st["database"]["ok"] and st["counters"]["failed"] == 1
    with contextlib.suppress(Exception):
        assert "Traceback" not in d.log()
