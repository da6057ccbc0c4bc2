"""The supervisor: stalled and killed children, recycling, site throttling, the crash breaker.

Real daemon processes (``python -m videofetchd``), real yt-dlp children, the real local media
server with injected faults, and real signals. Status is read over the control socket itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

import vfd
from vfd import running
from helpers import wait_until
from mediaserver import MediaServer

KiB = 1024
MiB = 1024 * KiB


# -- helpers ----------------------------------------------------------------------------------------

def query(config: Path, cmd: str = "status") -> dict[str, Any]:
    """One request on the control socket (raw: fast enough to poll every few tens of ms)."""
    path = yaml.safe_load(config.read_text())["control"]["socket"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


class Sampler:
    """Polls the daemon's status in a thread; each sample is (monotonic time, status, {pid: rss})."""

    def __init__(self, config: Path, interval: float = 0.05, rss: bool = False) -> None:
        self.config = config
        self.interval = interval
        self.rss = rss
        self.samples: list[tuple[float, dict[str, Any], dict[int, int]]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                st = query(self.config)
                t = time.monotonic()
                sizes: dict[int, int] = {}
                if self.rss:
                    for w in st["workers"]:
                        if w["pid"]:
                            with contextlib.suppress(psutil.Error):
                                sizes[w["pid"]] = psutil.Process(w["pid"]).memory_info().rss
                self.samples.append((t, st, sizes))
            except (OSError, ValueError) as exc:
                self.errors.append(exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def edit_config(config: Path, **sections: dict[str, Any]) -> None:
    data = yaml.safe_load(config.read_text())
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(data))


def by_id(db: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(db)}


def all_done(db: Path, ids: list[str]) -> bool:
    rows = by_id(db)
    return all(rows.get(i, {}).get("status") == "done" for i in ids)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_baseline(cfg: Path, db: Path, srv: MediaServer, ids: list[str]) -> int:
    """Download ``ids`` undisturbed and return the number of GETs each needed (the same for all)."""
    assert vfd.ctl(cfg, "add", *ids).returncode == 0
    wait_until(lambda: all_done(db, ids), timeout=60, message="baseline downloads")
    per_id = {i: srv.body_requests(i) for i in ids}
    assert len(set(per_id.values())) == 1, f"undisturbed downloads differ in requests: {per_id}"
    return per_id[ids[0]]


# -- a stalled child ----------------------------------------------------------------------------------

def test_stalled_child_is_killed_and_its_job_retried(tmp_path: Path) -> None:
    size, stall_timeout = 400 * KiB, 3.0
    with MediaServer(default_size=size, rate_bps=200 * KiB) as srv:
        # The baseline runs with a lenient stall_timeout: a fresh child's first job spends seconds of CPU
        # in yt-dlp imports before its first byte, which on a loaded 2-core box can exceed 3 s.
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 4, "stall_timeout": "60s", "kill_grace": "1s"})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            baseline = run_baseline(cfg, db, srv, [f"base-{i}" for i in range(4)])
            assert baseline == 2, f"expected probe + download per id, saw {baseline}"  # documents yt-dlp generic
            edit_config(cfg, download={"stall_timeout": f"{stall_timeout:g}s"})
            d.signal(signal.SIGHUP)
            wait_until(lambda: query(cfg)["config"]["generation"] == 2, timeout=10, message="reload")

            stalled = "hangs-midway"
            srv.configure(stalled, stall_after=size // 2, stall_times=1)
            others = [f"calm-{i}" for i in range(4)]
            with Sampler(cfg) as sampler:
                assert vfd.ctl(cfg, "add", stalled, *others).returncode == 0
                first = wait_until(lambda: next(
                    ((w["slot"], w["pid"]) for _, st, _ in sampler.samples[-1:] for w in st["workers"]
                     if w.get("video_id") == stalled), None), timeout=30, message="stalled job never started")
                slot, pid0 = first
                t_dead = wait_until(lambda: None if alive(pid0) else time.monotonic(), timeout=30, interval=0.02,
                                    message="stalled child was never killed")
                wait_until(lambda: all_done(db, [stalled, *others]), timeout=60, message="jobs did not complete")
                final = query(cfg)

        # the last progress the stalled child made, as status reported it (same CLOCK_MONOTONIC)
        mine = [(t, w) for t, st, _ in sampler.samples for w in st["workers"]
                if w["pid"] == pid0 and w.get("video_id") == stalled]
        assert mine, "status never showed the stalled job"
        last_progress = max(t - w["last_progress_age_s"] for t, w in mine)
        assert max(w["downloaded_bytes"] for _, w in mine) <= size // 2
        waited = t_dead - last_progress
        assert stall_timeout - 0.1 <= waited <= stall_timeout + 2, \
            f"child died {waited:.2f}s after its last progress (stall_timeout {stall_timeout}s)"
        assert max(w["last_progress_age_s"] for _, w in mine) >= stall_timeout - 0.5, "status never showed the stall"
        print(f"stalled child died {waited:.2f}s after its last progress")
        later = [w["pid"] for _, st, _ in sampler.samples for w in st["workers"] if w["slot"] == slot and w["pid"]]
        assert later[-1] != pid0, "the stalled slot kept its killed child's pid"

        rows = by_id(db)
        assert rows[stalled]["attempts"] == 2 and rows[stalled]["file_size"] == size, rows[stalled]
        assert [r.outcome for r in srv.requests() if r.video_id == stalled].count("stalled") == 1
        assert Path(rows[stalled]["file_path"]).read_bytes() == srv.content(stalled)
        c = final["counters"]
        assert c["stalled_killed"] == 1 and c["worker_restarts"] >= 1 and c["failed"] == 0, c
        extra = {i: srv.body_requests(i) for i in others if srv.body_requests(i) != baseline}
        assert extra == {}, f"undisturbed jobs made other than {baseline} requests: {extra}"
        assert all(rows[i]["attempts"] == 1 for i in others)


# -- a child killed with SIGKILL ------------------------------------------------------------------------

def test_sigkilled_child_costs_only_its_own_job(tmp_path: Path) -> None:
    size = 400 * KiB
    with MediaServer(default_size=size, rate_bps=150 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 4})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            baseline = run_baseline(cfg, db, srv, [f"base-{i}" for i in range(4)])
            ids = [f"busy-{i}" for i in range(4)]
            with Sampler(cfg) as sampler:
                assert vfd.ctl(cfg, "add", *ids).returncode == 0

                def four_downloading() -> dict[str, Any] | None:
                    s = query(cfg)
                    moving = [w for w in s["workers"] if w["state"] == "busy" and (w["downloaded_bytes"] or 0) > 0]
                    return s if len(moving) == 4 else None

                st = wait_until(four_downloading, timeout=30, message="four downloads under way")
                pids = {w["slot"]: w["pid"] for w in st["workers"]}
                victim = next(w for w in st["workers"] if w["video_id"] == ids[0])
                t_kill = time.monotonic()
                os.kill(victim["pid"], signal.SIGKILL)
                wait_until(lambda: all_done(db, ids), timeout=60, message="jobs did not complete")
                final = query(cfg)
            assert d.proc.poll() is None

        rows = by_id(db)
        assert rows[ids[0]]["attempts"] == 2, rows[ids[0]]
        assert Path(rows[ids[0]]["file_path"]).read_bytes() == srv.content(ids[0])
        for _, s, _ in sampler.samples:
            for w in s["workers"]:
                if w["slot"] != victim["slot"]:
                    assert w["pid"] == pids[w["slot"]], f"slot {w['slot']} changed its child: {s['workers']}"
        after = [w["pid"] for t, s, _ in sampler.samples if t > t_kill for w in s["workers"]
                 if w["slot"] == victim["slot"] and w["pid"]]
        assert after and after[-1] != victim["pid"]
        extra = {i: srv.body_requests(i) for i in ids[1:] if srv.body_requests(i) != baseline}
        assert extra == {}, f"undisturbed jobs made other than {baseline} requests: {extra}"
        assert all(rows[i]["attempts"] == 1 for i in ids[1:])
        c = final["counters"]
        assert c["worker_restarts"] >= 1 and c["stalled_killed"] == 0 and c["failed"] == 0, c


