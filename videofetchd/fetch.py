"""One-shot mode: drain the queue with N workers and exit (``videofetchctl fetch``, ``Fetcher``).

The same supervisor as the daemon, told to stop once no row is queued. On a terminal it redraws a
live per-worker view that fits the terminal, with log records printed above it; otherwise progress
goes to the log as plain lines. Asked to (``--metrics``), it serves the daemon's Prometheus metrics
while it runs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import ast
import logging
import multiprocessing.process
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import config as config_mod
from .config import Config
from .queue.store import open_store
from .errors import HostFault
from .text import printable
from .workers.health import WORKERS_CANNOT_START
from .workers.hostprobe import check_sources
from .workers.slots import remove_stale_tempdirs, start_forkserver
from .workers.supervisor import Supervisor

if TYPE_CHECKING:
    from .control.display import LiveBlock

log = logging.getLogger(__name__)
REDRAW_S = 0.5


@dataclass(frozen=True)
class FetchSummary:
    completed: int
    failed: int
    retried: int
    queue: dict[str, int]
    failures: list[tuple[str, str]] = field(default_factory=list)
    scanned: int = 0
    interrupted: bool = False  #: stopped by a signal before the queue was drained

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.interrupted

    def text(self) -> str:
        lines = [f"fetched {self.completed}, failed {self.failed}, retried {self.retried}; queue now: "
                 + ", ".join(f"{k} {v}" for k, v in self.queue.items())]
        if self.scanned:
            lines.insert(0, f"scan marked {self.scanned} existing files done")
        if self.interrupted:
            lines.append("interrupted before the queue was drained; running rows went back to the queue")
        reasons = collections.Counter(reason for _, reason in self.failures)
        for reason, n in reasons.most_common(10):  # errors and IDs come from outside: escape them
            examples = [printable(v) for v, r in self.failures if r == reason][:3]
            lines.append(f"  {n} failed: {printable(reason)}  (e.g. {', '.join(examples)})")
        return "\n".join(lines)


MAX_WORKERS = 256  # the same bound as download.workers


def _check_workers(num_workers: object) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or not 1 <= num_workers <= MAX_WORKERS:
        raise ValueError(f"num_workers must be an integer between 1 and {MAX_WORKERS}, got {num_workers!r}")
    return num_workers


async def run_fetch(cfg: Config, *, num_workers: int | None = None, existing_videos_dir: str | None = None,
                    live: TextIO | None = None, metrics_listen: str | None = None) -> FetchSummary:
    """Scan ``existing_videos_dir`` if given, then download every queued row (serving metrics on
    ``metrics_listen`` while it runs, if given).

    Sets the process umask to 0027 (as the daemon does), so the database and the videos it
    creates are not world-readable; the caller's umask is restored at the end."""
    old_umask = os.umask(config_mod.PRIVATE_UMASK)
    try:
        return await _run_fetch(cfg, num_workers=num_workers, existing_videos_dir=existing_videos_dir, live=live,
                                metrics_listen=metrics_listen)
    finally:
        os.umask(old_umask)


