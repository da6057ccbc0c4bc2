"""The connection policy of worker children (workers/netguard.py) and its mirror in the unit.

The policy is pure and tested directly; the audit hook is exercised for real (a real connect
through urllib, a real subprocess start) inside ``enforcing`` blocks, outside of which the hook,
which stays installed in this test process, lets everything through.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mediaserver import MediaServer
from videofetchd.workers import netguard
from videofetchd.workers.netguard import DENIED, AddressRefused, Policy, ProgramRefused, enforcing, policy_for

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "videofetchd.service"


@pytest.mark.parametrize("host, what", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("0.0.0.0", "this-network"),
    ("10.1.2.3", "private"), ("172.31.0.1", "private"), ("192.168.1.1", "private"),
    ("100.64.0.1", "shared (carrier-grade NAT)"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("fd00:ec2::254", "unique-local"), ("224.0.0.251", "multicast"), ("255.255.255.255", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
])
def test_internal_addresses_are_refused_by_default(host: str, what: str) -> None:
    reason = Policy().refusal(host, 80)
    assert reason == f"refused to connect to {host} port 80: {what} address, not in download.allow_addresses"


@pytest.mark.parametrize("host", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34", "64:ff9b::5db8:d822"])
def test_public_addresses_pass(host: str) -> None:
    assert Policy().refusal(host, 443) is None


def test_the_allow_list_opens_exactly_its_ranges() -> None:
    policy = policy_for(["192.168.1.0/24", "127.0.0.2", "fd00::/8"])
    assert policy.refusal("192.168.1.77", 80) is None and policy.refusal("127.0.0.2", 80) is None
    assert policy.refusal("fd12::1", 80) is None
    assert policy.refusal("192.168.2.1", 80) and policy.refusal("127.0.0.1", 80)
    assert not policy.open and policy_for(["0.0.0.0/0", "::/0"]).open and not policy_for(["0.0.0.0/0"]).open


def test_a_host_name_at_connect_time_is_refused() -> None:
    assert "not a numeric address" in (Policy().refusal("localhost", 80) or "")


def test_the_configured_proxy_is_reachable_on_its_port_only() -> None:
    policy = policy_for([], "socks5://127.0.0.1:1080")
    assert policy.refusal("127.0.0.1", 1080) is None
    assert policy.refusal("127.0.0.1", 8080) is not None


def test_the_unit_denies_exactly_the_ranges_the_workers_refuse() -> None:
    """IPAddressDeny= in the shipped unit mirrors netguard.DENIED: no range missing, none extra."""
    unit = UNIT.read_text()
    denied = [net for line in re.findall(r"^IPAddressDeny=(.*)$", unit, re.M) for net in line.split()]
    assert sorted(map(ipaddress.ip_network, denied), key=str) == \
        sorted((ipaddress.ip_network(cidr) for cidr, _ in DENIED), key=str)
    assert re.findall(r"^IPAddressAllow=(.*)$", unit, re.M) == ["127.0.0.53"]  # the resolved stub only
    assert re.search(r"^LimitFSIZE=\S+", unit, re.M)


def test_connections_are_checked_at_connect_time_inside_a_job_only() -> None:
    with MediaServer() as srv:
        with enforcing(Policy()):
            with pytest.raises(urllib.error.URLError) as info:
                urllib.request.urlopen(srv.url("x"), timeout=5)
            assert isinstance(info.value.reason, AddressRefused)
            assert netguard.take_refusals() == [
                f"refused to connect to 127.0.0.1 port {srv.port}: loopback address, not in download.allow_addresses"]
        with enforcing(policy_for(["127.0.0.0/8"])):
            assert urllib.request.urlopen(srv.url("y"), timeout=5).status == 200
        assert urllib.request.urlopen(srv.url("z"), timeout=5).status == 200  # outside a job: not checked
    assert [r.video_id for r in srv.requests()] == ["y", "z"]


def test_a_program_that_would_fetch_a_url_itself_is_not_started() -> None:
    with enforcing(Policy()):
        with pytest.raises(ProgramRefused, match="refused to start ffmpeg to fetch http://10.0.0.1/a.m3u8"):
            subprocess.run(["ffmpeg", "-i", "http://10.0.0.1/a.m3u8", "out.mp4"], check=False)
        # local work is fine: yt-dlp's post-processors name their inputs file:..., metadata is key=value
        r = subprocess.run(["true", "-i", "file:/tmp/x.mp4", "-metadata", "purl=https://example.org/v"], check=False)
        assert r.returncode == 0
    netguard.take_refusals()
    with enforcing(policy_for(["0.0.0.0/0", "::/0"])):  # everything allowed: nothing to refuse
        assert subprocess.run(["true", "http://10.0.0.1/"], check=False).returncode == 0


def test_an_external_downloader_the_user_chose_is_started_after_a_check_of_its_url() -> None:
    policy = policy_for(["127.0.0.0/8"], programs=["curl", "native"])
    assert policy.programs == frozenset({"curl"})
    with enforcing(policy):
        # its URL's host is allowed: started (it makes its own connections from there on)
        assert subprocess.run(["curl", "--version", "http://127.0.0.1:9/x"], capture_output=True).returncode == 0
        with pytest.raises(ProgramRefused, match="refused to connect to 10.0.0.1 port 80: private address"):
            subprocess.run(["curl", "http://10.0.0.1/x"], check=False)
        with pytest.raises(ProgramRefused, match="refused to start ffmpeg"):  # not the one configured
            subprocess.run(["ffmpeg", "-i", "http://127.0.0.1:9/x"], check=False)
    netguard.take_refusals()


def test_no_proxy_hosts_are_not_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """``no_proxy`` lists hosts reached directly: their connections are checked like any other."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1:8080")
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    policy = policy_for([])
    assert policy.proxies == frozenset({("127.0.0.1", 3128)})
    assert policy.refusal("127.0.0.1", 8080) and policy.refusal("10.0.0.5", 80)
    assert policy_for([], "").proxies == frozenset()  # yt-dlp's proxy: "" is no proxy at all