def test_idle_child_death_is_noticed_and_costs_no_attempt(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            def all_up() -> dict[str, Any] | None:
                snap = query(cfg)
                return snap if all(w["pid"] for w in snap["workers"]) else None

            # the control socket answers before every child has warmed up: wait for both pids
            st = wait_until(all_up, timeout=30, message="both worker children up")
            victim = st["workers"][0]
            other = st["workers"][1]
            assert victim["state"] == "idle" and victim["pid"]
            os.kill(victim["pid"], signal.SIGKILL)
            wait_until(lambda: not alive(victim["pid"]), timeout=10)
            # status must not go on showing a dead child as an idle worker (checked last, below)

            def slot_of_victim() -> dict[str, Any]:
                return next(w for w in query(cfg)["workers"] if w["slot"] == victim["slot"])

            deadline = time.monotonic() + 3.0
            while (w := slot_of_victim())["pid"] == victim["pid"] and w["state"] == "idle" \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            shown_after_death = slot_of_victim()
            ids = [f"after-idle-death-{i}" for i in range(6)]
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: all_done(db, ids), timeout=30, message="jobs after an idle child died")
            rows = by_id(db)
            assert all(rows[i]["attempts"] == 1 for i in ids), {i: rows[i]["attempts"] for i in ids}
            st = query(cfg)
            assert st["counters"]["failed"] == 0 and st["counters"]["retried"] == 0, st["counters"]
            assert next(w for w in st["workers"] if w["slot"] == other["slot"])["pid"] == other["pid"]
            assert all(alive(w["pid"]) for w in st["workers"]), st["workers"]
            assert d.stop() == 0
        assert shown_after_death["pid"] != victim["pid"] or shown_after_death["state"] != "idle", \
            f"3 s after its child died, status still shows slot {victim['slot']} as {shown_after_death}"


