"""Configuration: a tree of frozen dataclasses loaded from YAML by one generic loader.

Each field's default plus its ``metadata`` (unit, range) is the single declaration of a setting.
The loader rejects unknown keys (with a "did you mean"), wrong types and out-of-range values,
naming the file and the key path. Frozen dataclasses pickle cleanly into worker processes and
cannot be changed under a running job, which is what makes SIGHUP reload safe.
This module must not import the database, yt-dlp or anything that does I/O beyond reading the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .configload import Loader
from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/videofetchd/videofetchd.yaml"
CONFIG_ENV = "VIDEOFETCHD_CONFIG"
#: the daemon and fetch set it (the unit's UMask= too): what they write is never world-readable
PRIVATE_UMASK = 0o027

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _duration(default: float, *, minimum: float = 0.0, **meta: Any) -> Any:
    return field(default=default, metadata={"kind": "duration", "min": minimum, **meta})


def _int(default: int, *, minimum: int | None = None, maximum: int | None = None) -> Any:
    return field(default=default, metadata={"min": minimum, "max": maximum})


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:////var/lib/videofetchd/videofetchd.db"
    poll_interval: float = _duration(5.0, minimum=0.05)  # seconds between queue polls
    lease_duration: float = _duration(90.0, minimum=2.0)  # seconds a claim is valid without renewal
    node_name: str = ""  # this host's name in status and lease_owner ("<node_name>:<pid>@<scope>"); empty = hostname


@dataclass(frozen=True)
class Identity:
    """One egress identity: a local address, a proxy or an account, with a budget per site.

    Budgets live in the database under ``name``, so every daemon that names an identity the
    same shares its budget (give it the same limits everywhere).
    """

    name: str = ""  # letters, digits, - _ . ; the key of its budgets in the database
    source_address: str = ""  # local IP to bind to (yt-dlp's source_address); empty = the system's choice
    ytdlp: dict[str, Any] = field(default_factory=dict)  # YoutubeDL params over download.ytdlp (proxy, cookiefile)
    max_per_hour: int = _int(0, minimum=0)  # job starts per site per rolling hour, spread evenly; 0 = no budget
    burst: int = _int(1, minimum=1)  # starts allowed back to back (the token bucket's size)
    max_concurrent: int = _int(0, minimum=0)  # jobs at once over all sites; 0 = only download.workers limits


@dataclass(frozen=True)
class DownloadConfig:
    directory: str = "/var/lib/videofetchd/videos"
    url_template: str = "https://www.youtube.com/watch?v={id}"
    output_template: str = "%(title)s [%(id)s].%(ext)s"
    workers: int = _int(4, minimum=1, maximum=256)
    stall_timeout: float = _duration(120.0, minimum=0.5)  # no progress this long -> kill, retry
    postprocess_timeout: float = _duration(1800.0, minimum=0.5)  # same, while ffmpeg post-processes
    job_timeout: float = _duration(6 * 3600.0, minimum=1.0)  # hard ceiling for one job
    kill_grace: float = _duration(5.0)  # SIGTERM -> SIGKILL delay for a stopped child
    drain_timeout: float = _duration(60.0)  # on SIGTERM, how long running jobs may finish
    max_attempts: int = _int(5, minimum=1)
    retry_backoff: float = _duration(30.0)  # first retry delay; doubles per attempt, with jitter
    retry_backoff_max: float = _duration(6 * 3600.0)  # cap of the retry delay
    throttle_cooldown: float = _duration(900.0)  # first site-wide pause after HTTP 429 / bot check
    socket_timeout: float = _duration(20.0, minimum=0.5)  # yt-dlp socket timeout
    recycle_after_jobs: int = _int(500, minimum=1)  # a child is replaced after this many jobs
    recycle_rss: int = field(default=512 * 1024**2, metadata={"kind": "size", "min": 16 * 1024**2})
    crash_limit: int = _int(5, minimum=1)  # child deaths within crash_window that pause claiming
    crash_window: float = _duration(60.0, minimum=1.0)
    #: bytes; below this much free space in directory claiming pauses (0: only a full disk pauses)
    min_free_space: int = field(default=1024**3, metadata={"kind": "size", "min": 0})
    #: bytes one download may write, counted as they arrive (declared length or not); 0 = no limit
    max_filesize: int = field(default=32 * 1024**3, metadata={"kind": "size", "min": 0})
    #: CIDR ranges of otherwise refused (loopback, private, link-local, ...) addresses downloads may reach
    allow_addresses: tuple[str, ...] = ()
    expand_playlists: bool = False  # a playlist URL queues its entries as rows (else it fails at once)
    ytdlp: dict[str, Any] = field(default_factory=dict)  # extra YoutubeDL params, passed through
    #: yt-dlp's cache (player code, challenge solver results), shared by every child; empty = chosen
    #: at load: $CACHE_DIRECTORY (systemd's CacheDirectory=), else "cache" next to a SQLite database,
    #: else ~/.cache/videofetchd (see resolve_cache_dir)
    cache_dir: str = ""
    ytdlp_max_age_days: int = _int(90, minimum=0)  # the doctor warns about an older yt-dlp; 0 = never
    identities: tuple[Identity, ...] = ()  # egress identities with budgets; none = one implicit identity

    def identity(self, name: str | None) -> Identity | None:
        return next((i for i in self.identities if i.name == name), None) if name else None

    def ytdlp_params(self, identity: str | None) -> dict[str, Any]:
        """``ytdlp`` with the named identity's overrides and source address on top."""
        ident = self.identity(identity)
        if ident is None:
            return dict(self.ytdlp)
        params = {**self.ytdlp, **ident.ytdlp}
        if ident.source_address:
            params["source_address"] = ident.source_address
        return params


