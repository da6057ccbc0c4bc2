"""The daemon: signals, sd_notify, the control socket and reloads around one supervisor.

Signal handlers only record the signal and wake the loop; reloading, stopping and logging
happen in the loop. SIGHUP validates the new file before anything changes; SIGTERM drains;
a second SIGTERM or a SIGINT stops quickly. Either way rows still running go back to ``queued``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import functools
import signal
import threading
import time
from typing import Any

from . import config as config_mod
from .config import Config
from .errors import ConfigError
from .control.server import ConfigInfo, ControlServer, ScanStatus, snapshot
from .queue.jobs import parse_owner
from .queue.store import Store, open_store, redact
from .control import doctor
from .workers.hostprobe import check_sources
from .workers.slots import pid_alive, remove_stale_tempdirs
from .workers.supervisor import Supervisor
from .workers import stack as stack_mod
from .workers.upgrade import StackWatch, renew_forkserver
from .control.systemd import Notifier, watchdog_period

log = logging.getLogger(__name__)
STATUS_EVERY_S = 1.0
READY_TIMEOUT_S = 60.0
NUDGE_EVERY_S = 0.05  #: nudges closer together than this are answered by one claim


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.info = ConfigInfo(path=cfg.path, loaded_at=_now_iso())
        self.notifier = Notifier()
        self.signals: list[int] = []
        self.wakeup = asyncio.Event()
        self.store: Store | None = None
        self.sup: Supervisor | None = None
        self.server: ControlServer | None = None
        self.scan_task: asyncio.Task[None] | None = None
        self.scan_next: Config | None = None  # a reload changed scan.directories while a scan ran
        self.scan_status = ScanStatus()
        self._nudged_at = 0.0
        self._nudge_due = False
        self.metrics: Any = None  # control.metrics.MetricsServer while metrics.listen is set
        self.stack: dict[str, Any] = {}  # the yt-dlp stack installed, probed at start and after an upgrade
        self.stack_watch = StackWatch()  # made right after the forkserver started: what it loaded
        self._renewing = False

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        checks = await loop.run_in_executor(None, functools.partial(
            doctor.run_checks, doctor.Context(self.cfg.path, self.cfg, None), at_start=True))
        (log.info if not any(c.status != doctor.OK for c in checks) else log.warning)(
            "start-up checks: %s", doctor.summary(checks))
        self.server = ControlServer(self.cfg.control.socket, int(self.cfg.control.mode, 8), {
            "status": self._cmd_status, "ping": self._cmd_ping, "nudge": self._cmd_nudge,
            "reload": self._cmd_reload, "pause": self._cmd_pause, "resume": self._cmd_resume,
        })
        try:
            self.server.claim()  # a live daemon's socket is never taken over: AlreadyRunning (75)
        except OSError as exc:
            raise ConfigError(f"control.socket: cannot use {self.cfg.control.socket}: {exc.strerror or exc}") from exc
        for path in remove_stale_tempdirs():
            log.info("removed %s, left behind by a process that was killed", path)
        try:
            return await self._run(loop)
        finally:
            await self.server.stop()

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        assert self.server is not None
        self.store = store = await loop.run_in_executor(None, open_store, self.cfg.database.url)
        log.info("database %s open (%s)", redact(self.cfg.database.url), store.backend)
        node = self.cfg.node_name()
        await loop.run_in_executor(None, self._requeue_dead_local, store)
        self.sup = sup = Supervisor(self.cfg, store, node=node)
        sup.scanning = bool(self.cfg.scan.directories)  # the start-up scan goes first
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._record_signal, sig)
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigError(f"control.socket: cannot listen on {self.cfg.control.socket}: "
                              f"{exc.strerror or exc}") from exc
        if self.cfg.metrics.listen:  # a port taken: ListenUnavailable (75); run() stops the control server
            from .control.metrics import serve
            self.metrics = serve(self.cfg.metrics.listen, sup, info=self.info, scan=self.scan_status)
        task = asyncio.create_task(sup.run(), name="supervisor")
        listener = None
        if store.backend == "postgres":
            from .queue.listen import PgListener
            listener = asyncio.create_task(PgListener(self.cfg.database.url, self._notified).run())
        try:
            await self._wait_ready(task)
            log.info("videofetchd ready as %s with %d workers", node, len(sup.slots))
            self.notifier.ready(self._status_line())
            self._start_scan(self.cfg)
            asyncio.create_task(self._probe_stack(), name="stack-probe")
            await self._main_loop(task)
        finally:
            for extra in (listener, self.scan_task):
                if extra is not None:
                    extra.cancel()
            if not task.done():
                sup.request_stop(quick=True)
            await asyncio.gather(task, return_exceptions=True)
            if self.metrics is not None:
                await loop.run_in_executor(None, self.metrics.stop)
            store.close()
        task.result()  # a supervisor crash is a bug: let it reach the CLI
        log.info("stopped; queue: %s", sup.queue_counts)
        return 0

    async def _wait_ready(self, task: asyncio.Task[None]) -> None:
        """READY=1 only when every slot's child is up and the first database pass is done."""
        assert self.sup is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (self.sup.started and all(s.pid for s in self.sup.slots)):
            if task.done() or self.signals or time.monotonic() > deadline or self.sup.breaker.cannot_start:
                break
            await asyncio.sleep(0.02)

    def _notified(self) -> None:
        if self.sup is not None:
            self.sup.wake(claim=True)

    def _record_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.wakeup.set()

    async def _main_loop(self, task: asyncio.Task[None]) -> None:
        assert self.sup is not None
        sup = self.sup
        period = watchdog_period()
        next_ping = next_status = 0.0
        stop_progress = -1
        while not task.done():
            while self.signals:
                await self._handle_signal(self.signals.pop(0))
            now = time.monotonic()
            self._limit_scan_hold(now)
            found = self.stack_watch.poll(now)
            if found is not None and not self._renewing and not sup.stopping:
                asyncio.create_task(self._renew(found), name="renew-forkserver")
            if period is not None and now >= next_ping:
                # ping only while the supervisor loop is really turning
                if sup.healthy(now):
                    self.notifier.watchdog()
                next_ping = now + period
            if now >= next_status:
                self.notifier.status(self._status_line())
                next_status = now + STATUS_EVERY_S
                if sup.stopping:  # a drain that makes progress may outlive TimeoutStopSec
                    done = sup.counters.completed + sup.counters.failed
                    if done != stop_progress:
                        stop_progress = done
                        self.notifier.extend_timeout(self.cfg.download.drain_timeout
                                                     + self.cfg.download.kill_grace + 10)
            self.wakeup.clear()
            timeout = min(STATUS_EVERY_S, period or STATUS_EVERY_S)
            waiter = asyncio.ensure_future(self.wakeup.wait())
            await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def _handle_signal(self, sig: int) -> None:
        assert self.sup is not None
        if sig == signal.SIGHUP:
            await self._reload()
        elif sig == signal.SIGTERM and not self.sup.stopping:
            log.info("SIGTERM: draining for up to %.0fs, then stopping", self.cfg.download.drain_timeout)
            self.notifier.stopping()
            self.sup.request_stop()
        else:
            log.info("%s: stopping now; running jobs go back to the queue", signal.Signals(sig).name)
            self.notifier.stopping()
            self.sup.request_stop(quick=True)

    async def _reload(self) -> dict[str, Any]:
        assert self.sup is not None
        sup = self.sup
        if sup.stopping:
            log.info("reload ignored: stopping")
            return {"ok": False, "error": "daemon is stopping"}
        self.notifier.reloading()
        self.stack_watch.force()  # a yt-dlp upgraded on disk is taken up now, too
        before = sup.state
        sup.state = "reloading"
        try:
            new = config_mod.load(self.info.path)
            check_sources(new)
        except ConfigError as exc:
            self.info.last_reload_error = str(exc)
            log.error("reload failed, keeping the previous configuration: %s", exc)
            return {"ok": False, "error": str(exc)}
        finally:
            sup.state = before
            self.notifier.ready(self._status_line())
        old = self.cfg
        restart = config_mod.restart_required(old, new)
        if restart:
            log.warning("reload: %s changed; this needs a restart, the old values stay", ", ".join(restart))
            new = config_mod.keep_restart_keys(old, new)
        self.cfg = new
        self.info.generation += 1
        self.info.loaded_at = _now_iso()
        self.info.last_reload_error = None
        self.info.restart_required = restart
        logging.getLogger().setLevel(new.logging.level.upper())
        sup.apply_config(new)
        log.info("configuration generation %d loaded from %s (%d workers)", self.info.generation,
                 self.info.path, new.download.workers)
        self.notifier.status(self._status_line())
        if new.scan.directories != old.scan.directories:
            self._start_scan(new)
        return {"ok": True, "generation": self.info.generation, "restart_required": restart}

    async def _probe_stack(self) -> None:
        """What a child started now would run (a subprocess: the daemon never loads yt-dlp)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        params = self.cfg.download.ytdlp_params(None)

        def work() -> None:  # a daemon thread, not an executor: it must not hold up the daemon's exit
            result = stack_mod.probe_in_subprocess(params)
            try:
                loop.call_soon_threadsafe(_settle, done, result, None)
            except RuntimeError:
                pass  # the loop is gone: the daemon has exited

        threading.Thread(target=work, name="stack-probe", daemon=True).start()
        found = await done
        self.stack = found
        trouble = stack_mod.troubles(found)
        (log.warning if trouble else log.info)("yt-dlp stack: %s%s", stack_mod.summary(found),
                                               f" ({'; '.join(trouble)}; see videofetchd --check)" if trouble else "")

    async def _renew(self, found: dict[str, str]) -> None:
        """A new yt-dlp is installed: a new forkserver loads it; idle children are recycled."""
        self._renewing = True
        try:
            before = self.stack.get("installed") or {}
            log.info("yt-dlp stack changed on disk (%s): starting a new forkserver; children are recycled as "
                     "they go idle, running jobs finish first", ", ".join(
                         f"{k} {before.get(k) or '-'} -> {v or '-'}" for k, v in found.items() if before.get(k) != v))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, renew_forkserver, self.cfg.download)
            if self.sup is not None:
                self.sup.wake()
            await self._probe_stack()
        except Exception:  # noqa: BLE001 - the old children go on working
            log.exception("could not start a forkserver for the new yt-dlp; the old one goes on")
        finally:
            self._renewing = False

    def _start_scan(self, cfg: Config) -> None:
        """Scan ``scan.directories`` in the background (start-up, and reloads that change them)."""
        if not cfg.scan.directories or self.store is None:
            return
        if self.scan_task is not None and not self.scan_task.done():
            log.info("a scan is already running; the new directory list is scanned when it ends")
            self.scan_next = cfg
            return
        assert self.sup is not None
        self.sup.scanning = True
        self.scan_status.running, self.scan_status.videos_found = True, 0
        self.scan_status.directories, self.scan_status.started_at = list(cfg.scan.directories), time.monotonic()
        self.scan_task = asyncio.create_task(self._scan(cfg), name="scan")

    async def _scan(self, cfg: Config) -> None:
        from .errors import VideofetchdError
        from .library.scan import scan_directories
        store = self.store
        assert store is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        status = self.scan_status

        def progress(found: int) -> None:
            status.videos_found = found

        def work() -> None:
            # a daemon thread, not an executor: a long scan must not hold up the daemon's exit
            try:
                result: Any = scan_directories(store, list(cfg.scan.directories), cfg.scan, progress=progress,
                                               url_template=cfg.download.url_template)
                settle = functools.partial(_settle, done, result, None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                settle = functools.partial(_settle, done, None, exc)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass  # the loop is gone: the daemon has exited

        threading.Thread(target=work, name="scan", daemon=True).start()
        where = ", ".join(cfg.scan.directories)
        try:
            report = await done
            log.info("scan of %s: %s", where, report.summary())
            status.last_result, status.last_ok, status.last_success_ts = report.summary(), True, time.time()
        except VideofetchdError as exc:
            log.error("scan of %s refused: %s", where, exc)
            status.last_result, status.last_ok = f"refused: {exc}", False
        except Exception as exc:  # noqa: BLE001 - a scanner bug must not stop downloads for good
            log.exception("scan of %s failed", where)
            status.last_result, status.last_ok = f"failed: {exc!r}", False
        finally:
            status.running, status.last_finished = False, _now_iso()
            if self.sup is not None:
                self.sup.scanning = False  # claims were held while the scan ran
                self.sup.wake(claim=True)
            if self.scan_next is not None:  # started from the loop: this task is not done yet
                asyncio.get_running_loop().call_soon(self._start_scan, self.scan_next)
                self.scan_next = None

    def _limit_scan_hold(self, now: float) -> None:
        """A scan holds new downloads back (a file it is about to find must not be fetched again),
        but a scan stuck on a hung mount must not hold them forever: after ``scan.claim_hold``
        they go on while the scan does."""
        sup, status = self.sup, self.scan_status
        if sup is not None and sup.scanning and status.running \
                and now - status.started_at > self.cfg.scan.claim_hold:
            sup.scanning = False
            sup.wake(claim=True)
            log.warning("the scan of %s has run for %.0fs (scan.claim_hold); downloads go on while it does",
                        ", ".join(status.directories), now - status.started_at)

    def _status_line(self) -> str:
        sup = self.sup
        if sup is None:
            return "starting"
        busy = sum(1 for s in sup.slots if s.busy)
        q = sup.queue_counts
        parts = [sup.state, f"{busy}/{len(sup.slots)} busy",
                 f"queued {q.get('queued', 0)} running {q.get('running', 0)} done {q.get('done', 0)} "
                 f"failed {q.get('failed', 0)}"]
        if not sup.db_health.ok:
            parts.insert(0, "database unavailable")
        if not sup.health.ok:  # names only: STATUS= is ASCII, IDs and numbers, never paths or titles
            parts.insert(0, "PAUSED by " + ", ".join(sup.health.names()))
        if self.scan_status.running:
            parts.append(f"scanning ({self.scan_status.videos_found} videos so far)")
        if self.info.last_reload_error:
            parts.append("last reload failed")
        return ", ".join(parts)

    def _requeue_dead_local(self, store: Store) -> None:
        """Rows leased by an earlier process of this node ("<node>:<pid>@<scope>": a daemon, a
        one-shot fetch) whose pid is gone need not wait for their lease to expire. A live pid's rows
        are left alone, whoever it is: a fetch beside us, or a pid reused (their leases expire)."""
        node = self.cfg.node_name()
        dead = []
        for owner in store.lease_owners():
            parsed = parse_owner(owner)
            if parsed is None or parsed[0] != node:
                continue
            pid = parsed[1]
            if pid != os.getpid() and not pid_alive(pid):
                dead.append(owner)
        if dead:
            n = store.requeue_owned(dead, self.cfg.download.max_attempts)
            log.warning("requeued %d rows left running by a dead daemon on this host", n)

    # -- control commands -------------------------------------------------------------------------

    async def _cmd_status(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.sup is not None
        return snapshot(self.sup, self.info, self.scan_status, self.stack)

    async def _cmd_ping(self, _req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}

    async def _cmd_nudge(self, _req: dict[str, Any]) -> dict[str, Any]:
        """Claim now (``videofetchctl add``); a flood of nudges wakes the loop at most every
        NUDGE_EVERY_S, so it cannot cost a core."""
        assert self.sup is not None
        now = time.monotonic()
        if now - self._nudged_at >= NUDGE_EVERY_S:
            self._nudged_at = now
            self.sup.wake(claim=True)
        elif not self._nudge_due:
            self._nudge_due = True
            asyncio.get_running_loop().call_later(NUDGE_EVERY_S - (now - self._nudged_at), self._late_nudge)
        return {"ok": True}

    def _late_nudge(self) -> None:
        self._nudge_due = False
        self._nudged_at = time.monotonic()
        if self.sup is not None:
            self.sup.wake(claim=True)

    async def _cmd_reload(self, _req: dict[str, Any]) -> dict[str, Any]:
        return await self._reload()

    async def _cmd_pause(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.sup is not None
        self.sup.paused = True
        if not self.sup.stopping:
            self.sup.state = "paused"
        log.info("paused: no new jobs are claimed")
        return {"ok": True, "state": self.sup.state}

    async def _cmd_resume(self, _req: dict[str, Any]) -> dict[str, Any]:
        assert self.sup is not None
        self.sup.paused = False
        if not self.sup.stopping:
            self.sup.state = "running"
        self.sup.wake(claim=True)
        log.info("resumed")
        return {"ok": True, "state": self.sup.state}


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
