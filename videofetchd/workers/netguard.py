"""Where a download may connect: internal addresses are refused inside the worker child.

A row's URL, a site's redirect, an HLS segment or an extractor's API call may point at
``127.0.0.1``, the LAN or a cloud metadata address. The child therefore checks every connection
at the moment it is made, on the resolved address it is made to, through a Python audit hook on
``socket.connect``: every in-process path (yt-dlp's urllib, requests and websockets handlers,
redirects, fragments, SOCKS proxies) ends in that call with a numeric address, so there is no
second name lookup for a DNS-rebinding answer to slip into, and no yt-dlp internals are patched.

Through a proxy the check sees the connection to the proxy (allowed when it is the configured
one); the proxy makes the onward connection and must do its own filtering. Separate programs
(ffmpeg as a downloader, rtmpdump) make connections this process cannot see: while the filter
is on, starting one with a network URL on its command line is refused (``Downloader`` also asks
yt-dlp for its in-process downloaders, so that is rare). An external downloader the user
configured (``download.ytdlp.external_downloader``) is started once its URL's host, resolved
now, passes; its own connections (redirects included) are its business. Under systemd, the
unit's ``IPAddressDeny=`` lists the same ranges for every process of the service.

Runs in worker children only (the daemon's own database connections are not downloads). No
yt-dlp here, and nothing that could itself make a connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: every range a download is refused by default, with what it is; systemd/videofetchd.service's
#: IPAddressDeny= lists exactly these CIDRs (a unit test compares the two)
DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this-network"),  # 0.0.0.0 reaches the host itself
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # cloud metadata services live at 169.254.169.254
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # 255.255.255.255 included
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local"),  # AWS's metadata service answers at fd00:ec2::254
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_DENIED = tuple((ipaddress.ip_network(cidr), what) for cidr, what in DENIED)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: a public IPv4 address inside
#: an argument that is a URL a downloading program would fetch (ffmpeg -i URL, rtmpdump -r URL)
_URL_ARG = re.compile(r"(?i)(?:[a-z0-9]+\+)?"
                      r"(?:https?|ftps?|sftp|rtmp[a-z]*|rtsps?|rtp|mmsh?|mmst|srt|tcp|udp|tls|wss?)://")
MAX_REFUSALS_KEPT = 20


class AddressRefused(ConnectionRefusedError):
    """A download tried to reach an address outside ``download.allow_addresses``'s reach.

    An OSError, so that a connection loop moves on to a host's next address as it would after
    any failed connect, and yt-dlp reports it like any other network error."""


class ProgramRefused(PermissionError):
    """A separate program was to fetch a URL whose connections this process cannot check."""


@dataclass(frozen=True)
class Policy:
    allowed: tuple[Network, ...] = ()
    #: (address, port) of the configured proxies: the connection to a proxy is the one we can see
    proxies: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    #: program names of the external downloaders the user configured: started after a URL check
    programs: frozenset[str] = field(default_factory=frozenset)

    @property
    def open(self) -> bool:
        """Does the allow list cover every refused range (``0.0.0.0/0`` and ``::/0``)? Then
        nothing is checked, separate programs included."""
        return all(any(a.version == net.version and net.subnet_of(a) for a in self.allowed)  # type: ignore[arg-type]
                   for net, _ in _DENIED)

    def refusal(self, host: str, port: int) -> str | None:
        """Why a connection to ``host`` (a numeric address) ``port`` is refused, or None."""
        try:
            addr: Address = ipaddress.ip_address(host)
        except ValueError:
            return f"refused to connect to {host!r} port {port}: not a numeric address, so it cannot be checked"
        if (str(addr), port) in self.proxies:
            return None
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        if isinstance(addr, ipaddress.IPv6Address) and addr in _NAT64:
            mapped = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        for candidate in (addr, mapped):
            if candidate is None:
                continue
            what = _kind(candidate)
            if what is not None and not any(candidate in net for net in self.allowed
                                            if net.version == candidate.version):
                return (f"refused to connect to {host} port {port}: {what} address, not in "
                        "download.allow_addresses")
        return None

    def url_refusal(self, url: str) -> str | None:
        """Why a program may not be started to fetch ``url``: its host, resolved now, is refused."""
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme.endswith("s") else 80)
            infos = socket.getaddrinfo(parts.hostname or "", port, 0, socket.SOCK_STREAM) if parts.hostname else []
        except (OSError, ValueError):
            return None  # the program cannot resolve it either, and says so itself
        for *_, sa in infos:
            reason = self.refusal(str(sa[0]).split("%")[0], port)
            if reason is not None:
                return reason
        return None


def _kind(addr: Address) -> str | None:
    for net, what in _DENIED:
        if net.version == addr.version and addr in net:
            return what
    return None


def policy_for(allow: Iterable[str], proxy: str | None = None, programs: Iterable[str] = ()) -> Policy:
    """The policy of one config generation: ``download.allow_addresses`` plus the proxies yt-dlp
    will use (``proxy``, else the environment's ``*_proxy``), resolved now, in the child, and the
    external downloaders the user configured (``programs``: names or paths).

    ``no_proxy`` names hosts reached *directly*: they are not proxies, and their connections are
    checked like any other (``getproxies()`` hands them over under the key ``"no"``, which once
    went into the proxy list and let ``no_proxy=10.0.0.5`` open 10.0.0.5:80). An empty ``proxy``
    is yt-dlp's "no proxy at all": the environment's proxies are not used then either."""
    allowed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow)
    if proxy is not None:
        urls = [proxy] if proxy else []
    else:
        urls = [url for scheme, url in urllib.request.getproxies().items() if scheme != "no"]
    endpoints: set[tuple[str, int]] = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        try:
            port = parts.port or (1080 if parts.scheme.startswith("socks") else 80)
            infos = socket.getaddrinfo(parts.hostname or "", port, 0, socket.SOCK_STREAM) if parts.hostname else []
        except (OSError, ValueError):
            continue  # yt-dlp will fail to reach it too, with its own message
        endpoints.update((str(ipaddress.ip_address(str(sa[0]).split("%")[0])), port) for *_, sa in infos)
    names = {p.rsplit("/", 1)[-1] for p in programs if p and p.lower() != "native"}
    if "httpie" in names:
        names.add("http")  # yt-dlp's name for it, and the program's
    return Policy(allowed=allowed, proxies=frozenset(endpoints), programs=frozenset(names))


_policy: Policy | None = None  #: the policy in force: set only while a job runs
_open = False
_installed = False
refusals: list[str] = []  #: what was refused since the last take_refusals(), oldest first


@contextlib.contextmanager
def enforcing(policy: Policy) -> Iterator[None]:
    """Check every connection (and program start) of this process against ``policy`` inside the
    block: one job. The audit hook is added on first use and stays (Python cannot remove one),
    but outside a block it lets everything through, so a process that only builds a Downloader
    now and then (a test run) is not changed by it."""
    global _policy, _open, _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _policy, _open = policy, policy.open
    try:
        yield
    finally:
        _policy = None


def take_refusals() -> list[str]:
    """The refusals since the last call (one job's), and forget them."""
    taken = refusals[:]
    refusals.clear()
    return taken


def _refuse(message: str) -> None:
    if len(refusals) < MAX_REFUSALS_KEPT:
        refusals.append(message)


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # called for every audited event of the process (imports, opens, ...): leave at once for the rest
    if event == "socket.connect":
        if _policy is None or _open:
            return
        sock, address = args
        if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
            return  # AF_UNIX: the executor's pipes, never a download
        host, port = str(address[0]), int(address[1])
        reason = _policy.refusal(host, port)
        if reason is not None:
            _refuse(reason)
            raise AddressRefused(reason)
    elif event == "subprocess.Popen":
        if _policy is None or _open:
            return
        argv = args[1]
        words: Sequence[Any] = [argv] if isinstance(argv, (str, bytes)) else list(argv or ())
        for word in words:
            text = word.decode(errors="replace") if isinstance(word, bytes) else str(word)
            if _URL_ARG.match(text):
                first = args[0] or words[0]
                first = first.decode(errors="replace") if isinstance(first, bytes) else str(first)
                program = first.rsplit("/", 1)[-1]
                if program in _policy.programs:  # configured by the user: its first address at least
                    reason = _policy.url_refusal(text)
                    if reason is None:
                        continue
                else:
                    reason = (f"refused to start {program} to fetch {text[:200]}: a separate program's "
                              "connections cannot be checked against download.allow_addresses")
                _refuse(reason)
                raise ProgramRefused(reason)
