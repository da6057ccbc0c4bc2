"""The Prometheus endpoint: what the supervisor already knows, read at scrape time.

A custom collector turns the supervisor's live state into metrics when Prometheus scrapes: the
cached queue counts (refreshed by the database thread every 2 s and moved at once when an outcome
is recorded), the workers, site pauses and database health, plus the counters, outcome tallies
and histograms that the supervisor and the recorder keep as events happen. So nothing is counted
twice, status and metrics always agree, counters live as long as the process (a reload does not
reset them), and a scrape never touches the database: it answers while the database is slow or
gone. prometheus_client serves it on a thread of its own; the collector only reads plain Python
objects (copying dicts and lists first), which the GIL makes safe.
Must not: query the database, change any state, or import yt-dlp (its version comes from the
package metadata).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import resource
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CollectorRegistry, PlatformCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .. import __version__
from ..config import parse_listen
from ..errors import ListenUnavailable
from ..queue.jobs import ErrorKind
from ..queue.models import STATES
from ..workers.health import DISK_SPACE, DOWNLOAD_DIRECTORY, WORKERS_CANNOT_START, WORKERS_CRASHING
from .server import ConfigInfo, ScanStatus

if TYPE_CHECKING:
    from ..workers.recorder import Buckets
    from ..workers.supervisor import Supervisor

log = logging.getLogger(__name__)
DAEMON_STATES = ("starting", "running", "paused", "reloading", "stopping")
WORKER_STATES = ("busy", "idle", "dormant", "restarting")
#: host conditions that exist from the start (0 until one begins), so alerts see them begin
KNOWN_CONDITIONS = (DISK_SPACE, DOWNLOAD_DIRECTORY, WORKERS_CANNOT_START, WORKERS_CRASHING)
#: (outcome, error_kind) series that exist from the start, so rate() sees their first increase
IDENTITY_OUTCOMES = ("done", "failed", "retried")  #: videofetchd_identity_jobs_total's outcomes, there from the start
KNOWN_OUTCOMES = [("done", "")] + [("failed", k.value) for k in ErrorKind] + \
    [("retried", k.value) for k in ErrorKind if k not in (ErrorKind.PERMANENT, ErrorKind.INVALID)]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Collector:
    """Reads a supervisor (and, in the daemon, its config and scan status) at every scrape."""

    def __init__(self, sup: Supervisor, *, info: ConfigInfo | None = None, scan: ScanStatus | None = None) -> None:
        self.sup = sup
        self.info = info
        self.scan = scan
        self.build = {"version": __version__, "ytdlp": _version("yt-dlp"), "python": platform.python_version()}

    def collect(self) -> Iterator[Metric]:
        sup, now = self.sup, time.monotonic()
        yield _gauge("videofetchd_build_info", "Versions of videofetchd, yt-dlp and Python; always 1.",
                     [(self.build, 1)])
        yield _gauge("videofetchd_state", "The daemon's state (1 for the current one).",
                     [({"state": s}, int(sup.state == s)) for s in DAEMON_STATES])
        counts = dict(sup.queue_counts)
        if counts:  # before the first database pass there is nothing true to say
            yield _gauge("videofetchd_jobs", "Rows of the queue by status (the whole database, every host).",
                         [({"status": s}, counts.get(s, 0)) for s in sorted(set(STATES) | set(counts))])
        yield _gauge("videofetchd_oldest_queued_age_seconds",
                     "How long the longest-waiting eligible queued row has waited since it became eligible.",
                     sup.oldest_queued_s)
        yield from self._workers(sup, now)
        pauses = dict(sup.site_pauses)
        yield _gauge("videofetchd_throttle_active", "1 while a site is paused after throttling us (429, bot checks).",
                     [({"site": site}, int(until > now)) for site, until in sorted(pauses.items())])
        yield _gauge("videofetchd_throttle_remaining_seconds", "Seconds left of a throttled site's pause.",
                     [({"site": site}, max(0.0, until - now)) for site, until in sorted(pauses.items())])
        active = set(sup.health.names())
        yield _gauge("videofetchd_health_condition", "1 while a host condition (disk space, download directory, "
                     "workers that cannot start or keep crashing) pauses claiming.",
                     [({"name": n}, int(n in active)) for n in sorted(active | set(KNOWN_CONDITIONS))])
        db = sup.db_health
        yield _gauge("videofetchd_database_up", "1 while the database answers; 0 while results are held back.",
                     int(db.ok))
        yield _gauge("videofetchd_pending_results", "Job results held back until the database answers again.",
                     len(db.pending))
        yield from self._counters(sup)
        yield _histogram("videofetchd_job_duration_seconds", "Time from dispatch to the end of an attempt.",
                         sup.stats.durations)
        yield _histogram("videofetchd_job_queue_wait_seconds",
                         "Time a row waited from becoming eligible (queued, backoff over) to its start.",
                         sup.stats.queue_waits)
        yield from self._identities(sup, now)
        yield from self._daemon_only()
        yield from self._process(sup, now)

    def _workers(self, sup: Supervisor, now: float) -> Iterator[Metric]:
        states = dict.fromkeys(WORKER_STATES, 0)
        ages = []
        for slot in list(sup.slots):
            states[slot.state] += 1
            if slot.busy:
                ages.append(({"slot": str(slot.index)}, slot.progress(now).last_progress_age_s))
        yield _gauge("videofetchd_workers", "Worker slots by state.", [({"state": s}, n) for s, n in states.items()])
        yield _gauge("videofetchd_worker_last_progress_age_seconds",
                     "Seconds since a busy worker's download last made progress (the stall clock).", ages)

    def _counters(self, sup: Supervisor) -> Iterator[Metric]:
        c = sup.counters
        finished = dict.fromkeys(KNOWN_OUTCOMES, 0)
        finished.update(dict(sup.stats.finished))
        family = CounterMetricFamily("videofetchd_jobs_finished", "Attempts that ended, by outcome "
                                     "(done, failed for good, retried later) and error kind.",
                                     labels=["outcome", "error_kind"])
        for (outcome, kind), n in sorted(finished.items()):
            family.add_metric([outcome, kind], n)
        yield family
        for name, doc, value in (
                ("videofetchd_downloaded_bytes", "Bytes downloaded (a resumed file's earlier part counts again).",
                 c.downloaded_bytes),
                ("videofetchd_stall_kills", "Children killed because their download made no progress.",
                 c.stalled_killed),
                ("videofetchd_worker_restarts", "Worker children that died or could not start and were replaced.",
                 c.worker_restarts),
                ("videofetchd_worker_recycles", "Worker children replaced after recycle_after_jobs or recycle_rss.",
                 c.recycled),
                ("videofetchd_lost_leases", "Results dropped because another daemon had taken the row over.",
                 c.lost_leases)):
            yield CounterMetricFamily(name, doc, value=value)

    def _identities(self, sup: Supervisor, now: float) -> Iterator[Metric]:
        """Egress identities (download.identities): the budgets status shows, from the last refresh."""
        if not sup.cfg.download.identities:
            return
        try:
            idents = sup.egress.status(sup.cfg.download, now)
        except RuntimeError:  # a reload dropped the identities while we read them: next scrape
            return
        tokens, paused, starts = [], [], CounterMetricFamily(
            "videofetchd_identity_starts", "Jobs started by an identity on a site (every host, ever).",
            labels=["identity", "site"])
        for ident in idents:
            for site in ident["sites"]:
                labels = {"identity": ident["name"], "site": site["site"]}
                if site["tokens"] is not None:
                    tokens.append((labels, site["tokens"]))
                paused.append((labels, site["paused_s"] or 0.0))
                starts.add_metric([ident["name"], site["site"]], site["started"])
        yield _gauge("videofetchd_identity_running", "Jobs running under each egress identity (every host).",
                     [({"identity": i["name"]}, i["running"]) for i in idents])
        yield _gauge("videofetchd_identity_paused", "1 while an identity takes no jobs at all on this daemon "
                     "(its source_address cannot be bound); per-site throttling: identity_paused_seconds.",
                     [({"identity": i["name"]}, int(i["fault"] is not None)) for i in idents])
        jobs = CounterMetricFamily("videofetchd_identity_jobs", "Attempts that ended under an egress identity, "
                                   "by outcome (done, failed for good, retried later), on this daemon.",
                                   labels=["identity", "outcome"])
        tally = dict(sup.stats.by_identity)
        for name in sorted({i["name"] for i in idents} | {n for n, _ in tally}):
            for outcome in IDENTITY_OUTCOMES:
                jobs.add_metric([name, outcome], tally.get((name, outcome), 0))
        yield jobs
        yield _gauge("videofetchd_identity_budget_tokens",
                     "Starts an identity may make on a site right now (its token bucket).", tokens)
        yield _gauge("videofetchd_identity_paused_seconds",
                     "Seconds left of an identity's throttling pause on a site (0: not paused).", paused)
        yield starts

    def _process(self, sup: Supervisor, now: float) -> Iterator[Metric]:
        """The usual ``process_*`` metrics of the main process, plus the memory of its worker children.

        prometheus_client's ProcessCollector needs the boot time from /proc/stat, which the unit's
        ProcSubset=pid hides: it would report nothing. Everything here comes from /proc/self and
        the children's own /proc entries, which the sandbox leaves visible.
        """
        cpu = os.times()
        yield CounterMetricFamily("process_cpu_seconds", "User and system CPU time of the main process.",
                                  value=cpu.user + cpu.system)
        try:
            me = psutil.Process()
            mem = me.memory_info()
            yield _gauge("process_resident_memory_bytes", "Resident memory of the main process.", mem.rss)
            yield _gauge("process_virtual_memory_bytes", "Virtual memory of the main process.", mem.vms)
            yield _gauge("process_open_fds", "Open file descriptors of the main process.", me.num_fds())
        except (psutil.Error, OSError):
            pass
        yield _gauge("process_max_fds", "The main process's limit of open file descriptors.",
                     resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        yield _gauge("process_start_time_seconds", "When the main process started (Unix time).",
                     time.time() - (now - sup.started_at))
        rss = 0
        for slot in list(sup.slots):
            rss += slot.rss()
        yield _gauge("videofetchd_workers_resident_memory_bytes", "Resident memory of all worker children.", rss)

    def _daemon_only(self) -> Iterator[Metric]:
        if self.info is not None:
            yield _gauge("videofetchd_config_last_reload_successful",
                         "0 when the last reload was refused (the previous configuration is still in use).",
                         int(not self.info.last_reload_error))
        if self.scan is not None:
            yield _gauge("videofetchd_scan_running", "1 while the daemon scans scan.directories.",
                         int(self.scan.running))
            if self.scan.last_success_ts:
                yield _gauge("videofetchd_scan_last_success_timestamp_seconds",
                             "When the daemon's last successful library scan finished (Unix time).",
                             self.scan.last_success_ts)


def _gauge(name: str, doc: str, samples: list[tuple[dict[str, str], float]] | float) -> GaugeMetricFamily:
    """A gauge with one unlabelled value, or labelled samples (all with the same label names)."""
    if not isinstance(samples, list):
        return GaugeMetricFamily(name, doc, value=samples)
    labels = sorted(samples[0][0]) if samples else []
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric([values[k] for k in labels], value)
    return family


def _histogram(name: str, doc: str, b: Buckets) -> HistogramMetricFamily:
    counts = list(b.counts)  # one copy, so count, buckets and +Inf agree even mid-observation
    cumulative, buckets = 0, []
    for bound, n in zip([*(_le(x) for x in b.bounds), "+Inf"], counts):
        cumulative += n
        buckets.append((bound, cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=b.total)


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsServer:
    """The HTTP endpoint (``/metrics``) on ``metrics.listen``, on prometheus_client's own thread."""

    def __init__(self, listen: str, collector: Collector) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)  # process_* included (see Collector._process)
        PlatformCollector(registry=self.registry)  # python_info
        self._server: Any = None
        self.port = 0

    def start(self) -> None:
        """Listen now; ListenUnavailable (exit 75: systemd tries again) when the address cannot be
        bound: a port taken, often by an instance still stopping, or an address not up yet."""
        host, port = parse_listen(self.listen)
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ListenUnavailable(f"metrics.listen: cannot listen on {self.listen}: "
                                    f"{exc.strerror or exc}") from None
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s/metrics", self.listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve(listen: str, sup: Supervisor, *, info: ConfigInfo | None = None,
          scan: ScanStatus | None = None) -> MetricsServer:
    """Start the endpoint for ``sup``; ListenUnavailable when ``listen`` cannot be bound."""
    server = MetricsServer(listen, Collector(sup, info=info, scan=scan))
    server.start()
    return server
