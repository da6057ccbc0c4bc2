"""The doctor: every check a user would want before trusting the service (``videofetchd --check``).

A check is a function of a ``Context`` that returns one ``Check`` (name, ``ok``/``warning``/
``error``, a detail that says what is wrong and, where it can, how to fix it). ``CHECKS`` lists them
in the order they are printed; the daemon runs those marked ``at_start`` when it starts and logs
one line about them. Checks try for real (a file is created in the download directory, the
database is asked for its schema, the control socket is pinged) but change nothing: a missing
directory or database file is only found creatable, never created. A check never raises; what
goes wrong is its detail. Adding one (the yt-dlp stack: ``ytdlp``, ``ytdlp_ejs``, ``js_runtime``,
``ffmpeg``, ``ffprobe``) is a function plus a line in ``CHECKS``.
"""

from __future__ import annotations

import json
import os
import pwd
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import config as config_mod
from ..config import Config
from ..errors import ConfigError
from ..workers.hostprobe import human_size, probe_directory, probe_space, source_problems
from .guard import lock_holder, lock_path, probe, who

OK, WARNING, ERROR = "ok", "warning", "error"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  #: ok, warning or error
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    path: str  #: the config file checked
    cfg: Config | None  #: None when it could not be loaded
    error: str | None  #: why it could not
    found: dict[str, Any] = field(default_factory=dict)  #: the yt-dlp stack, probed once for its checks


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def check_config(ctx: Context) -> Check:
    if ctx.cfg is None:
        return Check("config", ERROR, ctx.error or "invalid")
    return Check("config", OK, f"{ctx.path} is valid")


def check_database(ctx: Context) -> Check:
    assert ctx.cfg is not None
    from ..queue import models
    from ..queue.store import open_store, redact
    url = ctx.cfg.database.url
    backend, params = config_mod.parse_database_url(url)
    if backend == "sqlite" and params["path"] != ":memory:" and not os.path.exists(params["path"]):
        path = params["path"]
        fault = probe_directory(os.path.dirname(os.path.abspath(path)), create=False)
        if fault is not None:
            return Check("database", ERROR, f"{path} does not exist and cannot be created: {fault.detail}")
        return Check("database", OK, f"{path} does not exist yet; it is created at start "
                                     f"(schema version {models.SCHEMA_VERSION})")
    try:
        store = open_store(url, migrate=False)
    except Exception as exc:  # noqa: BLE001 - every failure is the check's answer
        return Check("database", ERROR, str(exc))
    try:
        try:
            rows = store.read("SELECT max(version) FROM videofetchd_schema")
            version = int(rows[0][0] or 0) if rows else 0
        except Exception:  # noqa: BLE001 - no schema table: a fresh database
            store.drop_connection()
            version = 0
        if backend == "sqlite":
            with store.db.atomic(lock_type="IMMEDIATE"):  # can we write? (a lock, no change)
                pass
    except Exception as exc:  # noqa: BLE001
        return Check("database", ERROR, f"{redact(url)}: {str(exc).strip() or type(exc).__name__}")
    finally:
        store.close()
    where = redact(url)
    if version > models.SCHEMA_VERSION:
        return Check("database", ERROR, f"{where}: schema version {version} is newer than this videofetchd "
                                        f"(knows {models.SCHEMA_VERSION}); upgrade videofetchd")
    if version < models.SCHEMA_VERSION:
        now = f"schema version {version}" if version else "no schema yet"
        return Check("database", OK, f"{where}: {now}; brought to version {models.SCHEMA_VERSION} at start")
    return Check("database", OK, f"{where}: reachable, schema version {version}")


def check_download_directory(ctx: Context) -> Check:
    assert ctx.cfg is not None
    path = ctx.cfg.download.directory
    fault = probe_directory(path, create=False)
    if fault is not None:
        return Check("download_directory", ERROR, f"{fault.detail} (checked as {_user()})")
    state = "writable" if os.path.isdir(path) else "does not exist; it can be created"
    return Check("download_directory", OK, f"{path} {state} (checked as {_user()})")


def check_free_space(ctx: Context) -> Check:
    assert ctx.cfg is not None
    d = ctx.cfg.download
    free, fault = probe_space(d.directory, d.min_free_space)
    if free is None:
        return Check("free_space", WARNING, f"cannot tell the free space of {d.directory}")
    if fault is not None:
        return Check("free_space", ERROR, f"{fault.detail}: claiming would pause at once")
    status = WARNING if free < 2 * d.min_free_space else OK
    return Check("free_space", status, f"{human_size(free)} free in {d.directory} "
                                       f"(download.min_free_space {human_size(d.min_free_space)})")


