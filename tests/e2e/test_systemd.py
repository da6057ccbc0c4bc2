"""videofetchd under a real systemd: the repo's unit as installed by `make install`.

The tests share one container and run in file order: start -> reload -> stop -> watchdog.
"""
from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from typing import Any, Iterator

import pytest

import nspawn
from e2e_support import CONFIG, SRC_IN_CONTAINER, UNIT, read_config, update_config
from mediaserver import MediaServer

UNIT_PATH = "/etc/systemd/system/" + UNIT
DB = "/var/lib/videofetchd/videofetchd.db"
WORKERS = 2
DOCDIR = "/usr/local/share/doc/videofetchd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: the container shares the host's network: a free port rather than the shipped 9464
METRICS_PORT = _free_port()
#: the documented way to reach a media host in a range the unit denies (README, "Internal
#: addresses"): a drop-in with IPAddressAllow= plus download.allow_addresses in the config
ALLOW_DROPIN = f"/etc/systemd/system/{UNIT}.d/allow-media-host.conf"


def status(c: nspawn.Container) -> dict[str, Any] | None:
    """`videofetchctl status --json` inside the container; None when the daemon does not answer."""
    r = c.C("videofetchctl", "status", "--json", check=False, timeout=30)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def db_count(c: nspawn.Container, where: str) -> int:
    script = ("import sqlite3, sys; con = sqlite3.connect(sys.argv[1]); "
              "print(con.execute(sys.argv[2]).fetchone()[0])")
    out = c.C("python3", "-c", script, DB, f"SELECT count(*) FROM videos WHERE {where}").stdout
    return int(out.strip())


def show(c: nspawn.Container) -> dict[str, str]:
    return c.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText", "Result")


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    # 4 MB at 200 kB/s: a download takes ~20 s, long enough to be caught running by `stop`.
    srv = MediaServer(rate_bps=200_000, default_size=4_000_000)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def svc(installed: nspawn.Container, media: MediaServer) -> nspawn.Container:
    """The installed service, configured for the test media server (not started). The server is
    on the host's 127.0.0.1, which both the unit and the workers refuse by default: a drop-in and
    the config name it, as a user does for a NAS on the LAN."""
    installed.write(ALLOW_DROPIN, "[Service]\nIPAddressAllow=127.0.0.1\n")
    installed.C("systemctl", "daemon-reload")
    update_config(installed,
                  database={"poll_interval": "1s"},
                  download={"url_template": media.url_template, "workers": WORKERS,
                            "drain_timeout": "2s", "kill_grace": "2s", "retry_backoff": "1s",
                            "allow_addresses": ["127.0.0.1/32"], "max_attempts": 1},
                  metrics={"listen": f"127.0.0.1:{METRICS_PORT}"})
    r = installed.C("videofetchd", "--check-config", "--config", CONFIG, check=False)
    assert r.returncode == 0, f"--check-config rejected the test config:\n{r.stdout}{r.stderr}"
    return installed


# ----------------------------------------------------------------------------- static checks

def test_installed_layout(installed: nspawn.Container) -> None:
    c = installed
    unit = c.path(UNIT_PATH).read_text()
    assert "ExecStart=/usr/local/bin/videofetchd --config /etc/videofetchd/videofetchd.yaml" in unit
    assert "@BINDIR@" not in unit and "@DOCDIR@" not in unit
    assert c.C("getent", "passwd", "videofetchd").stdout.split(":")[5] == "/var/lib/videofetchd"
    assert c.C("stat", "-c", "%a %U %G", CONFIG).stdout.split() == ["640", "root", "videofetchd"]
    assert c.C("videofetchd", "--version").returncode == 0
    assert c.C("videofetchctl", "--version").returncode == 0
    # the shipped config turns the metrics endpoint on; rules and dashboard are examples only
    assert read_config(c)["metrics"]["listen"] == "127.0.0.1:9464"
    for doc in ("prometheus/videofetchd.rules.yml", "grafana/videofetchd.json"):
        assert c.C("test", "-f", f"{DOCDIR}/{doc}", check=False).returncode == 0, doc
    assert c.C("test", "-e", "/etc/prometheus/videofetchd.rules.yml", check=False).returncode != 0


