"""The daemon under systemd: sd_notify, the watchdog, signals, reloads, the control socket, exit codes.

Everything is real: the daemon is a ``python -m videofetchd`` process, the notify socket is a real
AF_UNIX datagram socket, downloads go through real yt-dlp to the local media server, signals are
real signals and the control socket is spoken to both by ``videofetchctl`` and by raw sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import yaml

import vfd
from vfd import running, shutdown
from helpers import wait_until
from mediaserver import MediaServer

KiB = 1024
MiB = 1024 * KiB
REPO = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------------

def sock_path(config: Path) -> str:
    return str(yaml.safe_load(config.read_text())["control"]["socket"])


def raw_exchange(path: str, payload: bytes, timeout: float = 10.0,
                 close_wait: float = 0.0) -> tuple[bytes, bool]:
    """Send ``payload`` on a fresh connection; (first reply line, whether the server closed the
    connection after it, waiting up to ``close_wait`` seconds for that)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(payload)
        data = b""
        while b"\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return data, True
            data += chunk
        line, _, rest = data.partition(b"\n")
        if rest or not close_wait:
            return line, False
        s.settimeout(close_wait)
        try:
            return line, s.recv(1) == b""
        except socket.timeout:
            return line, False


def query(config: Path, cmd: str = "status") -> dict[str, Any]:
    """One control request over a raw socket (faster than spawning videofetchctl for polling)."""
    line, _ = raw_exchange(sock_path(config), json.dumps({"cmd": cmd}).encode() + b"\n")
    reply: dict[str, Any] = json.loads(line)
    return reply


def stays(predicate: Callable[[], Any], seconds: float, interval: float = 0.1, message: str = "") -> None:
    """Assert ``predicate`` holds on every poll for ``seconds`` (checking that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        assert value, f"{message or 'condition broke'} (last value: {value!r})"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def edit_config(config: Path, **sections: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(data))


def records(srv: MediaServer, video_id: str, since: float = 0.0) -> list[Any]:
    return [r for r in srv.requests() if r.video_id == video_id and r.time >= since]


def by_id_rows(db: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(db)}


def log_text(d: vfd.Daemon) -> str:
    return d.log_path.read_text()  # vfd.Daemon.log() flushes a file that stop() already closed


# -- sd_notify and the watchdog -----------------------------------------------------------------------

def _notify_env(listener: vfd.NotifyListener) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}


def _pings(listener: vfd.NotifyListener, after: float, before: float = float("inf")) -> list[float]:
    return [t for t, m in list(listener.messages) if "WATCHDOG=1" in m.splitlines() and after < t < before]


def test_sd_notify_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        try:
            with running(cfg, env=_notify_env(listener)) as d:
                wait_until(lambda: "READY=1" in listener.fields(), timeout=20, message="no READY=1")
                wait_until(lambda: any(f.startswith("STATUS=") for f in listener.fields()), timeout=10)
                # work makes STATUS change; the line must stay ASCII
                assert vfd.ctl(cfg, "add", "sd-a", "sd-b").returncode == 0
                wait_until(lambda: any("done 2" in f for f in listener.fields()), timeout=30,
                           message="STATUS= never showed the two finished jobs")

                n_before_hup = len(listener.fields())
                d.signal(signal.SIGHUP)
                wait_until(lambda: "RELOADING=1" in listener.fields()[n_before_hup:], timeout=10)
                wait_until(lambda: "READY=1" in listener.fields()[listener.fields().index(
                    "RELOADING=1", n_before_hup):], timeout=10, message="no READY=1 after RELOADING=1")
                assert d.stop(timeout=30) == 0
        finally:
            listener.close()

    fields = listener.fields()
    order = [f for f in fields if f in ("READY=1", "RELOADING=1", "STOPPING=1")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], order
    first_status = next(i for i, f in enumerate(fields) if f.startswith("STATUS="))
    assert fields.index("READY=1") <= first_status, "STATUS= before READY=1"
    reload_msgs = [m for _, m in listener.messages if "RELOADING=1" in m]
    assert any("MONOTONIC_USEC=" in m for m in reload_msgs), "RELOADING=1 without MONOTONIC_USEC="
    statuses = [f for f in fields if f.startswith("STATUS=")]
    for line in statuses:
        assert line.isascii() and line.isprintable() and "\ufffd" not in line, repr(line)
    assert "READY=1" not in fields[fields.index("STOPPING=1"):]


def test_watchdog_stops_while_frozen_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        try:
            with running(cfg, env=_notify_env(listener)) as d:
                t0 = time.monotonic()
                wait_until(lambda: len(_pings(listener, t0)) >= 3, timeout=5, message="no WATCHDOG=1 pings")
                d.signal(signal.SIGSTOP)
                wait_until(lambda: psutil.Process(d.pid).status() == psutil.STATUS_STOPPED, timeout=5)
                t_stop = time.monotonic()
                time.sleep(1.5)  # the stimulus is the freeze itself: 1.5 s without a main loop
                t_cont = time.monotonic()
                frozen = _pings(listener, t_stop + 0.05, t_cont)
                d.signal(signal.SIGCONT)
                assert frozen == [], f"{len(frozen)} WATCHDOG=1 pings while the daemon was stopped"
                wait_until(lambda: _pings(listener, t_cont), timeout=3, message="no WATCHDOG=1 after SIGCONT")
                assert d.stop(timeout=30) == 0
        finally:
            listener.close()


def test_watchdog_ping_cadence_when_idle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC=400000: systemd kills after 0.4 s of silence, so pings must come every ~0.2 s."""
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)  # poll_interval 0.5s
        try:
            with running(cfg, env=_notify_env(listener)) as d:
                t0 = time.monotonic()
                wait_until(lambda: time.monotonic() - t0 > 2.0 and len(_pings(listener, t0)) >= 2, timeout=10,
                           message="no WATCHDOG=1 pings")
                pings = _pings(listener, t0)
                gaps = [b - a for a, b in zip(pings, pings[1:])]
                assert d.stop(timeout=30) == 0
        finally:
            listener.close()
    assert max(gaps) < 0.35, f"watchdog gaps {['%.3f' % g for g in gaps]} with WatchdogSec=0.4s"


