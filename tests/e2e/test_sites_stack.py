"""The yt-dlp stack under the installed unit's own sandbox: deno, installed next to the daemon's
Python by `make install` (the sites extra), runs JavaScript for yt-dlp inside the service.

The doctor runs as an ExecStartPost= of the real unit (a drop-in), so it gets exactly the unit's
user, namespaces, seccomp filter and memory policy rather than a copy of them. Its js_runtime
check makes yt-dlp find the runtime by its own detection and invoke it the way it does for
YouTube, on yt-dlp-ejs's real solver scripts: a V8 that cannot JIT (MemoryDenyWriteExecute=) or a
system call the filter forbids would fail it. The file runs before test_systemd.py and leaves the
service stopped, its drop-in removed and the config as it found it.
"""
from __future__ import annotations

import json

import nspawn
from e2e_support import CONFIG, UNIT, read_config, update_config, write_config

DROPIN = f"/etc/systemd/system/{UNIT}.d/doctor.conf"
REPORT = "/var/lib/videofetchd/doctor.json"
VENV = "/usr/local/lib/videofetchd"


def test_deno_runs_javascript_for_ytdlp_inside_the_units_sandbox(installed: nspawn.Container) -> None:
    c = installed
    assert c.C("test", "-x", f"{VENV}/bin/deno", check=False).returncode == 0, "make install put no deno in the venv"
    original = read_config(c)
    update_config(c, metrics={"listen": ""})  # the container shares the host's network: no fixed port
    # `-`: the doctor's control_socket check fails while the daemon answers on it; the report is the point
    c.write(DROPIN, "[Service]\nExecStartPost=-/bin/sh -c "
                    f"'{VENV}/bin/videofetchd --check --json --config {CONFIG} > {REPORT} 2>&1'\n")
    try:
        c.C("systemctl", "daemon-reload")
        r = c.C("systemctl", "start", UNIT, check=False, timeout=180)
        assert r.returncode == 0, r.stderr
        report = c.path(REPORT).read_text()
        found = {x["name"]: x for x in json.loads(report)["checks"]}
        nspawn.log("doctor inside the sandbox:\n" + "\n".join(f"  {x['status']:<8} {n:<18} {x['detail']}"
                                                              for n, x in found.items()))
        runtime = found["js_runtime"]
        assert runtime["status"] == "ok", runtime
        assert runtime["detail"].startswith("deno ") and f"({VENV}/bin/deno)" in runtime["detail"], runtime
        assert "runs yt-dlp's challenge solver scripts" in runtime["detail"]
        assert found["ytdlp_ejs"]["status"] == "ok" and found["ytdlp"]["status"] in ("ok", "warning"), found
        cache = found["cache_dir"]
        assert cache["status"] == "ok" and "/var/cache/videofetchd" in cache["detail"], cache  # CacheDirectory=
        assert "checked as videofetchd" in cache["detail"]
        # the daemon's own probe, for status, ran in the same sandbox
        st = nspawn.wait_for(lambda: _stack(c), 60, "the daemon's stack probe")
        assert st["js_runtime"] == "deno" and st["ytdlp"] and st["ejs"] == st["ejs_expected"], st
        # the check is no formality: with the one hardening option the unit leaves out on purpose
        # (V8's JIT needs writable and executable memory), the same check fails
        c.C("systemctl", "stop", UNIT, timeout=120)
        c.write(DROPIN, c.path(DROPIN).read_text() + "MemoryDenyWriteExecute=yes\n")
        c.C("systemctl", "daemon-reload")
        c.C("systemctl", "start", UNIT, check=False, timeout=180)
        denied = {x["name"]: x for x in json.loads(c.path(REPORT).read_text())["checks"]}["js_runtime"]
        nspawn.log(f"with MemoryDenyWriteExecute=yes: js_runtime {denied['status']}: {denied['detail'][:300]}")
        assert denied["status"] == "error" and "cannot run yt-dlp's challenge solver" in denied["detail"], denied
    finally:
        c.C("systemctl", "stop", UNIT, check=False, timeout=120)
        c.path(DROPIN).unlink(missing_ok=True)
        c.C("systemctl", "daemon-reload")
        c.C("systemctl", "reset-failed", UNIT, check=False)
        write_config(c, original)


def test_the_upgrade_timer_is_installed_not_enabled(installed: nspawn.Container) -> None:
    c = installed
    for unit in ("videofetchd-upgrade.service", "videofetchd-upgrade.timer"):
        path = f"/etc/systemd/system/{unit}"
        text = c.path(path).read_text()
        assert "@LIBDIR@" not in text and "@DOCDIR@" not in text, text
        r = c.C("systemd-analyze", "verify", path, check=False)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        # the timer is the one to enable; the service has no [Install] of its own (static)
        expected = "disabled" if unit.endswith(".timer") else "static"
        assert c.C("systemctl", "is-enabled", unit, check=False).stdout.strip() == expected, unit
    service = c.path("/etc/systemd/system/videofetchd-upgrade.service").read_text()
    assert f"ExecStart={VENV}/bin/python -m pip install" in service


def _stack(c: nspawn.Container) -> dict[str, object] | None:
    r = c.C("videofetchctl", "status", "--json", check=False, timeout=30)
    if r.returncode != 0:
        return None
    stack = json.loads(r.stdout).get("stack") or {}
    return stack if stack.get("ytdlp") else None
