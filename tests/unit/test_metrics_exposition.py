"""The exposition the collector builds from a supervisor's state, and the rule and dashboard files.

A real ``Supervisor`` on a real SQLite store (not started: its state is set the way the loop and
the recorder set it), read by the real collector and parsed back with prometheus_client's parser;
``promtool`` checks the exposition, the rules and the rules' own unit tests (tests/prometheus/).
How the daemon fills that state while it downloads is tested with a real Prometheus server in
tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from videofetchd.config import Config, from_dict
from videofetchd.control.metrics import Collector
from videofetchd.control.server import ConfigInfo, ScanStatus
from videofetchd.queue.bucket import Bucket
from videofetchd.queue.store import open_store
from videofetchd.workers.recorder import Buckets, move_count
from videofetchd.workers.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    s = Supervisor(Config(), store, node="unit")
    try:
        yield s
    finally:
        s.link.close()
        store.close()


def exposition(sup: Supervisor, **kwargs: object) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(sup, **kwargs))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_buckets_are_inclusive_upper_bounds() -> None:
    b = Buckets((1.0, 5.0))
    for v in (0.5, 1.0, 1.0001, 5.0, 99.0):
        b.observe(v)
    assert b.counts == [2, 2, 1] and b.total == pytest.approx(106.5001)


def test_moving_rows_between_cached_counts() -> None:
    counts = {"queued": 2, "running": 0, "done": 5}
    move_count(counts, "queued", "running", 2)
    move_count(counts, "running", "done")
    move_count(counts, "running", "failed")
    assert counts == {"queued": 0, "running": 0, "done": 6, "failed": 1}
    empty: dict[str, int] = {}
    move_count(empty, "queued", "running")  # before the first count: nothing to move
    assert empty == {}


def test_the_collector_reads_the_supervisors_state(sup: Supervisor) -> None:
    sup.state = "running"
    sup.queue_counts.update({"queued": 7, "running": 3, "done": 100, "failed": 2, "missing": 0})
    sup.oldest_queued_s = 42.5
    sup.counters.stalled_killed, sup.counters.downloaded_bytes, sup.counters.lost_leases = 2, 123456, 1
    sup.stats.finished[("done", "")] += 100
    sup.stats.finished[("retried", "stalled")] += 2
    sup.stats.durations.observe(0.3)
    sup.stats.durations.observe(4000.0)
    sup.stats.queue_waits.observe(12.0)
    sup.site_pauses["www.youtube.com"] = time.monotonic() + 600
    sup.site_pauses["old.example"] = time.monotonic() - 1  # its pause is over
    scan = ScanStatus(last_success_ts=1_700_000_000.0)
    got = samples(exposition(sup, info=ConfigInfo(path="x", last_reload_error="bad"), scan=scan))

    def v(metric: str, **labels: str) -> float:
        return got[(metric, tuple(sorted(labels.items())))]

    assert v("videofetchd_jobs", status="queued") == 7 and v("videofetchd_jobs", status="done") == 100
    assert v("videofetchd_oldest_queued_age_seconds") == 42.5
    assert v("videofetchd_state", state="running") == 1 and v("videofetchd_state", state="paused") == 0
    assert v("videofetchd_jobs_finished_total", outcome="done", error_kind="") == 100
    assert v("videofetchd_jobs_finished_total", outcome="retried", error_kind="stalled") == 2
    assert v("videofetchd_jobs_finished_total", outcome="failed", error_kind="permanent") == 0  # there from the start
    assert v("videofetchd_stall_kills_total") == 2 and v("videofetchd_lost_leases_total") == 1
    assert v("videofetchd_downloaded_bytes_total") == 123456
    assert v("videofetchd_job_duration_seconds_bucket", le="0.5") == 1
    assert v("videofetchd_job_duration_seconds_bucket", le="+Inf") == 2
    assert v("videofetchd_job_duration_seconds_count") == 2
    assert v("videofetchd_job_queue_wait_seconds_sum") == 12.0
    assert v("videofetchd_throttle_active", site="www.youtube.com") == 1
    assert v("videofetchd_throttle_active", site="old.example") == 0
    assert v("videofetchd_config_last_reload_successful") == 0
    assert v("videofetchd_scan_last_success_timestamp_seconds") == 1_700_000_000.0
    assert v("videofetchd_database_up") == 1
    assert v("videofetchd_health_condition", name="disk_space") == 0  # known conditions exist from the start
    assert v("videofetchd_health_condition", name="workers_cannot_start") == 0
    assert v("process_resident_memory_bytes") > 1 << 20 and v("process_open_fds") >= 3
    assert v("process_cpu_seconds_total") > 0 and time.time() - 600 < v("process_start_time_seconds") <= time.time()
    assert v("videofetchd_workers_resident_memory_bytes") == 0  # no children started here
    build = [k for k in got if k[0] == "videofetchd_build_info"]
    assert len(build) == 1 and {"version", "ytdlp", "python"} == {k for k, _ in build[0][1]}


def test_egress_identities_are_exported_from_the_last_budget_refresh(tmp_path: Path) -> None:
    cfg = from_dict({"download": {"identities": [{"name": "home", "max_per_hour": 60, "burst": 2},
                                                 {"name": "proxy"}]}})
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    s = Supervisor(cfg, store, node="unit")
    try:
        s.egress.clock, s.egress.read_at = 5000.0, time.monotonic()
        s.egress.running = {"home": 2}
        s.egress.buckets = {("home", "youtube.com"): Bucket(tokens=0.5, updated=5000.0, paused_until=5100.0,
                                                            strikes=1, reason="429", started=7),
                            ("proxy", "vimeo.com"): Bucket(started=3)}
        s.stats.by_identity.update({("home", "done"): 5, ("home", "retried"): 2, ("gone", "failed"): 1})
        s.egress.faults["proxy"] = ("identity proxy: its source_address cannot be bound", time.monotonic())
        got = samples(exposition(s))
    finally:
        s.link.close()
        store.close()
    assert got[("videofetchd_identity_running", (("identity", "home"),))] == 2
    assert got[("videofetchd_identity_running", (("identity", "proxy"),))] == 0
    home = (("identity", "home"), ("site", "youtube.com"))
    assert got[("videofetchd_identity_budget_tokens", home)] == pytest.approx(0.5, abs=0.01)
    assert 99 <= got[("videofetchd_identity_paused_seconds", home)] <= 100
    assert got[("videofetchd_identity_starts_total", home)] == 7
    assert got[("videofetchd_identity_paused_seconds", (("identity", "proxy"), ("site", "vimeo.com")))] == 0
    assert ("videofetchd_identity_budget_tokens", (("identity", "proxy"), ("site", "vimeo.com"))) not in got
    jobs = {(dict(k)["identity"], dict(k)["outcome"]): v for (name, k), v in got.items()
            if name == "videofetchd_identity_jobs_total"}
    assert jobs == {("home", "done"): 5, ("home", "failed"): 0, ("home", "retried"): 2,
                    ("proxy", "done"): 0, ("proxy", "failed"): 0, ("proxy", "retried"): 0,
                    ("gone", "done"): 0, ("gone", "failed"): 1, ("gone", "retried"): 0}  # a removed one stays
    assert got[("videofetchd_identity_paused", (("identity", "proxy"),))] == 1
    assert got[("videofetchd_identity_paused", (("identity", "home"),))] == 0


def test_host_conditions_are_read_from_the_supervisors_registry(sup: Supervisor) -> None:
    sup.health.set("disk_space", "free space below download.min_free_space")
    sup.health.set("some_new_condition", "a name the metrics module has never heard of")
    got = samples(exposition(sup))
    assert got[("videofetchd_health_condition", (("name", "disk_space"),))] == 1
    assert got[("videofetchd_health_condition", (("name", "some_new_condition"),))] == 1
    assert got[("videofetchd_health_condition", (("name", "download_directory"),))] == 0
    sup.health.clear("disk_space")
    assert samples(exposition(sup))[("videofetchd_health_condition", (("name", "disk_space"),))] == 0


def test_nothing_is_claimed_about_the_queue_before_it_was_counted(sup: Supervisor) -> None:
    text = exposition(sup)
    assert "videofetchd_jobs{" not in text and "videofetchd_workers{" in text
    assert "videofetchd_scan_" not in text and "videofetchd_config_" not in text  # one-shot fetch: no such thing
    assert "videofetchd_identity_" not in text  # no download.identities


def test_promtool_accepts_the_exposition(sup: Supervisor) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (the integration test requires it under CI)")
    sup.queue_counts.update({"queued": 1, "running": 0, "done": 0, "failed": 0, "missing": 0})
    sup.site_pauses["a.example"] = time.monotonic() + 5
    r = subprocess.run([promtool, "check", "metrics"], input=exposition(sup, scan=ScanStatus()), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (the integration test requires it under CI)")
    r = subprocess.run([promtool, "check", "rules", str(ROOT / "etc" / "prometheus" / "videofetchd.rules.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([promtool, "test", "rules", "videofetchd.rules.test.yml"], capture_output=True, text=True,
                       cwd=ROOT / "tests" / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads((ROOT / "etc" / "grafana" / "videofetchd.json").read_text())
    assert dashboard["uid"] == "videofetchd" and dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20 and all("videofetchd_" in e for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