# -- SIGHUP -----------------------------------------------------------------------------------------

def test_sighup_resizes_pool_and_survives_a_broken_file(tmp_path: Path) -> None:
    with MediaServer(default_size=300 * KiB, rate_bps=200 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2})
        with running(cfg) as d:
            st = query(cfg)
            assert len(st["workers"]) == 2 and st["config"]["generation"] == 1 and st["pid"] == d.pid

            edit_config(cfg, download={"workers": 4})
            d.signal(signal.SIGHUP)
            st = wait_until(lambda: (s := query(cfg))["config"]["generation"] == 2 and s, timeout=10)
            wait_until(lambda: len([w for w in query(cfg)["workers"] if w["pid"]]) == 4, timeout=20,
                       message="pool did not grow to 4 live children")
            st = query(cfg)
            assert st["pid"] == d.pid and st["config"]["last_reload_error"] is None

            # four slow jobs keep every slot busy while the pool is shrunk to one
            ids = [f"hup-{i}" for i in range(4)]
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: len(vfd.worker_pids(cfg)) == 4, timeout=20, message="4 busy slots")
            edit_config(cfg, download={"workers": 1})
            d.signal(signal.SIGHUP)
            st = wait_until(lambda: (s := query(cfg))["config"]["generation"] == 3 and s, timeout=10)
            busy = [w for w in st["workers"] if w["state"] == "busy"]
            assert len(busy) >= 2, f"busy slots were not kept until idle: {st['workers']}"
            assert sum(1 for w in st["workers"] if w.get("retiring")) == 3, st["workers"]
            wait_until(lambda: len(query(cfg)["workers"]) == 1, timeout=30, message="pool did not shrink to 1")
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == 4, timeout=30)
            assert all(r["attempts"] == 1 for r in vfd.rows(tmp_path / "queue.db")), \
                "a job was interrupted by the shrink"
            assert query(cfg)["counters"]["stalled_killed"] == 0

            # a broken file: old config stays, the error is visible everywhere
            edit_config(cfg, download={"workers": "two"})
            d.signal(signal.SIGHUP)
            st = wait_until(lambda: (s := query(cfg))["config"]["last_reload_error"] and s, timeout=10)
            err = st["config"]["last_reload_error"]
            assert "download.workers" in err and "two" in err, err
            assert st["config"]["generation"] == 3 and st["pid"] == d.pid and d.proc.poll() is None
            assert len(st["workers"]) == 1 and st["state"] == "running"
            human = vfd.ctl(cfg, "status")
            assert human.returncode == 0, human.stderr
            assert "download.workers" in human.stdout and "reload" in human.stdout.lower(), human.stdout
            wait_until(lambda: "reload failed" in log_text(d) and "download.workers" in log_text(d), timeout=5)
            # it still downloads with the old config (ctl add cannot read the broken file: insert directly,
            # as the contract allows other programs to feed the queue)
            with contextlib.closing(sqlite3.connect(tmp_path / "queue.db", timeout=10)) as con, con:
                con.execute("INSERT INTO videos (video_id) VALUES ('hup-after')")
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == 5, timeout=30)
            assert d.stop() == 0