def test_unit_verify_is_clean(installed: nspawn.Container) -> None:
    r = installed.C("systemd-analyze", "verify", UNIT_PATH, check=False)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", (
        f"systemd-analyze verify (rc={r.returncode}):\n{r.stdout}{r.stderr}")


def test_security_exposure_at_most_1_5(installed: nspawn.Container) -> None:
    r = installed.C("systemd-analyze", "security", UNIT, "--no-pager", check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout)
    assert m, f"no exposure level in the output:\n{r.stdout}{r.stderr}"
    score = float(m.group(1))
    nspawn.log(f"systemd-analyze security {UNIT}: {score}")
    assert score <= 1.5, r.stdout


# ----------------------------------------------------------------------------- the running service

def test_start_returns_when_ready(svc: nspawn.Container) -> None:
    c = svc
    t0 = time.monotonic()
    r = c.C("systemctl", "start", UNIT, check=False, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"systemctl start failed:\n{r.stderr}"
    nspawn.log(f"systemctl start took {took:.2f}s")
    # Type=notify: `start` returned only after READY=1, so the unit is active right away.
    assert c.C("systemctl", "is-active", UNIT, check=False).stdout.strip() == "active"
    st = status(c)
    assert st is not None, "videofetchctl status --json failed right after start"
    assert st["state"] == "running", st
    assert len(st["workers"]) == WORKERS, st
    assert c.C("stat", "-c", "%U", "/run/videofetchd/control.sock").stdout.strip() == "videofetchd"
    # The daemon runs as the static user from sysusers, not as root.
    pid = show(c)["MainPID"]
    assert c.C("ps", "-o", "user=", "-p", pid).stdout.strip() == "videofetchd"


def test_metrics_endpoint_under_the_sandbox(svc: nspawn.Container) -> None:
    """The hardened unit may listen on TCP and read its own /proc entry (process_* metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=20) as reply:
        text = reply.read().decode()
    slots = sum(float(v) for v in re.findall(r'^videofetchd_workers\{state="\w+"\} (\S+)$', text, re.M))
    assert slots == WORKERS, text
    assert 'videofetchd_state{state="running"} 1.0' in text, text
    assert "process_resident_memory_bytes" in text and "videofetchd_build_info{" in text, text


def _row(c: nspawn.Container, video_id: str) -> dict[str, Any] | None:
    script = ("import json, sqlite3, sys; con = sqlite3.connect(sys.argv[1]); con.row_factory = sqlite3.Row; "
              "r = con.execute('SELECT * FROM videos WHERE video_id = ?', (sys.argv[2],)).fetchone(); "
              "print(json.dumps(dict(r) if r else None))")
    return json.loads(c.C("python3", "-c", script, DB, video_id).stdout)


def _settled(c: nspawn.Container, video_id: str) -> dict[str, Any] | None:
    row = _row(c, video_id)
    return row if row and row["status"] in ("done", "failed") else None


def test_a_download_from_an_allow_listed_address_works_under_the_unit(svc: nspawn.Container,
                                                                      media: MediaServer) -> None:
    c = svc
    media.configure("e2eallowed", size=300_000, rate_bps=50_000_000)
    assert c.C("videofetchctl", "add", "e2eallowed", check=False).returncode == 0
    row = nspawn.wait_for(lambda: _settled(c, "e2eallowed"), 60, "the allow-listed download to finish")
    assert row["status"] == "done", row
    assert c.C("stat", "-c", "%s %a", row["file_path"]).stdout.split() == ["300000", "640"]


def test_the_unit_itself_refuses_internal_addresses(svc: nspawn.Container, media: MediaServer) -> None:
    """Without the drop-in, the unit's IPAddressDeny= stops the same download even though the
    config allows it: the backstop for what runs outside the workers' own check (ffmpeg)."""
    c = svc
    probe = c.C("systemd-run", "--wait", "--pipe", "-q", "-p", "IPAddressDeny=127.0.0.0/8", "/usr/bin/python3", "-c",
                f"import socket; socket.create_connection(('127.0.0.1', {media.port}), 5)", check=False, timeout=60)
    if probe.returncode == 0:  # systemd gives no sign of it: only trying tells
        pytest.skip("IPAddressDeny= is not enforced in this container (no BPF cgroup firewall): a transient "
                    "unit denying 127.0.0.0/8 still connected to 127.0.0.1")
    c.C("rm", "-f", ALLOW_DROPIN)
    try:
        c.C("systemctl", "daemon-reload")
        assert c.C("systemctl", "restart", UNIT, check=False, timeout=120).returncode == 0
        media.configure("e2edenied", size=300_000, rate_bps=50_000_000)
        before = len([r for r in media.requests() if r.video_id == "e2edenied"])
        assert c.C("videofetchctl", "add", "e2edenied", check=False).returncode == 0
        row = nspawn.wait_for(lambda: _settled(c, "e2edenied"), 90, "the denied download to fail")
        assert row["status"] == "failed", row
        assert len([r for r in media.requests() if r.video_id == "e2edenied"]) == before
        nspawn.log(f"without IPAddressAllow= the download failed: {row['last_error']}")
    finally:
        c.write(ALLOW_DROPIN, "[Service]\nIPAddressAllow=127.0.0.1\n")
        c.C("systemctl", "daemon-reload")
        assert c.C("systemctl", "restart", UNIT, check=False, timeout=120).returncode == 0


def test_reload_changes_worker_count_without_restart(svc: nspawn.Container) -> None:
    c = svc
    before = show(c)
    gen_before = (status(c) or {}).get("config", {}).get("generation")
    new_workers = WORKERS + 1
    update_config(c, download={"workers": new_workers})
    t0 = time.monotonic()
    r = c.C("systemctl", "reload", UNIT, check=False, timeout=60)
    assert r.returncode == 0, f"systemctl reload failed:\n{r.stderr}"
    nspawn.log(f"systemctl reload took {time.monotonic() - t0:.2f}s")

    def reloaded() -> dict[str, Any] | None:
        st = status(c)
        return st if st and st["state"] == "running" and len(st["workers"]) == new_workers else None
    st = nspawn.wait_for(reloaded, 15, f"status to show {new_workers} workers")
    if gen_before is not None:
        assert st["config"]["generation"] > gen_before, st["config"]
    assert st["config"].get("last_reload_error") in (None, ""), st["config"]
    after = show(c)
    assert after["MainPID"] == before["MainPID"], "reload restarted the main process"
    assert after["NRestarts"] == before["NRestarts"]
    assert after["ActiveState"] == "active"


def test_reload_with_scan_directories_scans_them_in_the_sandbox(svc: nspawn.Container) -> None:
    """The daemon (threads) walks in a spawned interpreter: that must work under the unit's
    sandbox, as the videofetchd user, on a read-only library outside its state directory."""
    c = svc
    c.C("sh", "-c", "mkdir -p '/srv/e2e lib/chan' && for i in 1 2 3; do "
        "head -c 1000 /dev/zero > \"/srv/e2e lib/chan/clip $i [e2escan0$i].mp4\"; done")
    update_config(c, scan={"directories": ["/srv/e2e lib"]})
    r = c.C("systemctl", "reload", UNIT, check=False, timeout=60)
    assert r.returncode == 0, f"systemctl reload failed:\n{r.stderr}"

    def scanned() -> dict[str, Any] | None:
        scan = (status(c) or {}).get("scan") or {}
        return scan if scan.get("last_result") and not scan.get("running") else None
    scan = nspawn.wait_for(scanned, 30, "the reload's scan to finish")
    assert scan["last_ok"] and scan["last_result"].startswith("3 files, 3 videos"), scan
    assert db_count(c, "status='done' AND found_by='filename' AND video_id LIKE 'e2escan%'") == 3
    journal = c.C("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout
    assert "cannot start a walker process" not in journal  # no fallback to a thread


def test_stop_leaves_no_running_rows(svc: nspawn.Container, media: MediaServer) -> None:
    c = svc
    ids = [f"e2estop{i:02d}" for i in range(6)]
    r = c.C("videofetchctl", "add", *ids, check=False)
    assert r.returncode == 0, f"videofetchctl add failed:\n{r.stdout}{r.stderr}"
    nspawn.wait_for(lambda: db_count(c, "status='running'") >= 2, 30,
                    "two downloads to be running")
    nspawn.wait_for(lambda: any(w.get("downloaded_bytes") for w in (status(c) or {}).get("workers", [])),
                    20, "download progress in the status")
    t0 = time.monotonic()
    r = c.C("systemctl", "stop", UNIT, check=False, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, f"systemctl stop failed:\n{r.stderr}"
    nspawn.log(f"systemctl stop took {took:.2f}s")
    props = show(c)
    assert props["ActiveState"] == "inactive", props
    assert props["Result"] == "success", props       # exit 0, not killed at TimeoutStopSec
    assert db_count(c, "status='running'") == 0
    assert db_count(c, "status='queued'") >= 1       # interrupted jobs went back to the queue
    # Nothing of the service is left (KillMode=mixed cleans up the workers).
    assert c.C("pgrep", "-u", "videofetchd", check=False).stdout.strip() == ""
    assert c.C("test", "-e", "/run/videofetchd", check=False).returncode != 0


def test_journal_has_no_python_tracebacks(svc: nspawn.Container) -> None:
    """Start, reload, downloads and stop so far: the daemon logged no unhandled exception."""
    journal = svc.journal(UNIT, lines=5000)
    assert "Traceback (most recent call last)" not in journal, journal


def test_watchdog_restarts_frozen_main_process(svc: nspawn.Container) -> None:
    c = svc
    # A short watchdog keeps the test fast; the shipped unit has WatchdogSec=30s.
    dropin = f"/etc/systemd/system/{UNIT}.d/e2e-watchdog.conf"
    c.write(dropin, "[Service]\nWatchdogSec=5s\nRestartSec=1s\nTimeoutAbortSec=10s\n")
    try:
        c.C("systemctl", "daemon-reload")
        r = c.C("systemctl", "restart", UNIT, check=False, timeout=120)
        assert r.returncode == 0, f"systemctl restart failed:\n{r.stderr}"
        assert c.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "5s"   # the drop-in is in effect
        before = show(c)
        assert before["ActiveState"] == "active"
        c.C("kill", "-STOP", before["MainPID"])
        t0 = time.monotonic()

        def restarted() -> dict[str, str] | None:
            p = show(c)
            ok = (int(p["NRestarts"]) > int(before["NRestarts"]) and p["ActiveState"] == "active"
                  and p["MainPID"] not in ("0", before["MainPID"]))
            return p if ok else None
        after = nspawn.wait_for(restarted, 40, "the watchdog to restart the frozen daemon", 0.5)
        nspawn.log(f"watchdog restart observed after {time.monotonic() - t0:.1f}s "
                   f"(NRestarts {before['NRestarts']} -> {after['NRestarts']})")
        assert "Watchdog timeout" in c.journal(UNIT, lines=400)
        st = nspawn.wait_for(lambda: status(c), 20, "the restarted daemon to answer status")
        assert st["state"] == "running", st
    finally:
        c.C("rm", "-f", dropin)
        c.C("systemctl", "daemon-reload")


def test_doctor_and_a_second_daemon_as_the_service_user(svc: nspawn.Container) -> None:
    """`videofetchd --check` as the service's user finds the set-up good and the socket taken; a
    second daemon started by hand is refused and the service keeps its socket."""
    c = svc
    nspawn.wait_for(lambda: status(c), 30, "the service to answer status")
    pid = show(c)["MainPID"]
    r = c.C("runuser", "-u", "videofetchd", "--", "videofetchd", "--check", "--json", "--config", CONFIG,
            check=False, timeout=60)
    checks = {x["name"]: x for x in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1, r.stdout + r.stderr
    for name in ("config", "database", "download_directory", "free_space"):
        assert checks[name]["status"] == "ok", checks
    assert checks["control_socket"]["status"] == "error", checks
    assert f"videofetchd pid {pid} already answers" in checks["control_socket"]["detail"], checks
    r = c.C("runuser", "-u", "videofetchd", "--", "videofetchd", "--config", CONFIG, check=False, timeout=60)
    assert r.returncode == 75 and "already" in r.stderr, (r.returncode, r.stderr)
    st = status(c)
    assert st is not None and str(st["pid"]) == pid
    assert "start-up checks: config ok, database ok" in c.journal(UNIT, lines=400)


def test_a_deleted_database_restarts_the_service_on_a_fresh_file(svc: nspawn.Container) -> None:
    c = svc
    before = nspawn.wait_for(lambda: status(c) and show(c), 30, "the service to answer status")
    c.sh(f"rm -f {DB} {DB}-wal {DB}-shm")

    def restarted() -> dict[str, str] | None:
        p = show(c)
        ok = (int(p["NRestarts"]) > int(before["NRestarts"]) and p["ActiveState"] == "active"
              and p["MainPID"] not in ("0", before["MainPID"]))
        return p if ok and status(c) else None
    nspawn.wait_for(restarted, 60, "systemd to restart the daemon whose database was deleted", 0.5)
    journal = c.journal(UNIT, lines=400)
    assert f"the database file {DB} was deleted" in journal, journal[-3000:]
    assert "status=75" in journal, journal[-3000:]
    assert c.path(DB).exists()  # a fresh one
    assert db_count(c, "video_id LIKE 'e2estop%'") == 0  # the rows of the deleted file are gone


def test_make_install_destdir_and_uninstall(installed: nspawn.Container) -> None:
    """A staged (DESTDIR) install is relocatable and never overwrites an existing config."""
    c = installed
    stage = "/var/tmp/vfd-stage"   # not /tmp: a tmpfs inside, invisible from the host
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}
    make = ["make", "-C", SRC_IN_CONTAINER, f"DESTDIR={stage}", "PREFIX=/usr", "PYTHON=/usr/bin/python3"]
    # An administrator's config already in place must survive the install.
    c.write(f"{stage}/etc/videofetchd/videofetchd.yaml", "# local config\n", 0o640)
    r = c.C(*make, "install", check=False, timeout=300, env=env)
    assert r.returncode == 0, f"make install DESTDIR failed:\n{r.stdout}{r.stderr}"
    assert c.path(f"{stage}/etc/videofetchd/videofetchd.yaml").read_text() == "# local config\n"
    assert c.path(f"{stage}/usr/lib/systemd/system/{UNIT}").exists()
    assert c.path(f"{stage}/usr/lib/sysusers.d/videofetchd.conf").exists()
    assert c.path(f"{stage}/usr/lib/tmpfiles.d/videofetchd.conf").exists()
    assert "ExecStart=/usr/bin/videofetchd " in c.path(f"{stage}/usr/lib/systemd/system/{UNIT}").read_text()
    # No text file in the venv names the staging directory (direct_url.json names the source).
    leaks = c.C("grep", "-rlIF", stage, f"{stage}/usr/lib/videofetchd", check=False).stdout.split()
    assert [p for p in leaks if not p.endswith("direct_url.json")] == []
    # "Unpack" the package and run it from its final place.
    c.sh(f"cp -a {stage}/usr/lib/videofetchd /usr/lib/videofetchd && "
         f"cp -a {stage}/usr/bin/videofetchd {stage}/usr/bin/videofetchctl /usr/bin/")
    assert c.C("/usr/bin/videofetchd", "--version").returncode == 0
    assert c.C("/usr/bin/videofetchctl", "--version").returncode == 0
    r = c.C(*make, "uninstall", check=False, timeout=60)
    assert r.returncode == 0, f"make uninstall failed:\n{r.stdout}{r.stderr}"
    left = c.C("find", stage, "-type", "f").stdout.split()
    assert left == [f"{stage}/etc/videofetchd/videofetchd.yaml"], left
    assert read_config(c)   # the live install is untouched


def test_make_uninstall_keeps_config_and_state(installed: nspawn.Container) -> None:
    c = installed
    r = c.C("make", "-C", SRC_IN_CONTAINER, "uninstall", check=False, timeout=60)
    assert r.returncode == 0, f"make uninstall failed:\n{r.stdout}{r.stderr}"
    for gone in (UNIT_PATH, "/usr/local/lib/videofetchd", "/usr/local/bin/videofetchd",
                 "/usr/local/bin/videofetchctl", "/etc/sysusers.d/videofetchd.conf",
                 "/etc/tmpfiles.d/videofetchd.conf"):
        assert not c.path(gone).exists() and not c.path(gone).is_symlink(), gone
    assert c.C("systemctl", "is-active", UNIT, check=False).stdout.strip() != "active"
    assert c.path(CONFIG).exists() and c.path(DB).exists()
    assert c.C("getent", "passwd", "videofetchd", check=False).returncode == 0