# -- recycling --------------------------------------------------------------------------------------

def test_children_are_recycled_and_stay_under_the_rss_limit(tmp_path: Path) -> None:
    # the soak: 2,000 small jobs through 4 workers (~15-30 s here), recycled every 100 jobs
    n, workers, per_child, limit = 2000, 4, 100, 300 * MiB
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": workers, "recycle_after_jobs": per_child,
                                         "recycle_rss": "300MiB"})
        db = tmp_path / "queue.db"
        r = vfd.ctl(cfg, "add", "--file", "-", input="".join(f"small-{i:05d}\n" for i in range(n)))
        assert r.returncode == 0 and f"added {n}" in r.stdout, (r.stdout, r.stderr)
        t0 = time.monotonic()
        with running(cfg) as d, Sampler(cfg, interval=0.2, rss=True) as sampler:
            wait_until(lambda: vfd.counts(db) == {"done": n}, timeout=240, interval=0.5,
                       message="not every row was downloaded")
            final = query(cfg)
            assert d.stop() == 0
        elapsed = time.monotonic() - t0

    peaks: dict[int, int] = {}
    for _, _, sizes in sampler.samples:
        for pid, size in sizes.items():
            peaks[pid] = max(peaks.get(pid, 0), size)
    assert peaks and len(sampler.samples) > 20, "child RSS was not sampled"
    assert max(peaks.values()) < limit, {p: s >> 20 for p, s in peaks.items()}
    # every child does at most recycle_after_jobs jobs: at least n / per_child children in all
    assert final["counters"]["recycled"] >= n // per_child - workers, final["counters"]
    assert len(peaks) > workers, f"only {len(peaks)} distinct children seen"
    assert final["counters"]["completed"] == n and final["counters"]["failed"] == 0
    assert vfd.counts(db) == {"done": n}
    print(f"{n} jobs in {elapsed:.1f}s, {final['counters']['recycled']} recycles, "
          f"peak child RSS {max(peaks.values()) >> 20} MiB")


# -- throttling ---------------------------------------------------------------------------------------

