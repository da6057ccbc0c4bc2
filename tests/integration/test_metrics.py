"""The Prometheus endpoint, scraped by a real Prometheus server while the daemon works.

Everything is real: the daemon is a ``python -m videofetchd`` process downloading from the local
media server through yt-dlp, Prometheus (Debian's binary, tests/promserver.py) scrapes it every
second on 127.0.0.1, and the test reads what Prometheus stored through its HTTP API. ``promtool``
checks the exposition. The database outage is a real network hang between the daemon and
PostgreSQL (tests/netproxy.py).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from netproxy import FreezableProxy
from pg import pg_url  # noqa: F401  (fixture)
from promserver import Prometheus, free_port, need, scrape
from videofetchd import __version__

KiB = 1024
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "videofetchd.rules.yml"
DASHBOARD = ROOT / "etc" / "grafana" / "videofetchd.json"
OK_IDS = ["ok-1", "ok-2", "ok-3", "ok-4"]
SIZE = 96 * KiB


def exported_names(text: str) -> set[str]:
    """Metric family names of an exposition (``_bucket``/``_count``/``_sum`` folded into the histogram)."""
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.M)} | \
        {m.group(1) for m in re.finditer(r"^(\w+?)(?:_bucket|_count|_sum|_total)?[{ ]", text, re.M)}


def referenced_names(text: str) -> set[str]:
    names = set(re.findall(r"\bvideofetchd_\w+", text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_prometheus_scrapes_a_known_mix(tmp_path: Path) -> None:
    promtool = need("promtool")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "Already here [scanned-1].mp4").write_bytes(b"v" * 1000)
    port = free_port()
    started = time.time()
    with MediaServer(default_size=SIZE, rate_bps=256 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, metrics={"listen": f"127.0.0.1:{port}"},
                               download={"workers": 2, "stall_timeout": "4s", "retry_backoff": "0.2s"},
                               scan={"directories": [str(lib)]})
        prom = Prometheus(tmp_path, [f"127.0.0.1:{port}"])
        try:
            with vfd.running(cfg) as daemon:
                assert vfd.ctl(cfg, "add", *OK_IDS, "e404-gone", "stall-once").returncode == 0
                db = tmp_path / "queue.db"
                wait_until(lambda: vfd.counts(db) == {"done": 6, "failed": 1}, timeout=90,
                           message="the mix did not settle")
                expected = {
                    'videofetchd_jobs{status="done"}': 6.0,  # 4 + the stalled one + the scanned file
                    'videofetchd_jobs{status="failed"}': 1.0,
                    'videofetchd_jobs{status="queued"}': 0.0,
                    'videofetchd_jobs{status="running"}': 0.0,
                    'videofetchd_jobs_finished_total{outcome="done", error_kind=""}': 5.0,
                    'videofetchd_jobs_finished_total{outcome="failed", error_kind="permanent"}': 1.0,
                    'videofetchd_jobs_finished_total{outcome="retried", error_kind="stalled"}': 1.0,
                    'sum(videofetchd_jobs_finished_total)': 7.0,
                    "videofetchd_stall_kills_total": 1.0,
                    "videofetchd_lost_leases_total": 0.0,
                    "videofetchd_job_duration_seconds_count": 7.0,  # 6 downloads, one of them twice
                    "videofetchd_job_queue_wait_seconds_count": 7.0,
                    'videofetchd_workers{state="busy"}': 0.0,
                    'videofetchd_workers{state="idle"}': 2.0,
                    'videofetchd_state{state="running"}': 1.0,
                    "videofetchd_database_up": 1.0,
                    "videofetchd_oldest_queued_age_seconds": 0.0,
                    f'videofetchd_build_info{{version="{__version__}"}}': 1.0,
                    'up{job="videofetchd"}': 1.0,
                }

                def seen() -> dict[str, float | None]:
                    return {expr: prom.value(expr) for expr in expected}

                wait_until(lambda: seen() == expected, timeout=30, interval=0.5,
                           message=f"Prometheus does not hold the expected values: {seen()}")
                # it scraped while the work ran: busy workers, a stall clock that went up, bytes
                assert prom.value('max(max_over_time(videofetchd_workers{state="busy"}[10m]))') >= 1
                assert (prom.value("max(max_over_time(videofetchd_worker_last_progress_age_seconds[10m]))") or 0) >= 1.0
                assert (prom.value("videofetchd_downloaded_bytes_total") or 0) >= 5 * SIZE
                assert (prom.value("videofetchd_job_duration_seconds_sum") or 0) > 4.0  # the stall alone: 4 s
                scanned = prom.value("videofetchd_scan_last_success_timestamp_seconds")
                assert scanned is not None and started <= scanned <= time.time()
                assert prom.value("videofetchd_config_last_reload_successful") == 1.0

                text = scrape(port)
                check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
                assert check.returncode == 0, check.stdout + check.stderr

                # the rules and the dashboard name only metrics that exist (identity metrics come
                # only with download.identities: tests/unit/test_metrics_exposition.py)
                names = exported_names(text)
                referenced = referenced_names(RULES.read_text()) | referenced_names(DASHBOARD.read_text())
                assert referenced - names <= {"videofetchd_identity_running", "videofetchd_identity_budget_tokens",
                                              "videofetchd_identity_paused_seconds", "videofetchd_identity_paused",
                                              "videofetchd_identity_jobs_total"}, referenced - names
                # and every dashboard query parses and runs
                dashboard = json.loads(DASHBOARD.read_text())
                for panel in dashboard["panels"]:
                    for target in panel.get("targets", []):
                        prom.query(target["expr"].replace("$instance", ".*"))

                # counters survive a reload
                before = {line for line in text.splitlines() if line.startswith("videofetchd_jobs_finished_total")}
                daemon.signal(signal.SIGHUP)
                wait_until(lambda: vfd.status(cfg)["config"]["generation"] == 2, timeout=20)
                after = {line for line in scrape(port).splitlines()
                         if line.startswith("videofetchd_jobs_finished_total")}
                assert after == before and len(before) > 3

                # a host condition: the download directory becomes a file, then comes back
                condition = 'videofetchd_health_condition{name="download_directory"}'
                assert prom.value(condition) == 0.0
                videos = tmp_path / "videos"
                shutil.rmtree(videos)
                videos.write_text("not a directory any more\n")
                wait_until(lambda: prom.value(condition) == 1.0, timeout=60, interval=0.5,
                           message="Prometheus never saw the download_directory condition")
                videos.unlink()
                videos.mkdir()
                wait_until(lambda: prom.value(condition) == 0.0, timeout=60, interval=0.5,
                           message="the download_directory condition did not clear")
                assert prom.value('max_over_time(videofetchd_health_condition{name="disk_space"}[10m])') == 0.0
                assert daemon.stop() == 0
            with pytest.raises(urllib.error.URLError):  # the endpoint goes with the daemon
                scrape(port, timeout=5)
        finally:
            prom.stop()


@pytest.mark.postgres
def test_the_endpoint_answers_while_the_database_hangs(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """The network to PostgreSQL hangs (no answer, no error): scrapes still answer at once, from the
    supervisor's own state, and say the database is down; afterwards everything is recorded."""
    host, _, rest = pg_url.split("@", 1)[1].partition(":")
    pg_port, _, dbname = rest.partition("/")
    port = free_port()
    with FreezableProxy((host, int(pg_port))) as proxy, \
            MediaServer(default_size=256 * KiB, rate_bps=24 * KiB) as srv:
        url = f"{pg_url.split('@', 1)[0]}@127.0.0.1:{proxy.port}/{dbname}"
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, db_url=url,
                               metrics={"listen": f"127.0.0.1:{port}"}, download={"workers": 1})
        with vfd.running(cfg) as daemon:
            assert vfd.ctl(cfg, "add", "slow-1").returncode == 0
            wait_until(lambda: 'videofetchd_workers{state="busy"} 1.0' in scrape(port), timeout=30,
                       message="the download never started")
            proxy.freeze()
            try:
                # scrapes while the database thread is stuck in a call that will not come back
                for _ in range(5):
                    text = scrape(port, timeout=5)
                    assert 'videofetchd_jobs{status="running"} 1.0' in text  # the cached counts
                    time.sleep(0.2)
                wait_until(lambda: "videofetchd_database_up 0.0" in scrape(port, timeout=5), timeout=60,
                           message="the database hang was never noticed")
                text = scrape(port, timeout=5)
                assert 'videofetchd_workers{state="busy"} 1.0' in text or "videofetchd_pending_results 1.0" in text
            finally:
                proxy.thaw()
            wait_until(lambda: "videofetchd_database_up 1.0" in scrape(port), timeout=90,
                       message="the database did not come back")
            wait_until(lambda: 'videofetchd_jobs{status="done"} 1.0' in scrape(port), timeout=90,
                       message="the download was not recorded after the hang")
            assert 'videofetchd_jobs_finished_total{error_kind="",outcome="done"} 1.0' in scrape(port)
            assert daemon.stop() == 0


