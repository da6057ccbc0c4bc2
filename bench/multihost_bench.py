"""Benchmarks of the shared queue: claim throughput, add-to-start latency, scale-out over hosts.

    .venv/bin/python bench/multihost_bench.py claims   [--sizes 1000,1000000] [--backends sqlite,postgres]
    .venv/bin/python bench/multihost_bench.py latency  [--samples 20]
    .venv/bin/python bench/multihost_bench.py scaleout [--files 48] [--size 1MiB] [--rate 4mbit]
    .venv/bin/python bench/multihost_bench.py all

claims:   ``store.claim(owner, n, lease)`` in a loop (batches of 1 and of 8, each claimed row then
          finished; finished rows go back to the queue every 25 claims, untimed, so the queue keeps
          its size; median of --reps runs) on a queue of 1,000 and of 1,000,000 rows, SQLite and
          PostgreSQL; prints claims/s
          and the large queue's rate relative to the small one (target: within 20%), with the
          claim query's plan on the large queue. The same with --identities egress identities
          (``budgets.claim``: each row drawn from a token bucket in the same transaction; budgets
          too large to run out), and the cost of a claim that finds no budget left for the
          url_template's site (it then looks only at rows with their own URL: none here).
latency:  an idle daemon (poll_interval 30s) and one new row: time from the row's commit to the
          media server's first GET for it. PostgreSQL: plain-SQL INSERT (trigger -> NOTIFY ->
          LISTEN). SQLite: ``videofetchctl add`` (nudge over the control socket), measured both
          from the command's start and from the commit (the add + nudge done in-process).
scaleout: three simulated hosts, each a network namespace behind a veth pair shaped with tc tbf,
          sharing one PostgreSQL queue (a private cluster listening on the veth addresses); the
          same workload on 1 host, then on 3; target: aggregate >= 2.8x, each ID fetched once.
          Needs root (ip netns, tc, runuser postgres). Namespaces and links are removed at the end.

PostgreSQL: the server at 127.0.0.1:5432 (env VFD_BENCH_PG overrides the admin URL) for claims and
latency; every run creates its own database and drops it. Binaries for the private cluster are
taken from /usr/lib/postgresql/15/bin (env VFD_PG_BIN).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402

from helpers import wait_until  # noqa: E402
from mediaserver import MediaServer, parse_size  # noqa: E402
from videofetchd import ctl as vctl  # noqa: E402
from videofetchd.queue import budgets  # noqa: E402
from videofetchd.queue.bucket import Limits  # noqa: E402
from videofetchd.queue.store import open_store  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")
ADMIN_URL = os.environ.get("VFD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_BIN = Path(os.environ.get("VFD_PG_BIN", "/usr/lib/postgresql/15/bin"))
CLAIM_TARGET = 0.80  # large-queue claims/s at least 80% of the small queue's
LATENCY_TARGET_MS = 200.0
SCALE_TARGET = 2.8


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


# -- databases --------------------------------------------------------------------------------


def pg_connect(url: str) -> Any:
    import psycopg2
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    name = f"vfd_bench_{uuid.uuid4().hex[:10]}"
    admin = pg_connect(admin_url)
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(Exception):
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "postgres":
        with pg_database(ADMIN_URL) as url:
            yield url
    else:
        yield f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db"


def fill(url: str, n: int) -> float:
    """Queue n rows with one INSERT ... SELECT; returns seconds taken."""
    t0 = time.monotonic()
    if url.startswith("sqlite"):
        con = sqlite3.connect(url[len("sqlite:///"):])
        con.execute("WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < ?) "
                    "INSERT INTO videos (video_id) SELECT 'c' || i FROM g", (n,))
        con.commit()
        con.execute("ANALYZE")
        con.close()
    else:
        conn = pg_connect(url)
        cur = conn.cursor()
        cur.execute("INSERT INTO videos (video_id) SELECT 'c' || g FROM generate_series(1, %s) g", (n,))
        cur.execute("VACUUM ANALYZE videos")
        conn.close()
    return time.monotonic() - t0


CLAIM_PICK = ("SELECT id FROM videos WHERE status = 'queued' AND run_after <= {now} "
              "ORDER BY run_after, id LIMIT 8")


def explain(url: str, store: Any) -> list[str]:
    pick = CLAIM_PICK.format(now=store.now)
    if url.startswith("sqlite"):
        return [" | ".join(str(c) for c in r) for r in store.read("EXPLAIN QUERY PLAN " + pick)]
    sql = (f"WITH c AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED) UPDATE videos v SET status = 'running' "
           "FROM c WHERE v.id = c.id RETURNING v.id")
    conn = pg_connect(url)
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
    plan = [r[0] for r in cur.fetchall()]
    cur.execute("ROLLBACK")
    conn.close()
    return plan


TEMPLATE = "https://www.youtube.com/watch?v={id}"


def identity_limits(n: int, per_hour: int) -> list[Limits]:
    return [Limits(f"ip{i}", per_hour=per_hour, burst=64) for i in range(n)]


def claim_run(store: Any, batch: int, rows_wanted: int, identities: int = 0) -> tuple[float, float, int]:
    """Claim ``rows_wanted`` rows in batches, finishing each; returns (claim_s, finish_s, claims)."""
    claim_s = finish_s = 0.0
    claims = got = 0
    limits = identity_limits(identities, 10**9)  # a budget that never runs out: every claim draws tokens
    while got < rows_wanted:
        t0 = time.perf_counter()
        if identities:
            rows = budgets.claim(store, "bench:1", batch, 60.0, limits, TEMPLATE).claimed
        else:
            rows = store.claim("bench:1", batch, 60.0)
        t1 = time.perf_counter()
        for r in rows:
            store.finish(r.row_id, r.claim_token, file_path="/x", file_size=1, extractor="bench")
        finish_s += time.perf_counter() - t1
        claim_s += t1 - t0
        claims += 1
        got += len(rows)
        if not rows:
            raise RuntimeError("queue ran dry")
        if claims % 25 == 0:  # untimed: put finished rows back, so the queue keeps its size
            store.write(f"UPDATE videos SET status = 'queued', attempts = 0, run_after = {store.now}, "
                        "finished_at = NULL WHERE status = 'done'")
    return claim_s, finish_s, claims


def empty_claims(store: Any, identities: int, n: int) -> float:
    """Seconds per budgeted claim while the url_template's site has no budget left."""
    limits = [Limits(f"dry{i}", per_hour=1) for i in range(identities)]
    while budgets.claim(store, "bench:1", 8, 60.0, limits, TEMPLATE).claimed:
        pass  # spend each bucket's one token (then one per hour)
    t0 = time.perf_counter()
    for _ in range(n):
        if budgets.claim(store, "bench:1", 8, 60.0, limits, TEMPLATE).claimed:
            raise RuntimeError("a dry budget claimed a row")
    return (time.perf_counter() - t0) / n


