"""The forkserver's start: its multiprocessing context, its temporary directory, and what it is
told to prebuild.

A module of its own, importing nothing heavy, because the forkserver's preload (yt-dlp, ~0.4 s)
is on the critical path of a one-shot ``fetch``: ``python -m videofetchd`` starts it before it
imports the rest (see ``__main__``), and every millisecond before that start is a millisecond
later for the first file. ``slots`` and ``child`` import from here, never the other way round.
"""

from __future__ import annotations

import atexit
import base64
import multiprocessing
import multiprocessing.context
import os
import pickle
import shutil
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DownloadConfig

PREBUILD_ENV = "VIDEOFETCHD_PREBUILD"  #: the forkserver's prebuild config (pickled, base64), or:
PREBUILD_FILE = "file:"  #: + a config file's path ("": the default one): the forkserver reads it itself
TEMPDIR_PREFIX = "vfdmp-"  #: + "<pid>-": our multiprocessing temporary directory (short: it holds a socket path)
_ctx: multiprocessing.context.BaseContext | None = None


def mp_context() -> multiprocessing.context.BaseContext:
    """The forkserver context, with yt-dlp preloaded into the server (once per process)."""
    global _ctx
    if _ctx is None:
        _own_tempdir()
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["videofetchd.workers.preload"])  # yt_dlp loaded and compiled once
        _ctx = ctx
    return _ctx


def prebuildable(cfg: DownloadConfig) -> bool:
    """Whether the forkserver may build the first YoutubeDL: not when it would read a cookie file
    or a browser's cookies (a hung mount would hang the forkserver, where no warm-up timer sees it,
    and each child must load cookies fresh)."""
    keys = ("cookiefile", "cookiesfrombrowser")
    params = [cfg.ytdlp_params(i.name) for i in cfg.identities] or [cfg.ytdlp_params(None)]
    return not any(p.get(k) for p in params for k in keys)


def prebuild_env(cfg: DownloadConfig | None) -> str | None:
    """The value of PREBUILD_ENV that tells a new forkserver to prebuild for ``cfg`` (None: not)."""
    if cfg is None or not prebuildable(cfg):
        return None
    return base64.b64encode(pickle.dumps(cfg)).decode("ascii")


def start_forkserver(cfg: DownloadConfig | None = None) -> None:
    """Start the forkserver now, so that its preload (yt-dlp, ~0.5 s of CPU) runs while this
    process is still importing and opening the database, not after; given the config, the
    forkserver also builds the first generation's YoutubeDL for every child (``preload``).
    Does nothing when it is already running."""
    _start(prebuild_env(cfg))


def start_forkserver_reading(config_path: str | None) -> None:
    """``start_forkserver`` before this process has read its config (``python -m videofetchd``):
    the forkserver reads the file itself, so that its start need not wait for our import of the
    config code and YAML (it starts ~12 ms sooner, on the path of a one-shot run's first file). When our
    own reading of the file differs (it failed; a command-line override), the children build
    their own YoutubeDL: slower, never wrong (``child._adopt_prebuilt``)."""
    _start(PREBUILD_FILE + (os.path.abspath(config_path) if config_path else ""))


def _start(value: str | None) -> None:
    mp_context()
    from multiprocessing import forkserver
    if value is not None:
        os.environ[PREBUILD_ENV] = value
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(PREBUILD_ENV, None)  # for the forkserver only


def _own_tempdir() -> None:
    """Give multiprocessing a temporary directory named after this process, before it makes its
    own anonymous ``pymp-*`` one (the forkserver's socket lives there): a process killed with
    SIGKILL leaves it behind, and only a name with the pid lets a later start tell a dead
    process's leftovers from a live one's. Uses the process config multiprocessing reads for
    exactly this (``get_temp_dir``); if that ever changes, we are back to ``pymp-*``, no worse."""
    from multiprocessing import process
    config = getattr(process.current_process(), "_config", None)
    if not isinstance(config, dict) or config.get("tempdir"):
        return  # this process used multiprocessing before us (the Fetcher API in a bigger program)
    path = tempfile.mkdtemp(prefix=f"{TEMPDIR_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    config["tempdir"] = path