def test_one_shot_fetch_serves_metrics_only_when_asked(tmp_path: Path) -> None:
    port = free_port()
    with MediaServer(default_size=192 * KiB, rate_bps=48 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, metrics={"listen": f"127.0.0.1:{port}"})
        assert vfd.ctl(cfg, "add", "slow-a", "slow-b").returncode == 0
        proc = subprocess.Popen([vfd.PY, "-m", "videofetchd", "fetch", "--metrics", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            text = wait_until(lambda: _try_scrape(port) if proc.poll() is None else "exited", timeout=60,
                              message="fetch --metrics never answered")
            assert text != "exited", proc.communicate()
            assert "videofetchd_workers" in text and "videofetchd_jobs_finished_total" in text
            assert "videofetchd_config_last_reload_successful" not in text  # daemon-only families
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, err
        assert "fetched 2" in out
    # without --metrics, the configured address is left alone
    with MediaServer(default_size=64 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, metrics={"listen": f"127.0.0.1:{port}"})
        assert vfd.ctl(cfg, "add", "plain-1").returncode == 0
        with socket.socket() as taken:  # the port is busy: fetch must not even try it
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the scrapes' TIME_WAIT
            taken.bind(("127.0.0.1", port))
            taken.listen()
            r = vfd.ctl(cfg, "fetch", timeout=60)
        assert r.returncode == 0 and "fetched 1" in r.stdout, r.stderr


def _try_scrape(port: int) -> str | None:
    try:
        text = scrape(port, timeout=5)
    except OSError:
        return None
    return text if 'videofetchd_workers{state="busy"}' in text and 'busy"} 0.0' not in text else None


def test_a_taken_metrics_port_exits_75_for_systemd_to_try_again(tmp_path: Path) -> None:
    """EX_TEMPFAIL, not EX_CONFIG: the port is often held by the instance still stopping, and
    RestartPreventExitStatus=78 would keep the service down for good."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/{id}",
                               metrics={"listen": f"127.0.0.1:{port}"})
        r = subprocess.run([vfd.PY, "-m", "videofetchd", "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 75, r.stderr
    assert r.stderr.splitlines()[-1] == (f"videofetchd: metrics.listen: cannot listen on 127.0.0.1:{port}: "
                                         "Address already in use"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "control.sock").exists()  # nothing left behind


def test_a_reload_to_a_taken_metrics_port_keeps_the_old_listener_and_says_why(tmp_path: Path) -> None:
    port = free_port()
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/{id}", metrics={"listen": f"127.0.0.1:{port}"})
    with socket.socket() as taken, vfd.running(cfg) as d:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert "videofetchd_build_info" in scrape(port)
        cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{port}", f"127.0.0.1:{taken.getsockname()[1]}"))
        r = vfd.ctl(cfg, "reload")
        assert r.returncode == 0, r.stderr
        st = vfd.status(cfg)
        assert st["config"]["generation"] == 2 and st["config"]["restart_required"] == ["metrics.listen"], st
        assert "videofetchd_build_info" in scrape(port)  # the old listener serves on
        assert "metrics.listen changed; this needs a restart, the old values stay" in d.log()
        assert d.stop() == 0


def test_queue_counts_and_counters_come_from_the_same_moment(tmp_path: Path) -> None:
    """Every status reply while jobs finish: the done and failed counts agree with the counters (they
    used to lag by up to 2 s: ``done 0`` next to ``completed 3``)."""
    ids = [f"quick-{i}" for i in range(12)] + ["e404-a", "e404-b"]
    with MediaServer(default_size=64 * KiB, rate_bps=128 * KiB) as srv:  # half a second per job
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2})
        with vfd.running(cfg):
            wait_until(lambda: vfd.status(cfg)["queue"], timeout=20)  # the first count is in
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            replies = []

            def settled() -> bool:
                st = vfd.status(cfg)
                replies.append(st)
                return st["counters"]["completed"] + st["counters"]["failed"] == len(ids)

            wait_until(settled, timeout=60, interval=0.02, message="the jobs did not finish")
    moving = [r for r in replies if 0 < r["counters"]["completed"] + r["counters"]["failed"] < len(ids)]
    assert len(moving) >= 3, "too few replies while jobs finished to tell anything"
    for r in replies:
        q, c = r["queue"], r["counters"]
        assert (q["done"], q["failed"]) == (c["completed"], c["failed"]), (q, c)