def test_http_429_pauses_the_site_without_burning_attempts(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "throttle_cooldown": "30s", "max_attempts": 2})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "e429-limited").returncode == 0
            st = wait_until(lambda: (s := query(cfg))["site_pauses"] and s, timeout=30,
                            message="no site pause after HTTP 429")
            assert set(st["site_pauses"]) == {"127.0.0.1"}, st["site_pauses"]
            assert 20 < st["site_pauses"]["127.0.0.1"] <= 30
            assert any("127.0.0.1" in note and "throttl" in note for note in st["notes"]), st["notes"]
            row = wait_until(lambda: (r := by_id(db)["e429-limited"])["status"] != "running" and r, timeout=10)
            assert row["status"] == "queued" and row["attempts"] == 0, row
            assert "429" in (row["last_error"] or ""), row
            hits = srv.body_requests("e429-limited")

            others = ["same-site-1", "same-site-2"]
            assert vfd.ctl(cfg, "add", *others).returncode == 0
            deadline = time.monotonic() + 3.0  # six poll intervals, plus the nudge from `add`
            while time.monotonic() < deadline:
                rows = by_id(db)
                assert all(rows[i]["status"] == "queued" for i in others), rows
                assert rows["e429-limited"]["status"] == "queued"
                time.sleep(0.1)
            assert all(srv.body_requests(i) == 0 for i in others)
            assert srv.body_requests("e429-limited") == hits
            st = query(cfg)
            assert st["counters"]["failed"] == 0 and st["queue"].get("failed", 0) == 0
            human = vfd.ctl(cfg, "status")
            assert human.returncode == 0 and "throttled" in human.stdout, human.stdout
            assert d.stop() == 0
        assert {r["status"] for r in vfd.rows(db)} == {"queued"}
        assert all(r["attempts"] == 0 for r in vfd.rows(db))


def test_site_pause_ends_and_the_throttled_row_then_downloads(tmp_path: Path) -> None:
    with MediaServer(default_size=8 * KiB) as srv:
        srv.configure("throttled-once", fail_status=429, fail_times=1)
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "throttle_cooldown": "3s"})
        db = tmp_path / "queue.db"
        with running(cfg) as d:
            assert vfd.ctl(cfg, "add", "throttled-once").returncode == 0
            st = wait_until(lambda: (s := query(cfg))["site_pauses"] and s, timeout=30, message="no site pause")
            t_paused = time.monotonic()
            assert vfd.ctl(cfg, "add", "waits-for-site").returncode == 0
            wait_until(lambda: all_done(db, ["throttled-once", "waits-for-site"]), timeout=30,
                       message="rows not downloaded after the site pause")
            assert time.monotonic() - t_paused > 2.0, "rows were claimed during the site pause"
            rows = by_id(db)
            assert rows["throttled-once"]["attempts"] == 1, "the throttled attempt was counted"
            assert rows["waits-for-site"]["attempts"] == 1
            st = query(cfg)
            assert st["site_pauses"] == {} and not any("throttl" in n for n in st["notes"]), st
            assert st["counters"]["failed"] == 0
            assert d.stop() == 0


# -- the crash breaker --------------------------------------------------------------------------------

def test_repeated_child_deaths_pause_claiming(tmp_path: Path) -> None:
    with MediaServer(default_size=2 * MiB, rate_bps=100 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               # backoff 1 s (0.5-1 s with jitter): long enough that the first
                               # killed job is not due again before the second death is reaped
                               download={"workers": 2, "crash_limit": 2, "crash_window": "20s",
                                         "retry_backoff": "1s"})
        db = tmp_path / "queue.db"
        with running(cfg):
            assert vfd.ctl(cfg, "add", "crashy-a", "crashy-b").returncode == 0
            pids = wait_until(lambda: len(p := vfd.worker_pids(cfg)) == 2 and p, timeout=30)
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            st = wait_until(lambda: (s := query(cfg))["counters"]["worker_restarts"] >= 2 and s, timeout=15)
            assert any("claiming paused" in note for note in st["notes"]), st["notes"]
            # the killed jobs are due again within 1 s, but nothing is claimed during the pause
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                rows = by_id(db)
                assert all(r["status"] == "queued" for r in rows.values()), rows
                time.sleep(0.1)
            assert all(r["attempts"] == 1 for r in by_id(db).values())
            human = vfd.ctl(cfg, "status")
            assert human.returncode == 0 and "claiming paused" in human.stdout, human.stdout