def bench_claims(args: argparse.Namespace) -> bool:
    sizes = [int(s) for s in args.sizes.split(",")]
    ok = True
    results: dict[tuple[str, int, int, int], float] = {}
    dry_rows: list[list[Any]] = []
    rows_out: list[list[Any]] = []
    plans: list[tuple[str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="vfd-claims-") as tmpname:
        tmp = Path(tmpname)
        for backend in args.backends.split(","):
            for size in sizes:
                with database(backend, tmp) as url:
                    store = open_store(url)
                    fill_s = fill(url, size)
                    claim_run(store, 1, 20)  # warm-up (connection, caches, plan)
                    for idents in sorted({0, args.identities}):
                        for batch, n_rows in ((1, args.rows), (8, args.rows)):
                            runs = sorted((claim_run(store, batch, n_rows, idents) for _ in range(args.reps)),
                                          key=lambda r: r[2] / r[0])
                            claim_s, finish_s, claims = runs[len(runs) // 2]  # the median run
                            rate = claims / claim_s
                            results[(backend, size, batch, idents)] = rate
                            rows_out.append([backend, f"{size:,}", idents or "-", batch, claims, f"{rate:,.0f}",
                                             f"{claim_s / claims * 1e3:.2f}", f"{claims * batch / claim_s:,.0f}",
                                             f"{claims * batch / (claim_s + finish_s):,.0f}", f"{fill_s:.1f}"])
                    if args.identities:
                        dry = empty_claims(store, args.identities, max(50, args.rows // 8))
                        dry_rows.append([backend, f"{size:,}", args.identities, f"{dry * 1e3:.2f}"])
                    if size == max(sizes):
                        plans.append((f"{backend}, {size:,} rows", explain(url, store)))
                    store.close()
    table("claim throughput (store.claim, or budgets.claim with identities, in a loop; each claimed row "
          "then finished)", ["backend", "queued rows", "identities", "batch", "claims", "claims/s", "ms/claim",
                             "rows/s claimed", "rows/s claim+finish", "fill s"], rows_out)
    if dry_rows:
        table("a budgeted claim while the url_template's site has no budget left (nothing to claim)",
              ["backend", "queued rows", "identities", "ms/claim"], dry_rows)
    rel_rows = []
    small, large = min(sizes), max(sizes)
    for backend in args.backends.split(","):
        for idents in sorted({0, args.identities}):
            for batch in (1, 8):
                a, b = results.get((backend, small, batch, idents)), results.get((backend, large, batch, idents))
                if a and b and small != large:
                    ratio = b / a
                    passed = ratio >= CLAIM_TARGET
                    ok &= passed
                    rel_rows.append([backend, idents or "-", batch, f"{a:,.0f}", f"{b:,.0f}", f"{ratio:.2f}",
                                     "PASS" if passed else "MISS"])
    if rel_rows:
        table(f"large queue ({large:,}) vs small queue ({small:,}), target >= {CLAIM_TARGET:.2f}",
              ["backend", "identities", "batch", "small claims/s", "large claims/s", "ratio", "result"], rel_rows)
    for title, plan in plans:
        print(f"\nclaim query plan ({title}):")
        for line in plan:
            print("    " + line)
    return ok


# -- daemons ----------------------------------------------------------------------------------


def write_config(home: Path, db_url: str, url_template: str, *, poll: str = "30s", node: str = "",
                 workers: int = 2) -> Path:
    data = {
        "database": {"url": db_url, "poll_interval": poll, "lease_duration": "30s", "node_name": node},
        "download": {"directory": str(home / "videos"), "url_template": url_template, "workers": workers,
                     "retry_backoff": "1s", "stall_timeout": "60s",
                     # the media server is on loopback or on the namespaces' private network
                     "allow_addresses": ["127.0.0.0/8", "::1/128", f"{NET}.0.0/16"]},
        "control": {"socket": str(home / "control.sock")},
        "logging": {"level": "warning"},
    }
    home.mkdir(parents=True, exist_ok=True)
    path = home / "videofetchd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Daemon:
    def __init__(self, cfg: Path, prefix: list[str] | None = None) -> None:
        self.cfg = cfg
        self.log = open(cfg.parent / "daemon.log", "w")
        self.proc = subprocess.Popen([*(prefix or []), PY, "-m", "videofetchd", "--config", str(cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=str(REPO))
        sock = yaml.safe_load(cfg.read_text())["control"]["socket"]
        wait_until(lambda: self.proc.poll() is not None or self._status(sock), timeout=60,
                   message=f"daemon {cfg} did not start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {(cfg.parent / 'daemon.log').read_text()[-2000:]}")
        self.sock = sock

    @staticmethod
    def _status(sock: str) -> dict[str, Any] | None:
        try:
            reply = vctl.request(sock, {"cmd": "status"}, timeout=5)
        except Exception:  # noqa: BLE001 - not up yet
            return None
        return reply if reply.get("state") == "running" else None

    def idle(self) -> bool:
        st = self._status(self.sock)
        return bool(st) and all(w["state"] == "idle" and w.get("pid") for w in st["workers"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def first_get(media: MediaServer, vid: str, timeout: float = 10.0) -> float:
    return wait_until(lambda: next((r.time for r in media.requests() if r.video_id == vid), None),
                      timeout=timeout, interval=0.002, message=f"{vid} never requested")


def summarize(ms: list[float]) -> list[str]:
    p95 = statistics.quantiles(ms, n=20)[-1] if len(ms) >= 2 else ms[0]
    return [str(len(ms)), f"{statistics.median(ms):.0f}", f"{p95:.0f}", f"{max(ms):.0f}",
            "PASS" if statistics.median(ms) <= LATENCY_TARGET_MS and p95 <= LATENCY_TARGET_MS else "MISS"]


def bench_latency(args: argparse.Namespace) -> bool:
    rows: list[list[Any]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="vfd-lat-") as tmpname, \
            MediaServer(default_size=16 * 1024) as media:
        tmp = Path(tmpname)
        # PostgreSQL: plain INSERT -> trigger NOTIFY -> LISTEN wakes the daemon
        with pg_database(ADMIN_URL) as url:
            d = Daemon(write_config(tmp / "pg", url, media.url_template))
            try:
                conn = pg_connect(url)
                cur = conn.cursor()
                samples = []
                for i in range(args.samples + 2):
                    vid = f"pglat-{i}"
                    wait_until(d.idle, timeout=30, interval=0.02)
                    cur.execute("INSERT INTO videos (video_id) VALUES (%s)", (vid,))
                    committed = time.monotonic()
                    t = first_get(media, vid)
                    if i >= 2:  # the first two warm the children's yt-dlp up
                        samples.append((t - committed) * 1e3)
                    wait_until(lambda: cur.execute("SELECT status FROM videos WHERE video_id = %s", (vid,))
                               or cur.fetchone()[0] == "done", timeout=30, interval=0.01)
                conn.close()
            finally:
                d.stop()
            r = summarize(samples)
            ok &= r[-1] == "PASS"
            rows.append(["postgres", "INSERT commit -> first GET (LISTEN/NOTIFY)", *r])
        # SQLite: videofetchctl add -> nudge over the control socket
        url = f"sqlite:///{tmp}/lat.db"
        cfg = write_config(tmp / "sq", url, media.url_template)
        d = Daemon(cfg)
        try:
            store = open_store(url)
            sock = yaml.safe_load(cfg.read_text())["control"]["socket"]
            from_cmd, from_commit = [], []
            for i in range(args.samples + 2):
                vid = f"sqlat-{i}"
                wait_until(d.idle, timeout=30, interval=0.02)
                start = time.monotonic()
                r = subprocess.run([PY, "-m", "videofetchd", "add", vid, "--config", str(cfg)],
                                   capture_output=True, text=True, cwd=str(REPO))
                assert r.returncode == 0, r.stderr
                t = first_get(media, vid)
                if i >= 2:
                    from_cmd.append((t - start) * 1e3)
                wait_until(d.idle, timeout=30, interval=0.02)
                vid = f"sqlat-direct-{i}"
                store.add([(vid, None)])  # what `videofetchctl add` does, in-process: commit...
                committed = time.monotonic()
                vctl.request(sock, {"cmd": "nudge"}, timeout=2.0)  # ...then nudge
                t = first_get(media, vid)
                if i >= 2:
                    from_commit.append((t - committed) * 1e3)
            store.close()
        finally:
            d.stop()
        r = summarize(from_commit)
        ok &= r[-1] == "PASS"
        rows.append(["sqlite", "add commit + nudge -> first GET", *r])
        rows.append(["sqlite", "`videofetchctl add` start -> first GET", *summarize(from_cmd)[:-1], "(info)"])
    table(f"add-to-start latency on an idle daemon (poll_interval 30s), target <= {LATENCY_TARGET_MS:.0f} ms "
          "median and p95", ["backend", "measured", "n", "median ms", "p95 ms", "max ms", "result"], rows)
    return ok


# -- scale-out over network namespaces --------------------------------------------------------

NS_PREFIX = "vfdb"
NET = "10.231"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Hosts:
    """n network namespaces vfdb1..n, each behind a veth pair shaped both ways with tbf."""

    def __init__(self, n: int, rate: str) -> None:
        self.n = n
        self.rate = rate
        self.made: list[int] = []

    def setup(self) -> None:
        self.teardown()  # leftovers of an interrupted run
        for i in range(1, self.n + 1):
            ns, host_if, ns_if = f"{NS_PREFIX}{i}", f"{NS_PREFIX}h{i}", f"{NS_PREFIX}n{i}"
            sh("ip", "netns", "add", ns)
            self.made.append(i)
            sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            sh("ip", "link", "set", ns_if, "netns", ns)
            sh("ip", "addr", "add", f"{NET}.{i}.1/24", "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NET}.{i}.2/24", "dev", ns_if)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            tbf = ["tbf", "rate", self.rate, "burst", "64kb", "latency", "100ms"]
            sh("tc", "qdisc", "add", "dev", host_if, "root", *tbf)  # downloads: root -> namespace
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ns_if, "root", *tbf)

    def server_addr(self, i: int) -> str:
        return f"{NET}.{i}.1"

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", f"{NS_PREFIX}{i}"]

    def teardown(self) -> None:
        for i in range(1, self.n + 1):
            sh("ip", "link", "del", f"{NS_PREFIX}h{i}", check=False)
            sh("ip", "netns", "del", f"{NS_PREFIX}{i}", check=False)
        self.made.clear()


def as_postgres(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout)


class PrivatePg:
    """A throw-away cluster listening on 127.0.0.1 and the given addresses, trusting 10.231/16."""

    def __init__(self, addresses: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vfd-benchpg-"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        r = as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "--no-sync", "-E", "UTF8")
        if r.returncode:
            raise RuntimeError(r.stdout + r.stderr)
        with open(self.data / "pg_hba.conf", "a") as f:
            f.write(f"host all all {NET}.0.0/16 trust\n")
        listen = ",".join(["127.0.0.1", *addresses])
        self.opts = (f"-k {self.root} -p {self.port} -c listen_addresses={listen} -c fsync=off "
                     "-c synchronous_commit=off -c max_connections=100")
        r = self.ctl("start")
        if r.returncode:
            raise RuntimeError(r.stdout + r.stderr + (self.root / "log").read_text())

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                           "-o", self.opts, "-w", *args)

    def url(self, host: str = "127.0.0.1", db: str = "postgres") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{db}"

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def scale_run(hosts: Hosts, pg: PrivatePg, media: MediaServer, n_hosts: int, files: int, tag: str,
              tmp: Path, workers: int) -> tuple[float, int, dict[str, int], float]:
    db = f"scale_{tag}"
    admin = pg_connect(pg.url())
    admin.cursor().execute(f"CREATE DATABASE {db}")
    daemons: list[Daemon] = []
    try:
        for i in range(1, n_hosts + 1):
            cfg = write_config(tmp / tag / f"host{i}", pg.url(hosts.server_addr(i), db),
                               f"http://{hosts.server_addr(i)}:{media.port}/v/{{id}}.mp4", poll="2s",
                               node=f"bench-host{i}", workers=workers)
            daemons.append(Daemon(cfg, prefix=hosts.prefix(i)))
        for d in daemons:
            wait_until(d.idle, timeout=60, interval=0.05, message="daemon not idle")
        conn = pg_connect(pg.url(db=db))
        cur = conn.cursor()
        ids = [f"{tag}-{k:04d}" for k in range(files)]
        t0 = time.monotonic()
        cpu0 = cpu_times()
        cur.execute("INSERT INTO videos (video_id) SELECT unnest(%s::text[])", (ids,))

        def all_done() -> bool:
            cur.execute("SELECT count(*) FROM videos WHERE status = 'done'")
            done = cur.fetchone()[0]
            if done < files:
                cur.execute("SELECT count(*) FROM videos WHERE status = 'failed'")
                if cur.fetchone()[0]:
                    raise RuntimeError("some downloads failed; see the daemon logs under " + str(tmp))
            return bool(done == files)
        wait_until(all_done, timeout=600, interval=0.05, message="scale-out run did not finish")
        elapsed = time.monotonic() - t0
        cpu1 = cpu_times()
        busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
        cur.execute("SELECT file_path FROM videos")
        per_host: dict[str, int] = {}
        for (path,) in cur.fetchall():
            host = Path(path).parent.parent.name
            per_host[host] = per_host.get(host, 0) + 1
        conn.close()
        gets = [media.body_requests(v) for v in ids]
        once = sum(1 for g in gets if g == 2)
        return elapsed, once, per_host, busy
    finally:
        for d in daemons:
            d.stop()
        with contextlib.suppress(Exception):
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def bench_scaleout(args: argparse.Namespace) -> bool:
    if os.geteuid() != 0:
        print("scaleout: needs root (ip netns, tc, runuser); skipped")
        return False
    size = parse_size(args.size)
    hosts = Hosts(3, args.rate)
    pg: PrivatePg | None = None
    media: MediaServer | None = None
    try:
        hosts.setup()
        pg = PrivatePg([hosts.server_addr(i) for i in range(1, 4)])
        media = MediaServer(host="0.0.0.0", default_size=size).start()
        with tempfile.TemporaryDirectory(prefix="vfd-scale-") as tmpname:
            tmp = Path(tmpname)
            res = []
            for n in (1, 3):
                elapsed, once, per_host, busy = scale_run(hosts, pg, media, n, args.files, f"h{n}", tmp,
                                                          args.workers)
                mib_s = args.files * size / elapsed / 2**20
                res.append((n, elapsed, mib_s, once, per_host, busy))
        base = res[0][2]
        rows = [[n, f"{e:.1f}", f"{m:.2f}", f"{m / base:.2f}x", f"{once}/{args.files}",
                 " ".join(f"{k}={v}" for k, v in sorted(ph.items())), f"{b * 100:.0f}%"]
                for n, e, m, once, ph, b in res]
        table(f"scale-out: {args.files} files of {args.size}, {args.workers} workers per host, each host's link "
              f"shaped to {args.rate} (tbf), one PostgreSQL queue", ["hosts", "seconds", "MiB/s", "speed-up",
                                                                     "fetched once", "files per host",
                                                                     "machine CPU busy"], rows)
        print(f"  link limit per host {args.rate}; load average now {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        speedup = res[1][2] / base
        ok = speedup >= SCALE_TARGET and all(r[3] == args.files for r in res)
        print(f"  aggregate speed-up {speedup:.2f}x (target >= {SCALE_TARGET}x): {'PASS' if ok else 'MISS'}")
        return ok
    finally:
        if media is not None:
            media.stop()
        if pg is not None:
            pg.destroy()
        hosts.teardown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["claims", "latency", "scaleout", "all"])
    p.add_argument("--sizes", default="1000,1000000")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--rows", type=int, default=1600, help="rows claimed per measurement")
    p.add_argument("--reps", type=int, default=3, help="measurements per case (the median is shown)")
    p.add_argument("--identities", type=int, default=3, help="claims: also with this many identities (0: not)")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--files", type=int, default=48)
    p.add_argument("--size", default="1MiB")
    p.add_argument("--rate", default="4mbit")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups (netns, servers)
    ok = True
    if args.what in ("claims", "all"):
        ok &= bench_claims(args)
    if args.what in ("latency", "all"):
        ok &= bench_latency(args)
    if args.what in ("scaleout", "all"):
        ok &= bench_scaleout(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