@dataclass(frozen=True)
class ScanConfig:
    directories: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ("mp4", "mkv", "webm", "mov", "m4v", "avi", "flv", "mp3", "m4a",
                                   "opus", "ogg", "wav", "flac", "ts", "3gp", "wmv", "mpg", "mpeg")
    id_pattern: str = ""  # optional regex with a group named "id", tried after .info.json and [ID]
    requeue_missing: bool = False  # re-queue rows whose file disappeared
    claim_hold: float = _duration(600.0)  # a running scan holds new downloads back at most this long


@dataclass(frozen=True)
class ControlConfig:
    socket: str = "/run/videofetchd/control.sock"
    mode: str = field(default="0660", metadata={"kind": "mode"})


@dataclass(frozen=True)
class MetricsConfig:
    #: "host:port" of the Prometheus endpoint ("[::1]:9464" for IPv6); empty = off. The built-in
    #: default is off so that a daemon without a config (or a test) never takes a port; the
    #: shipped etc/videofetchd.yaml turns it on at 127.0.0.1:9464.
    listen: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    path: str = field(default="", metadata={"internal": True})  # the file it came from

    def __post_init__(self) -> None:
        # an empty download.cache_dir is decided here, once, where the database URL is known
        if not self.download.cache_dir:
            object.__setattr__(self, "download", dataclasses.replace(self.download, cache_dir=resolve_cache_dir(self)))

    def node_name(self) -> str:
        return self.database.node_name or socket.gethostname()


#: keys a reload cannot apply; they are reported as needing a restart
RESTART_KEYS = ("database.url", "database.node_name", "control.socket", "control.mode", "metrics.listen")