def check_control_socket(ctx: Context) -> Check:
    assert ctx.cfg is not None
    path = ctx.cfg.control.socket
    answer = probe(path)
    if answer is not None:
        return Check("control_socket", ERROR, f"{who(answer)} already answers on {path}: a second daemon "
                                              "on this socket would be refused (expected while the service runs)")
    try:
        holder = lock_holder(path)
    except OSError as exc:
        return Check("control_socket", WARNING, f"cannot open {lock_path(path)}: {exc.strerror} (checked as "
                                                f"{_user()}; the daemon's user can)")
    if holder is not None:
        return Check("control_socket", ERROR, f"a videofetchd ({holder}) holds {lock_path(path)} but does not "
                                              f"answer on {path}: hung, or its socket file was removed; a second "
                                              "daemon would be refused")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fault = probe_directory(directory, create=False)
        if fault is not None:
            return Check("control_socket", WARNING, f"{directory} does not exist and {_user()} cannot create "
                                                    "it (under systemd, RuntimeDirectory= creates it)")
        return Check("control_socket", OK, f"{directory} does not exist yet; it is created at start")
    try:
        with tempfile.NamedTemporaryFile(prefix=".videofetchd-probe-", dir=directory):
            pass
    except OSError as exc:
        return Check("control_socket", ERROR, f"{directory} is not writable: {exc.strerror} "
                                              f"(checked as {_user()})")
    stale = " (a stale socket of an earlier run is there; it is replaced at start)" if os.path.exists(path) else ""
    return Check("control_socket", OK, f"{path} is free{stale}")


def check_identities(ctx: Context) -> Check:
    """Each identity's source_address can be bound here (else every job of it would fail)."""
    assert ctx.cfg is not None
    idents = ctx.cfg.download.identities
    problems = source_problems(ctx.cfg.download)
    if problems:
        return Check("identities", ERROR, "; ".join(problems))
    bound = sum(1 for i in idents if i.source_address)
    return Check("identities", OK, f"{len(idents)} configured, {bound} with a source_address this host can bind"
                 if idents else "none configured (one implicit identity: the default route)")


# -- the yt-dlp stack (workers/stack.py asks yt-dlp itself) -------------------------------------------

def _stack(ctx: Context) -> dict[str, Any]:
    """The stack as the workers would meet it (probed once; the runtime evaluates JavaScript)."""
    assert ctx.cfg is not None
    if not ctx.found:
        from ..workers import stack
        ctx.found.update(stack.probe(ctx.cfg.download.ytdlp_params(None)))
    return ctx.found


def check_ytdlp(ctx: Context) -> Check:
    assert ctx.cfg is not None
    found, limit = _stack(ctx), ctx.cfg.download.ytdlp_max_age_days
    if "ytdlp" not in found:
        return Check("ytdlp", ERROR, str(found.get("error")))
    age = found.get("ytdlp_age_days")
    detail = f"{found['ytdlp']}" + (f", {age} days old" if age is not None else "") + f" ({found['python']})"
    if "error" in found:
        return Check("ytdlp", ERROR, f"{detail}: {found['error']}")
    if limit and age is not None and age > limit:
        return Check("ytdlp", WARNING, f"{detail}: older than download.ytdlp_max_age_days ({limit}); sites "
                                       "change and an old yt-dlp stops working: make upgrade-ytdlp")
    return Check("ytdlp", OK, detail)


def check_ytdlp_ejs(ctx: Context) -> Check:
    found = _stack(ctx)
    if "ejs_expected" not in found:
        return Check("ytdlp_ejs", WARNING, "not checked: yt-dlp is unusable")
    have, want = found.get("ejs") or "", found["ejs_expected"]
    if not want:
        return Check("ytdlp_ejs", WARNING, f"yt-dlp {found['ytdlp']} predates the challenge solver scripts: "
                                           "YouTube fails; make upgrade-ytdlp")
    fix = "install yt-dlp and yt-dlp-ejs together (pip install 'videofetchd[sites]', or make upgrade-ytdlp)"
    if not have:
        return Check("ytdlp_ejs", ERROR, f"yt-dlp-ejs is not installed (yt-dlp {found['ytdlp']} expects {want}): "
                                         f"YouTube's JavaScript challenges cannot be solved; {fix}")
    if have.split(".")[:2] != want.split(".")[:2]:
        return Check("ytdlp_ejs", ERROR, f"{have} installed, yt-dlp {found['ytdlp']} expects {want} and ignores "
                                         f"this one: YouTube's JavaScript challenges cannot be solved; {fix}")
    if have != want:
        return Check("ytdlp_ejs", WARNING, f"{have} installed, yt-dlp {found['ytdlp']} pins {want}; {fix}")
    return Check("ytdlp_ejs", OK, f"{have}, the version yt-dlp {found['ytdlp']} expects")