async def _run_fetch(cfg: Config, *, num_workers: int | None, existing_videos_dir: str | None,
                     live: TextIO | None, metrics_listen: str | None) -> FetchSummary:
    if num_workers is not None:
        _check_workers(num_workers)
        cfg = dataclasses.replace(cfg, download=dataclasses.replace(cfg.download, workers=num_workers))
    _refuse_in_a_worker()
    check_sources(cfg)  # an identity's source_address this host lacks: refused now, not a run that never drains
    start_forkserver(cfg.download)  # (already running when called by videofetchctl fetch)
    for path in remove_stale_tempdirs():
        log.info("removed %s, left behind by a process that was killed", path)
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, open_store, cfg.database.url)
    scanned = 0
    if existing_videos_dir is not None:
        from .library.scan import scan_directories
        report = await loop.run_in_executor(None, lambda: scan_directories(
            store, [existing_videos_dir], cfg.scan, url_template=cfg.download.url_template))
        scanned = report.marked_done
        log.info("scan of %s: %s", existing_videos_dir, report.summary())
    sup = Supervisor(cfg, store, node=cfg.node_name(), one_shot=True)
    metrics: Any = None
    if metrics_listen:
        from .control.metrics import serve
        try:
            metrics = serve(metrics_listen, sup)
        except BaseException:
            store.close()
            raise
    handlers = {signal.SIGTERM: False, signal.SIGINT: True}
    for sig, quick in handlers.items():
        loop.add_signal_handler(sig, functools.partial(sup.request_stop, quick=quick))
    task = asyncio.create_task(sup.run())
    block = None
    if live is not None:  # the live view's modules only for a terminal: a plain run starts sooner
        from .control.display import LiveBlock
        block = LiveBlock(live)
    drawer = asyncio.create_task(_draw(sup, cfg, block)) if block is not None else None
    try:
        with _logs_above(block):
            await task
    except HostFault as exc:
        script = unguarded_main_script() if WORKERS_CANNOT_START in exc.conditions else None
        if script is None:
            raise
        raise HostFault(f"worker processes cannot start: {script} calls videofetchd when it is imported, and "
                        "multiprocessing imports the main script again in every worker process. Put the "
                        f"call under a main guard:\n\n    if __name__ == \"__main__\":\n"
                        "        asyncio.run(Fetcher().fetch(...))\n") from None
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        if drawer is not None:
            drawer.cancel()
            await asyncio.gather(drawer, return_exceptions=True)
        if block is not None:
            block.draw(_view(sup, cfg, block)[:1])  # the final totals; the workers are gone
        if metrics is not None:
            await loop.run_in_executor(None, metrics.stop)
        store.close()
    c = sup.counters
    return FetchSummary(completed=c.completed, failed=c.failed, retried=c.retried,
                        queue=dict(sup.queue_counts), failures=list(sup.recorder.failures), scanned=scanned,
                        interrupted=sup.stopping)


def _view(sup: Supervisor, cfg: Config, block: LiveBlock) -> list[str]:
    """The live view: a totals line, then one line per worker, fitting the terminal's width."""
    from .control.display import format_workers, human_bytes, human_duration, terminal_size
    from .control.server import ConfigInfo, snapshot
    st = snapshot(sup, ConfigInfo(path=cfg.path))
    q, c = st["queue"], st["counters"]
    head = (f"fetch: {c['completed']} done, {c['failed']} failed, {c['retried']} retried; queued "
            f"{q.get('queued', 0)}; {human_bytes(c['downloaded_bytes'])}; up {human_duration(st['uptime_s'])}")
    return [head, *format_workers(st["workers"], terminal_size(block.out)[0] - 1)]


async def _draw(sup: Supervisor, cfg: Config, block: LiveBlock) -> None:
    """Redraw the live view in place until cancelled."""
    while True:
        block.draw(_view(sup, cfg, block))
        await asyncio.sleep(REDRAW_S)


def _refuse_in_a_worker() -> None:
    """Exit at once, quietly, when called while multiprocessing bootstraps a worker process: that
    is a script without a main guard being imported again in the worker (the parent reports it,
    once). Without this every worker would open the database and start a fetch of its own."""
    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise SystemExit(1)


def unguarded_main_script() -> str | None:
    """The main script, when it runs code at import time without ``if __name__ == "__main__":``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if not path or (spec is not None and spec.name.endswith("__main__")):  # python -m package: never re-run
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            return None
    return str(path)


class _BlockHandler(logging.Handler):
    def __init__(self, block: LiveBlock) -> None:
        super().__init__()
        self.block = block

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.block.message(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextmanager
def _logs_above(block: LiveBlock | None) -> Iterator[None]:
    """While the live view runs, log records go above it instead of into it."""
    root = logging.getLogger()
    if block is None:
        yield
        return
    saved = root.handlers[:]
    handler = _BlockHandler(block)
    if saved:
        handler.setFormatter(saved[0].formatter)
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = saved


class Fetcher:
    """The original asynchronous API: ``await Fetcher().fetch(existing_videos_dir=..., num_workers=5)``.

    The config comes from ``config_path``, else ``$VIDEOFETCHD_CONFIG``, else
    /etc/videofetchd/videofetchd.yaml, else the built-in defaults.
    """

    def __init__(self, config: Config | str | None = None) -> None:
        if isinstance(config, Config):
            self.config = config
        else:
            self.config = config_mod.load(config, missing_ok=config is None)

    async def fetch(self, existing_videos_dir: str | None = None, num_workers: int = 10) -> FetchSummary:
        """Scan ``existing_videos_dir`` (if given), then download every queued video.

        Raises ValueError if ``num_workers`` is not a positive integer.
        """
        _check_workers(num_workers)
        live = sys.stderr if sys.stderr.isatty() else None
        return await run_fetch(self.config, num_workers=num_workers, existing_videos_dir=existing_videos_dir,
                               live=live)