def _validate(cfg: Config, loader: Loader) -> None:
    """Cross-field and format checks that a type alone cannot express."""
    if cfg.logging.level.lower() not in _LOG_LEVELS:
        raise loader.error("logging.level", f"expected one of {', '.join(_LOG_LEVELS)}, "
                           f"got {cfg.logging.level!r}")
    if not re.fullmatch(r"0?[0-7]{3}", cfg.control.mode):
        raise loader.error("control.mode", f"expected an octal mode such as \"0660\", got {cfg.control.mode!r}")
    try:
        parse_database_url(cfg.database.url)
    except ValueError as exc:
        raise loader.error("database.url", str(exc)) from None
    try:
        sample = cfg.download.url_template.format(id="abc")
    except (KeyError, IndexError, ValueError):
        raise loader.error("download.url_template", "may only use the {id} placeholder") from None
    if "{id}" not in cfg.download.url_template or not sample.startswith(("http://", "https://")):
        raise loader.error("download.url_template", "expected an http(s) URL containing {id}")
    if os.path.isabs(cfg.download.output_template) or ".." in Path(cfg.download.output_template).parts:
        raise loader.error("download.output_template", "must be relative to download.directory")
    if cfg.download.postprocess_timeout < cfg.download.stall_timeout:
        raise loader.error("download.postprocess_timeout", "must be >= download.stall_timeout")
    _validate_identities(cfg.download.identities, loader)
    if cfg.metrics.listen:
        try:
            parse_listen(cfg.metrics.listen)
        except ValueError as exc:
            raise loader.error("metrics.listen", str(exc)) from None
    for i, cidr in enumerate(cfg.download.allow_addresses):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise loader.error(f"download.allow_addresses[{i}]",
                               f"expected an address or CIDR range such as 192.168.1.0/24, got {cidr!r}") from None
    if cfg.download.cache_dir and not os.path.isabs(cfg.download.cache_dir):
        raise loader.error("download.cache_dir", f"expected an absolute path, got {cfg.download.cache_dir!r}")
    if "max_filesize" in cfg.download.ytdlp:
        # yt-dlp's option checks only a declared length, and its refusal looks like success
        raise loader.error("download.ytdlp.max_filesize", "use download.max_filesize, which counts the bytes "
                           "actually received")
    if cfg.scan.id_pattern:
        try:
            rx = re.compile(cfg.scan.id_pattern)
        except re.error as exc:
            raise loader.error("scan.id_pattern", f"invalid regular expression: {exc}") from None
        if "id" not in rx.groupindex:
            raise loader.error("scan.id_pattern", "needs a named group (?P<id>...)")


_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _validate_identities(identities: tuple[Identity, ...], loader: Loader) -> None:
    """Names are keys in the database and labels in status: required, plain and unique."""
    seen: set[str] = set()
    for i, ident in enumerate(identities):
        path = f"download.identities[{i}]"
        if not _IDENTITY_NAME.fullmatch(ident.name):
            problem = "is required" if not ident.name else f"expected letters, digits, - _ . (at most 64), " \
                f"got {ident.name!r}"
            raise loader.error(f"{path}.name", problem)
        if ident.name in seen:
            raise loader.error(f"{path}.name", f"duplicate identity name {ident.name!r}")
        seen.add(ident.name)
        if ident.source_address:
            try:
                ipaddress.ip_address(ident.source_address)
            except ValueError:
                raise loader.error(f"{path}.source_address",
                                   f"expected a local IP address, got {ident.source_address!r}") from None
        if "source_address" in ident.ytdlp:
            raise loader.error(f"{path}.ytdlp.source_address", f"set {path}.source_address instead")
        if "max_filesize" in ident.ytdlp:
            raise loader.error(f"{path}.ytdlp.max_filesize", "use download.max_filesize, which counts the bytes "
                               "actually received")


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of a ``host:port`` listen address (``[::1]:9464`` for IPv6); ValueError if malformed."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text.strip())
    if not m:
        raise ValueError(f"expected host:port such as 127.0.0.1:9464 (or [::1]:9464), got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, int(port)


def parse_database_url(url: str) -> tuple[str, dict[str, Any]]:
    """("sqlite", {"path"}) or ("postgres", {"dbname", "host", "port", "user", "password"});
    ValueError with a message fit for the user when the URL cannot work."""
    if url.startswith("sqlite:///"):
        path = urllib.parse.unquote(url[len("sqlite:///"):])
        if not path:
            raise ValueError("sqlite URL has no path: use sqlite:////absolute/path.db")
        return "sqlite", {"path": path}
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"expected sqlite:///PATH or postgresql://user@host:port/db, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    unq = urllib.parse.unquote
    return "postgres", {"dbname": unq(parts.path.lstrip("/")) or "postgres", "host": parts.hostname or None,
                        "port": port, "user": unq(parts.username) if parts.username else None,
                        "password": unq(parts.password) if parts.password else None}


def resolve_cache_dir(cfg: Config) -> str:
    """Where yt-dlp's cache goes when ``download.cache_dir`` is empty: the unit's
    ``CacheDirectory=`` ($CACHE_DIRECTORY), else ``cache`` next to a SQLite database (``make run``
    puts it under its run directory that way), else ~/.cache/videofetchd (PostgreSQL, no unit)."""
    from_systemd = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        return from_systemd
    try:
        backend, params = parse_database_url(cfg.database.url)
    except ValueError:  # refused by the validation that follows
        backend, params = "", {}
    if backend == "sqlite" and params["path"] != ":memory:":
        return os.path.join(os.path.dirname(os.path.abspath(params["path"])), "cache")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "videofetchd")


