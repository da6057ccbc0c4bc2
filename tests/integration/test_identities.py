"""Egress identities against a media server that limits video starts per client address.

Everything is real: the daemon (and a one-shot ``fetch``) as processes, yt-dlp binding each
identity's ``source_address`` (127.0.0.2, .3, .4: all of 127.0.0.0/8 is local on Linux), and
the server (tests/iplimit.py) answering 429 to an address that starts more videos than its
allowance. The server's own log says which address started what, so "never over budget" is
checked where a site would check it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import vfd
from helpers import wait_until
from iplimit import AddressLimit, LimitedMediaServer
from mediaserver import MediaServer
from pg import pg_url  # noqa: F401  (fixture)

ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
SITE = "127.0.0.1"


def identities(names: str = "abc", **budget: Any) -> list[dict[str, Any]]:
    return [{"name": n, "source_address": ADDRESSES[n], **budget} for n in names]


@contextlib.contextmanager
def limited(limit: AddressLimit) -> Iterator[LimitedMediaServer]:
    with LimitedMediaServer(limit, default_size=8 * 1024) as srv:
        yield srv


def add(config: Path, ids: list[str]) -> None:
    r = vfd.ctl(config, "add", "--file", "-", input="\n".join(ids) + "\n")
    assert r.returncode == 0, r.stderr


def identity_status(config: Path) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in vfd.status(config)["identities"]}


def status_when(config: Path, predicate: Any, timeout: float = 60, message: str = "") -> dict[str, Any]:
    """The first status reply that satisfies ``predicate``."""
    def probe() -> dict[str, Any] | None:
        st = vfd.status(config)
        return st if predicate(st) else None
    result: dict[str, Any] = wait_until(probe, timeout=timeout, message=message)
    return result


def paused_on_site(ident: dict[str, Any]) -> float:
    return next((s["paused_s"] or 0.0 for s in ident["sites"] if s["site"] == SITE), 0.0)


def test_budgets_under_the_site_limits_get_no_429_and_spread_the_work(tmp_path: Path) -> None:
    # the site: 40 video starts per address in any 10 s; our budgets: 80 % of that, one at a time
    limit = AddressLimit(per_window=40, window=10.0)
    with limited(limit) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 4, "identities": identities(max_per_hour=int(0.8 * 40 * 360))})
        ids = [f"bud{i:03d}" for i in range(240)]
        with vfd.running(cfg):
            add(cfg, ids)
            st = status_when(cfg, lambda s: any(i["sites"] for i in s["identities"]), message="no budgets shown")
            shown = vfd.ctl(cfg, "status").stdout
            assert "identities (3):" in shown and "via 127.0.0.3" in shown and "budget 11520/h" in shown, shown
            assert {i["name"] for i in st["identities"]} == {"a", "b", "c"}
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == len(ids), timeout=240,
                       message="not every row was done")
    assert limit.refused() == []  # not a single 429
    rows = vfd.rows(tmp_path / "queue.db")
    per_identity = collections.Counter(r["identity"] for r in rows)
    assert set(per_identity) == {"a", "b", "c"}
    assert min(per_identity.values()) >= len(ids) // 4, per_identity  # spread, not piled on one
    for name, address in ADDRESSES.items():
        assert len(limit.admitted(address)) == per_identity[name]  # each row went out its identity's address
        assert limit.max_in_window(address) <= 40
    assert all(r["attempts"] == 1 for r in rows)


def test_one_address_blocked_pauses_only_its_identity(tmp_path: Path) -> None:
    # no budgets; the site refuses every start from 127.0.0.3
    limit = AddressLimit(per_address={ADDRESSES["b"]: 0})
    with limited(limit) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 3, "throttle_cooldown": "10m", "identities": identities()})
        ids = [f"blk{i:03d}" for i in range(60)]
        with vfd.running(cfg):
            add(cfg, ids)
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == len(ids), timeout=120,
                       message="the two good identities did not carry the queue")
            st = vfd.status(cfg)
            shown = vfd.ctl(cfg, "status").stdout
    idents = {i["name"]: i for i in st["identities"]}
    assert paused_on_site(idents["b"]) > 60  # still paused: the queue did not wait for it
    assert paused_on_site(idents["a"]) == 0 and paused_on_site(idents["c"]) == 0
    assert st["site_pauses"] == {}
    assert "PAUSED" in shown and "HTTP Error 429" in shown, shown
    assert limit.refused() and {s.address for s in limit.refused()} == {ADDRESSES["b"]}
    rows = vfd.rows(tmp_path / "queue.db")
    assert {r["identity"] for r in rows} == {"a", "c"}
    assert all(r["attempts"] == 1 for r in rows)  # a 429 costs no attempt


def test_every_identity_throttled_pauses_the_site_without_charging_rows(tmp_path: Path) -> None:
    limit = AddressLimit(per_window=0)
    with limited(limit) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 3, "throttle_cooldown": "10m", "identities": identities()})
        with vfd.running(cfg):
            add(cfg, ["all1", "all2", "all3", "all4"])
            st = status_when(cfg, lambda s: SITE in s["site_pauses"], message="the site was not paused")
            idents = {i["name"]: i for i in st["identities"]}
            assert all(paused_on_site(i) > 0 for i in idents.values())
            assert any("site 127.0.0.1 paused" in n for n in st["notes"])
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("queued") == 4, timeout=30)
    assert {s.address for s in limit.refused()} == set(ADDRESSES.values())
    assert all(r["attempts"] == 0 and r["status"] == "queued" for r in vfd.rows(tmp_path / "queue.db"))


def test_a_reload_changes_identities_and_running_jobs_keep_theirs(tmp_path: Path) -> None:
    limit = AddressLimit()
    with limited(limit) as srv:
        srv.configure("slow", size=600 * 1024, rate_bps=100 * 1024)  # about 6 s
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 2, "identities": identities("a")})
        with vfd.running(cfg):
            add(cfg, ["slow"])
            wait_until(lambda: any(w["video_id"] == "slow" and w["phase"] == "downloading"
                                   for w in vfd.status(cfg)["workers"]), timeout=60)
            data = yaml.safe_load(cfg.read_text())
            data["download"]["identities"] = identities("bc")
            cfg.write_text(yaml.safe_dump(data))
            assert vfd.ctl(cfg, "reload").returncode == 0
            assert set(identity_status(cfg)) == {"b", "c"}
            add(cfg, [f"new{i}" for i in range(10)])
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == 11, timeout=120)
    by_id = {r["video_id"]: r for r in vfd.rows(tmp_path / "queue.db")}
    assert by_id["slow"]["identity"] == "a"
    assert {s.address for s in limit.admitted() if s.video_id == "slow"} == {ADDRESSES["a"]}
    assert {by_id[f"new{i}"]["identity"] for i in range(10)} <= {"b", "c"}
    assert {s.address for s in limit.admitted() if s.video_id.startswith("new")} <= {ADDRESSES["b"], ADDRESSES["c"]}


def _shared_budget_run(tmp_path: Path, db_url: str, *, second: str) -> None:
    """Two processes on one database, three identities: the site never sees an address over its
    allowance, though each process alone could spend the whole budget."""
    limit = AddressLimit(per_window=20, window=10.0)  # 2 starts/s per address
    budget = identities(max_per_hour=int(0.75 * 20 * 360))  # 1.5/s each, shared by both processes
    with limited(limit) as srv:
        homes = [tmp_path / "one", tmp_path / "two"]
        cfgs = []
        for i, home in enumerate(homes):
            home.mkdir()
            cfgs.append(vfd.write_config(home, url_template=srv.url_template, db_url=db_url,
                                         database={"node_name": f"node{i}"},
                                         download={"workers": 3, "identities": budget}))
        ids = [f"sh{i:03d}" for i in range(72)]
        with vfd.running(cfgs[0]):
            if second == "daemon":
                with vfd.running(cfgs[1]):
                    add(cfgs[0], ids)
                    wait_until(lambda: len(_files(homes)) == len(ids), timeout=180, message="not all downloaded")
            else:
                add(cfgs[0], ids)
                fetch = vfd.ctl(cfgs[1], "fetch", "--num-workers", "3", timeout=300)
                assert fetch.returncode == 0, fetch.stderr
                wait_until(lambda: len(_files(homes)) == len(ids), timeout=120, message="not all downloaded")
    assert limit.refused() == []
    for address in ADDRESSES.values():
        assert limit.max_in_window(address) <= 20
    per_home = [len(_files([h])) for h in homes]
    assert min(per_home) >= 5, per_home  # both processes really worked at the same time


def _files(homes: list[Path]) -> set[str]:
    return {p.name for h in homes if (h / "videos").exists() for p in (h / "videos").iterdir()
            if p.name.endswith(".mp4")}


@pytest.mark.postgres
def test_two_daemons_on_postgresql_share_the_budgets(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    _shared_budget_run(tmp_path, pg_url, second="daemon")


def test_a_one_shot_fetch_beside_the_daemon_shares_the_budgets(tmp_path: Path) -> None:
    _shared_budget_run(tmp_path, f"sqlite:///{tmp_path}/queue.db", second="fetch")


def test_bad_identities_are_refused_with_the_key_path(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4",
                           download={"identities": [{"name": "a"}, {"name": "a", "source_address": "x"}]})
    r = subprocess.run([vfd.PY, "-m", "videofetchd", "--check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "download.identities[1].name: duplicate identity name 'a'" in r.stderr


# -- an identity's source_address this host cannot bind --------------------------------------------

def test_a_source_address_this_host_cannot_bind_is_a_config_error_at_start(tmp_path: Path) -> None:
    """127.0.0.2 is bindable (all of 127.0.0.0/8 is local on Linux); 192.0.2.1 (TEST-NET-1) is not."""
    def start(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
        cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4",
                               download={"identities": [{"name": "home"}, {"name": "far", "source_address": address}]})
        return subprocess.run([vfd.PY, "-m", "videofetchd", *flags, "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60)
    assert start("127.0.0.2", "--check-config").returncode == 0
    for flags in (("--check-config",), ()):  # the daemon itself refuses to start: 78, no restart loop
        r = start("192.0.2.1", *flags)
        assert r.returncode == 78, (r.returncode, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"videofetchd: {tmp_path / 'videofetchd.yaml'}: download.identities[1].source_address: 192.0.2.1 is not "
            "an address of this host (cannot bind to it: Cannot assign requested address); identity far could "
            "connect nowhere"], r.stderr
    doctor = start("192.0.2.1", "--check")
    assert doctor.returncode == 1, doctor.stdout
    assert "192.0.2.1 is not an address of this host" in doctor.stdout, doctor.stdout


NETNS_ADDR = "192.0.2.55"  #: given to lo inside the test's own network namespace, then taken away


def test_an_address_that_goes_away_pauses_its_identity_and_no_row_fails() -> None:
    """Runs the test below in a network namespace of its own (``unshare --net``, as root), where
    lo can gain and lose an address without touching the host's network."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("needs root, unshare and ip")
    r = subprocess.run(["unshare", "--net", vfd.PY, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"{__file__}::test_in_netns_an_address_that_goes_away"],
                       env={**os.environ, "VFD_IN_NETNS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]


def test_in_netns_an_address_that_goes_away(tmp_path: Path) -> None:
    if not os.environ.get("VFD_IN_NETNS"):
        pytest.skip("run by the test above, inside its own network namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{NETNS_ADDR}/32", "dev", "lo"], check=True)
    with MediaServer(default_size=8 * 1024) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"identities": [{"name": "x", "source_address": NETNS_ADDR}]})
        db = tmp_path / "queue.db"
        with vfd.running(cfg) as d:
            add(cfg, ["before"])
            wait_until(lambda: vfd.counts(db) == {"done": 1}, timeout=60, message="the first job")
            subprocess.run(["ip", "addr", "del", f"{NETNS_ADDR}/32", "dev", "lo"], check=True)
            add(cfg, ["gone1", "gone2"])
            st = status_when(cfg, lambda s: identity_status_of(s, "x")["fault"], message="no identity fault")
            assert "identity x: its source_address cannot be bound" in identity_status_of(st, "x")["fault"]
            rows = {r["video_id"]: r for r in vfd.rows(db)}
            for vid in ("gone1", "gone2"):  # handed back, uncharged: not failed, not retried with backoff
                assert rows[vid]["status"] in ("queued", "running") and rows[vid]["attempts"] <= 1, rows[vid]
                assert rows[vid]["error_kind"] is None, rows[vid]
            subprocess.run(["ip", "addr", "add", f"{NETNS_ADDR}/32", "dev", "lo"], check=True)
            wait_until(lambda: vfd.counts(db) == {"done": 3}, timeout=60, message="the identity did not resume")
            assert identity_status(cfg)["x"]["fault"] is None
            assert "takes no jobs until its address is back" in d.log() and "takes jobs again" in d.log()
            assert d.stop() == 0
    assert all(r["attempts"] == 1 for r in vfd.rows(db)), vfd.rows(db)