def test_ctl_reload_pause_resume(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            r = vfd.ctl(cfg, "reload")
            assert r.returncode == 0 and "generation 2" in r.stdout, (r.stdout, r.stderr)
            assert query(cfg)["config"]["generation"] == 2

            r = vfd.ctl(cfg, "pause")
            assert r.returncode == 0, r.stderr
            assert query(cfg)["state"] == "paused"
            ids = [f"pz-{i}" for i in range(5)]
            assert vfd.ctl(cfg, "add", *ids).returncode == 0  # add also nudges the daemon
            stays(lambda: vfd.counts(db) == {"queued": 5} and query(cfg)["state"] == "paused", 2.0,
                  message="a paused daemon claimed rows")
            assert [r for r in srv.requests() if r.video_id in ids] == []

            r = vfd.ctl(cfg, "resume")
            assert r.returncode == 0, r.stderr
            assert query(cfg)["state"] == "running"
            wait_until(lambda: vfd.counts(db) == {"done": 5}, timeout=30, message="rows not downloaded after resume")
            assert d.stop() == 0


# -- SIGTERM ----------------------------------------------------------------------------------------

def test_sigterm_mid_download_releases_rows_and_next_run_resumes(tmp_path: Path) -> None:
    size = 1 * MiB
    ids = ["term-a", "term-b"]
    with MediaServer(default_size=size, rate_bps=200 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "drain_timeout": "1s", "kill_grace": "1s"})
        db = tmp_path / "queue.db"
        videos = tmp_path / "videos"
        d = vfd.Daemon(cfg)
        try:
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: all((w.get("downloaded_bytes") or 0) >= 100 * KiB
                                   for w in query(cfg)["workers"] if w["state"] == "busy")
                       and len(vfd.worker_pids(cfg)) == 2, timeout=30, message="downloads not under way")
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            code = d.proc.wait(timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            shutdown(d)
        assert code == 0, log_text(d)
        assert elapsed < 1 + 1 + 3, f"stop took {elapsed:.1f}s (drain 1s + grace 1s)"
        rows = {r["video_id"]: r for r in vfd.rows(db)}
        assert all(r["status"] == "queued" for r in rows.values()), rows
        assert all(r["attempts"] == 0 for r in rows.values()), "the interrupted attempt was counted"
        parts = {p.name: p.stat().st_size for p in videos.glob(".videofetchd-tmp/*/*.part")}  # a job's own dir
        assert len(parts) == 2 and all(0 < n < size for n in parts.values()), parts
        assert list(videos.glob("*.mp4*")) == []  # nothing under a final name yet

        t_restart = time.monotonic()
        with running(cfg) as d2:
            wait_until(lambda: vfd.counts(db) == {"done": 2}, timeout=60, message="resumed downloads")
            assert d2.stop() == 0
        for vid in ids:
            recs = records(srv, vid, since=t_restart)
            assert any((r.range_start or 0) > 0 for r in recs), f"{vid}: no Range request on resume: {recs}"
            sent = sum(r.bytes_sent for r in recs)
            assert sent < size, f"{vid}: second run fetched {sent} bytes of {size}"
        for r in vfd.rows(db):
            data = Path(r["file_path"]).read_bytes()
            assert data == srv.content(r["video_id"]), f"{r['video_id']}: resumed file differs from the source"
        assert list(videos.rglob("*.part")) == []


def test_sigterm_drain_lets_running_jobs_finish_and_claims_nothing_new(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    with MediaServer(default_size=400 * KiB, rate_bps=200 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "drain_timeout": "30s", "kill_grace": "1s"})
        db = tmp_path / "queue.db"
        d = vfd.Daemon(cfg, env={"NOTIFY_SOCKET": listener.path})
        try:
            assert vfd.ctl(cfg, "add", "drain-1", "drain-2", "drain-later").returncode == 0
            wait_until(lambda: len(vfd.worker_pids(cfg)) == 2, timeout=30, message="two jobs running")
            running_ids = set(vfd.worker_pids(cfg))
            d.signal(signal.SIGTERM)
            code = d.proc.wait(timeout=30)
        finally:
            shutdown(d)
            listener.close()
    assert code == 0, log_text(d)
    rows = by_id_rows(db)
    assert all(rows[i]["status"] == "done" and rows[i]["attempts"] == 1 for i in running_ids), rows
    (later,) = set(rows) - running_ids
    assert rows[later]["status"] == "queued" and rows[later]["attempts"] == 0, rows[later]
    assert records(srv, later) == [], "a job was started during the drain"
    fields = listener.fields()
    after = fields[fields.index("STOPPING=1"):]
    assert any(f.startswith("EXTEND_TIMEOUT_USEC=") for f in after), after


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_second_signal_cuts_a_long_drain_short(tmp_path: Path, second: int) -> None:
    with MediaServer(default_size=2 * MiB, rate_bps=100 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "drain_timeout": "60s", "kill_grace": "1s"})
        db = tmp_path / "queue.db"
        d = vfd.Daemon(cfg)
        try:
            assert vfd.ctl(cfg, "add", "long-a", "long-b").returncode == 0
            wait_until(lambda: len(vfd.worker_pids(cfg)) == 2 and all(
                (w.get("downloaded_bytes") or 0) > 0 for w in query(cfg)["workers"]), timeout=30)
            d.signal(signal.SIGTERM)
            wait_until(lambda: query(cfg)["state"] == "stopping", timeout=10)
            # still draining: the jobs keep going
            assert d.proc.poll() is None and vfd.counts(db).get("running") == 2
            t0 = time.monotonic()
            d.signal(second)
            code = d.proc.wait(timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            shutdown(d)
        assert code == 0, log_text(d)
        assert elapsed < 6, f"second signal: stop took {elapsed:.1f}s of a 60s drain"
        rows = vfd.rows(db)
        assert [r["status"] for r in rows] == ["queued", "queued"], rows
        assert all(r["attempts"] == 0 for r in rows), rows


def test_sigkill_of_the_daemon_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL: no clean-up runs, yet the children die with it and the next daemon on this host takes
    the rows back at once (no waiting for the 90 s lease) and resumes their .part files."""
    size = 1 * MiB
    ids = ["killed-a", "killed-b"]
    children: list[psutil.Process] = []
    with MediaServer(default_size=size, rate_bps=200 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2})
        db = tmp_path / "queue.db"
        d = vfd.Daemon(cfg)
        try:
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: len(vfd.worker_pids(cfg)) == 2 and all(
                (w.get("downloaded_bytes") or 0) >= 100 * KiB for w in query(cfg)["workers"]), timeout=30)
            children = psutil.Process(d.pid).children(recursive=True)
            workers = list(vfd.worker_pids(cfg).values())
            assert workers and all(pid in {c.pid for c in children} for pid in workers)
            d.signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
            _, left = psutil.wait_procs(children, timeout=10)
            assert left == [], f"children outlived the SIGKILLed daemon: {[c.pid for c in left]}"
        finally:
            shutdown(d)
            for child in children:  # processes this test started: never leave them behind
                with contextlib.suppress(psutil.Error):
                    child.kill()
        assert vfd.counts(db) == {"running": 2}
        r = vfd.ctl(cfg, "status")  # a stale socket file, nobody listening
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr)

        t_restart = time.monotonic()
        with running(cfg) as d2:
            wait_until(lambda: vfd.counts(db) == {"done": 2}, timeout=40, message="rows of the killed daemon")
            assert time.monotonic() - t_restart < 30, "rows waited for their lease to expire"
            assert d2.stop() == 0
        for vid in ids:
            recs = records(srv, vid, since=t_restart)
            assert any((r.range_start or 0) > 0 for r in recs), f"{vid}: not resumed: {recs}"
        for r in vfd.rows(db):
            assert Path(r["file_path"]).read_bytes() == srv.content(r["video_id"])


def test_sighup_during_drain_is_not_a_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    listener = vfd.NotifyListener(tmp_path / "notify.sock")
    with MediaServer(default_size=2 * MiB, rate_bps=100 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "drain_timeout": "60s", "kill_grace": "1s"})
        d = vfd.Daemon(cfg, env={"NOTIFY_SOCKET": listener.path})
        try:
            assert vfd.ctl(cfg, "add", "drain-a", "drain-b").returncode == 0
            wait_until(lambda: len(vfd.worker_pids(cfg)) == 2, timeout=30)
            d.signal(signal.SIGTERM)
            wait_until(lambda: query(cfg)["state"] == "stopping" and "STOPPING=1" in listener.fields(), timeout=10)
            edit_config(cfg, download={"workers": 4})
            d.signal(signal.SIGHUP)

            def still_draining() -> bool:
                fields = listener.fields()
                after = fields[fields.index("STOPPING=1"):]
                st = query(cfg)
                return ("READY=1" not in after and "RELOADING=1" not in after and len(st["workers"]) == 2
                        and st["state"] == "stopping" and st["config"]["generation"] == 1)

            stays(still_draining, 1.5, message="SIGHUP during the drain reloaded the daemon")
            d.signal(signal.SIGINT)
            assert d.proc.wait(timeout=30) == 0
        finally:
            shutdown(d)
            listener.close()
    assert vfd.counts(tmp_path / "queue.db") == {"queued": 2}


# -- the control socket -----------------------------------------------------------------------------

@pytest.mark.parametrize("payload, reason", [
    (b'["status"]', "request must be a JSON object, got an array"),
    (b'"status"', "request must be a JSON object, got a string"),
    (b'{"cmd": ["status"]}', '"cmd" must be a string naming a command, got an array'),
    (b'{"cmd": {"cmd": "status"}}', '"cmd" must be a string naming a command, got an object'),
    (b'{"cmd": 1}', '"cmd" must be a string naming a command, got a number'),
    (b'{"cmd": "status", "x": ' + b"[" * 20 + b"]" * 20 + b"}", "nested more than 8 levels deep"),
    (b"[" * 60000, "nested more than 8 levels deep"),  # deeper than the JSON parser goes
])
def test_valid_json_of_the_wrong_shape_gets_an_error_and_the_daemon_keeps_serving(
        shared_daemon: tuple[Path, Any], payload: bytes, reason: str) -> None:
    cfg, d = shared_daemon
    line, closed = raw_exchange(sock_path(cfg), payload + b"\n", close_wait=5)
    assert reason in json.loads(line)["error"] and closed, (line, closed)
    assert query(cfg)["pid"] == d.pid  # still serving
    assert "Traceback" not in d.log() and "exception" not in d.log().lower()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    tmp = tmp_path_factory.mktemp("shapes")
    cfg = vfd.write_config(tmp, url_template="http://127.0.0.1:9/v/{id}.mp4")
    with running(cfg) as d:
        yield cfg, d


def test_control_socket_robustness(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        path = sock_path(cfg)
        with running(cfg) as d:
            line, closed = raw_exchange(path, b"\x00\xffnot json at all\n", close_wait=5)
            assert "error" in json.loads(line) and closed, (line, closed)

            line, closed = raw_exchange(path, b'{"cmd": "rm -rf"}\n', close_wait=5)
            assert "unknown command" in json.loads(line)["error"] and closed

            # a 1 MB line: error reply; the sender may see EPIPE once the server hangs up
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(path)

                def flood() -> None:
                    with contextlib.suppress(OSError):
                        s.sendall(b"x" * (1024 * 1024) + b"\n")

                sender = threading.Thread(target=flood, daemon=True)
                sender.start()
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                sender.join(10)
            assert "error" in json.loads(data.partition(b"\n")[0]), data[:200]

            # half a line, then hang up
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                s.sendall(b'{"cmd": "sta')
            # a connection that sends nothing and stays open must not block others
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.connect(path)
            try:
                # several requests on one connection: each answered in order
                line, closed = raw_exchange(path, b'{"cmd": "ping"}\n', close_wait=0.5)
                assert json.loads(line).get("ok") is True and not closed

                results: list[Any] = [None] * 50
                ready = threading.Barrier(50)

                def client(i: int) -> None:
                    ready.wait(10)
                    try:
                        results[i] = json.loads(raw_exchange(path, b'{"cmd": "status"}\n')[0])
                    except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                        results[i] = exc

                threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                bad = [r for r in results if not (isinstance(r, dict) and r.get("pid") == d.pid)]
                assert bad == [], f"{len(bad)} of 50 concurrent clients not answered: {bad[:3]}"
            finally:
                idle.close()

            r = vfd.ctl(cfg, "status")
            assert r.returncode == 0 and f"pid {d.pid}" in r.stdout, (r.stdout, r.stderr)
            assert d.proc.poll() is None and query(cfg)["pid"] == d.pid
            assert d.stop() == 0


def _drop_to(user: str) -> dict[str, Any]:
    """subprocess arguments that run a child fully as ``user``: uid, primary gid and no root groups."""
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _python_for(user: str) -> tuple[str, dict[str, str]] | None:
    """An interpreter ``user`` can run that imports videofetchd's control client, with its env."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": "/"}
    for exe in (vfd.PY, shutil.which("python3", path="/usr/bin:/bin")):
        if not exe:
            continue
        try:
            r = subprocess.run([exe, "-c", "import videofetchd.ctl"], env=env, cwd="/", capture_output=True,
                               timeout=30, **_drop_to(user))
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return exe, env
    return None


def test_privileged_commands_refused_for_other_users(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no Python interpreter that user nobody can run with videofetchd importable")
    exe, env = python
    run_dir = Path(tempfile.mkdtemp(prefix="vfd-perm-", dir="/tmp"))
    try:
        run_dir.chmod(0o755)
        with MediaServer(default_size=8 * KiB) as srv:
            cfg = vfd.write_config(run_dir, url_template=srv.url_template,
                                   control={"socket": str(run_dir / "control.sock"), "mode": "0666"})
            cfg.chmod(0o644)
            with running(cfg) as d:
                def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
                    return subprocess.run([exe, "-m", "videofetchd", *args, "--config", str(cfg)], env=env, cwd="/",
                                          capture_output=True, text=True, timeout=60, **_drop_to("nobody"))

                st = as_nobody("status", "--json")
                assert st.returncode == 0, st.stderr
                assert json.loads(st.stdout)["pid"] == d.pid
                for cmd in ("pause", "reload", "resume"):
                    r = as_nobody(cmd)
                    assert r.returncode != 0, f"{cmd} as nobody was accepted: {r.stdout}"
                    assert "permission denied" in r.stderr.lower(), r.stderr
                st = query(cfg)
                assert st["state"] == "running" and st["config"]["generation"] == 1
                r = vfd.ctl(cfg, "pause")  # root may
                assert r.returncode == 0 and query(cfg)["state"] == "paused", r.stderr
                assert d.stop() == 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


# -- exit codes -------------------------------------------------------------------------------------

def test_status_exit_codes(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        r = vfd.ctl(cfg, "status")
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "not running" in lines[0], r.stderr
        with running(cfg) as d:
            r = vfd.ctl(cfg, "status")
            assert r.returncode == 0 and "running" in r.stdout, r.stderr
            assert d.stop() == 0
        r = vfd.ctl(cfg, "status")  # after a clean stop: the socket is gone, not stale
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([vfd.PY, "-m", "videofetchd", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)


def test_bad_config_exits_78(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4", download={"workers": "two"})
    r = _run_daemon(cfg)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "download.workers" in r.stderr and str(cfg) in r.stderr, r.stderr
    assert not (tmp_path / "control.sock").exists()


def test_unreachable_database_exits_75(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4",
                           db_url="postgresql://postgres@127.0.0.1:1/x")
    t0 = time.monotonic()
    r = _run_daemon(cfg)
    assert r.returncode == 75, (r.returncode, r.stderr)
    assert time.monotonic() - t0 < 30
    assert "127.0.0.1" in r.stderr or "database" in r.stderr.lower(), r.stderr