def from_dict(data: Any, source: str = "<config>") -> Config:
    loader = Loader(source)
    cfg: Config = loader.build(Config, data, "")
    cfg = dataclasses.replace(cfg, path=source)
    _validate(cfg, loader)
    return cfg


def default_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def missing_config(explicit: bool, path: str) -> str:
    """Why no config was found, and how to name one: a command that silently used the built-in
    defaults would queue into a database no daemon reads."""
    if explicit:
        return f"{path}: no such file"
    if os.environ.get(CONFIG_ENV):
        return f"{path} (from ${CONFIG_ENV}): no such file"
    return (f"no configuration: {path} does not exist and neither --config PATH nor ${CONFIG_ENV} names "
            f"another file; give one of them (for `make run`: export {CONFIG_ENV}=$PWD/.run/videofetchd.yaml)")


def load(path: str | os.PathLike[str] | None = None, *, missing_ok: bool = False) -> Config:
    """Read and validate a config file (``None``: $VIDEOFETCHD_CONFIG or the default path);
    ``missing_ok`` gives the defaults when it does not exist (the ``Fetcher`` API only)."""
    explicit = path is not None
    path = str(path or default_path())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return dataclasses.replace(Config(), path=path)
        raise ConfigError(missing_config(explicit, path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error(path, exc, text)) from None
    return from_dict(data, path)


def yaml_error(path: str, exc: yaml.YAMLError, text: str = "") -> str:
    """One line: ``config PATH: line N, column M: PROBLEM (YAML syntax ...)``. PyYAML's own text
    is several lines with a quoted excerpt and a caret, which a journal shows as a mess."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses: only an offset is known
        pos = exc.position
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"config {path}: line {line}, column {column}: character #x{char:04x} is not allowed (YAML syntax error)"
    if mark is None or not problem:
        return f"config {path}: YAML syntax error: " + " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
        return (f"config {path}: {where}: {problem} (YAML syntax error {context} that starts at "
                f"line {cmark.line + 1}, column {cmark.column + 1})")
    return f"config {path}: {where}: {problem} (YAML syntax error{' ' + context if context else ''})"


def keep_restart_keys(old: Config, new: Config) -> Config:
    """``new`` with the old values of the keys a reload cannot apply (the others take effect)."""
    sections: dict[str, Any] = {}
    for dotted in RESTART_KEYS:
        section, key = dotted.split(".")
        current = sections.get(section, getattr(new, section))
        sections[section] = dataclasses.replace(current, **{key: getattr(getattr(old, section), key)})
    return dataclasses.replace(new, **sections)


def restart_required(old: Config, new: Config) -> list[str]:
    """Keys that changed but cannot be applied by a reload."""
    changed = []
    for dotted in RESTART_KEYS:
        section, key = dotted.split(".")
        if getattr(getattr(old, section), key) != getattr(getattr(new, section), key):
            changed.append(dotted)
    return changed