def identity_status_of(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(i for i in st["identities"] if i["name"] == name)


def test_a_one_shot_fetch_refuses_an_identity_this_host_cannot_bind(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4",
                           download={"identities": [{"name": "far", "source_address": "192.0.2.1"}]})
    add(cfg, ["one"])
    r = vfd.ctl(cfg, "fetch", timeout=60)  # before: every job handed back, a run that never drained
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "download.identities[0].source_address: 192.0.2.1" in r.stderr, r.stderr


def test_identity_metrics_count_each_attempt_under_its_identity(tmp_path: Path) -> None:
    from promserver import free_port, scrape
    port = free_port()
    with MediaServer(default_size=8 * 1024) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, metrics={"listen": f"127.0.0.1:{port}"},
                               download={"identities": identities("ab")})
        with vfd.running(cfg) as d:
            add(cfg, ["m1", "m2", "m3", "m4", "e404-m5"])
            wait_until(lambda: vfd.counts(tmp_path / "queue.db") == {"done": 4, "failed": 1}, timeout=60)
            rows = {r["video_id"]: r["identity"] for r in vfd.rows(tmp_path / "queue.db")}
            text = scrape(port)
            assert d.stop() == 0
    got = {}
    for line in text.splitlines():
        if line.startswith("videofetchd_identity_jobs_total{"):
            labels, value = line[len("videofetchd_identity_jobs_total{"):].split("} ")
            parts = dict(p.split("=") for p in labels.split(","))
            got[(parts["identity"].strip('"'), parts["outcome"].strip('"'))] = float(value)
    expected = collections.Counter((rows[v], "failed" if v.startswith("e404") else "done") for v in rows)
    assert {k: v for k, v in got.items() if v} == dict(expected), (got, rows)
    assert set(got) == {(i, o) for i in "ab" for o in ("done", "failed", "retried")}
    assert 'videofetchd_identity_paused{identity="a"} 0.0' in text


def test_a_reload_to_an_identity_this_host_cannot_bind_keeps_the_old_config(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4",
                           download={"identities": identities("a")})
    with vfd.running(cfg) as d:
        data = yaml.safe_load(cfg.read_text())
        data["download"]["identities"][0]["source_address"] = "192.0.2.1"
        cfg.write_text(yaml.safe_dump(data))
        r = vfd.ctl(cfg, "reload")
        assert r.returncode == 1 and "download.identities[0].source_address: 192.0.2.1 is not an address" \
            in r.stderr, (r.returncode, r.stderr)
        st = vfd.status(cfg)
        assert st["config"]["generation"] == 1 and st["identities"][0]["source_address"] == "127.0.0.2", st
        assert d.stop() == 0