def check_js_runtime(ctx: Context) -> Check:
    rt = _stack(ctx).get("js_runtime")
    if not isinstance(rt, dict):
        return Check("js_runtime", ERROR, "not checked: yt-dlp is unusable")
    enabled = ", ".join(rt.get("enabled") or []) or "none"
    if "name" not in rt:
        return Check("js_runtime", ERROR, f"{rt.get('error')} (enabled in download.ytdlp.js_runtimes: {enabled}): "
                                          "YouTube fails; install deno next to videofetchd (pip install "
                                          "'videofetchd[sites]') or on PATH")
    what = f"{rt['name']} {rt['version']} ({rt['path']})"
    if not rt.get("evaluated"):
        return Check("js_runtime", ERROR, f"{what} found, but it cannot run yt-dlp's challenge solver: "
                                          f"{rt.get('eval_error')}")
    return Check("js_runtime", OK, f"{what} runs yt-dlp's challenge solver scripts")


def _program(ctx: Context, name: str) -> Check:
    found = _stack(ctx)
    if "js_runtime" not in found:
        return Check(name, WARNING, "not checked: yt-dlp is unusable")
    if not found.get(name):
        return Check(name, WARNING, f"{name} not found (PATH or download.ytdlp.ffmpeg_location): merging separate "
                                    "video and audio (best quality) and audio extraction will fail; apt install ffmpeg")
    return Check(name, OK, f"{found[name]} ({found[name + '_path']})")


def check_ffmpeg(ctx: Context) -> Check:
    return _program(ctx, "ffmpeg")


def check_ffprobe(ctx: Context) -> Check:
    return _program(ctx, "ffprobe")


def check_cache_dir(ctx: Context) -> Check:
    assert ctx.cfg is not None
    path = ctx.cfg.download.cache_dir
    fault = probe_directory(path, create=False)
    if fault is not None:
        return Check("cache_dir", WARNING, f"{fault.detail} (checked as {_user()}): yt-dlp then works uncached, "
                                           "fetching player code again for every job")
    state = "writable" if os.path.isdir(path) else "does not exist; it can be created"
    return Check("cache_dir", OK, f"{path} {state} (checked as {_user()})")


CheckFn = Callable[[Context], Check]
#: (name, function, run by the daemon at start); printed in this order
CHECKS: list[tuple[str, CheckFn, bool]] = [
    ("config", check_config, True),
    ("database", check_database, True),
    ("download_directory", check_download_directory, True),
    ("free_space", check_free_space, True),
    ("control_socket", check_control_socket, True),
    ("identities", check_identities, True),
    ("cache_dir", check_cache_dir, True),
    ("ytdlp", check_ytdlp, False),  # the stack loads yt-dlp: not in the daemon (it logs its own line)
    ("ytdlp_ejs", check_ytdlp_ejs, False),
    ("js_runtime", check_js_runtime, False),
    ("ffmpeg", check_ffmpeg, False),
    ("ffprobe", check_ffprobe, False),
]


def context(path: str | None) -> Context:
    """Load the config the way the daemon would, keeping the error instead of raising it."""
    chosen = str(path or config_mod.default_path())
    try:
        return Context(chosen, config_mod.load(path), None)
    except ConfigError as exc:
        return Context(chosen, None, str(exc))


def run_checks(ctx: Context, *, at_start: bool = False) -> list[Check]:
    results = []
    for name, fn, daemon_runs in CHECKS:
        if at_start and not daemon_runs:
            continue
        if ctx.cfg is None and name != "config":
            results.append(Check(name, WARNING, "not checked: the configuration is invalid"))
            continue
        try:
            results.append(fn(ctx))
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
            results.append(Check(name, ERROR, f"the check itself failed: {exc!r}"))
    return results


def failed(checks: list[Check]) -> bool:
    return any(c.status == ERROR for c in checks)


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.status:<7}  {c.name:<{width}}  {c.detail}" for c in checks)


def to_json(checks: list[Check]) -> str:
    return json.dumps({"checks": [c.to_dict() for c in checks]}, indent=2)


def summary(checks: list[Check]) -> str:
    """One line for the daemon's log: every check's status, with the detail of the others."""
    return ", ".join(f"{c.name} {c.status}" + (f" ({c.detail})" if c.status != OK else "") for c in checks)
