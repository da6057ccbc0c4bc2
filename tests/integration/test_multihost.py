"""Several videofetchd daemons sharing one PostgreSQL queue, as real processes.

Each daemon is a real ``python -m videofetchd`` process with its own node name, control socket and
download directory; the media server (tests/mediaserver.py) counts every GET per video ID, so "each
video is downloaded once" is checked from the server's side (yt-dlp's generic extractor makes two
GETs per download: a probe and the download), and from the files on disk.

Needs a PostgreSQL server at 127.0.0.1:5432 (trust auth; see tests/pg.py, env VFD_TEST_PG_ADMIN).
Each test creates its own database (tests/pg.py fresh_database) and drops it afterwards. Locally
the tests skip when no server answers; under CI=true they fail instead. The restart test runs its
own throw-away cluster (initdb as user ``postgres``) on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from pg import ADMIN_URL, fresh_database
from pg import unavailable as _unavailable

pytestmark = pytest.mark.postgres

PG_BIN = Path(os.environ.get("VFD_PG_BIN", "/usr/lib/postgresql/15/bin"))
FINAL_FILE = re.compile(r"\[([^\]/]+)\]\.(mp4|webm|mkv)$")
GETS_PER_DOWNLOAD = 2  # yt-dlp's generic extractor: a probe GET, then the download GET


def _psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError:
        _unavailable("psycopg2 is not installed")
    return psycopg2


# -- databases --------------------------------------------------------------------------------


def _connect(url: str) -> Any:
    conn = _psycopg2().connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


class Db:
    """An autocommit connection to one test database, reconnecting after the test cut it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = _connect(url)

    def q(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        psycopg2 = _psycopg2()
        for attempt in range(2):
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall()) if cur.description else []
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt:
                    raise
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = _connect(self.url)
        raise AssertionError("unreachable")

    def counts(self) -> dict[str, int]:
        return {s: int(n) for s, n in self.q("SELECT status, count(*) FROM videos GROUP BY status")}

    def done(self) -> int:
        return self.counts().get("done", 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@pytest.fixture(scope="module")
def pg_admin() -> str:
    psycopg2 = _psycopg2()
    try:
        _connect(ADMIN_URL).close()
    except psycopg2.Error as exc:
        _unavailable(f"no PostgreSQL server answers at {ADMIN_URL}: {str(exc).strip()}")
    return ADMIN_URL


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    with fresh_database(pg_admin) as url:
        yield url


# -- daemons ----------------------------------------------------------------------------------


class Cluster:
    """Daemons (each with its own directory, socket and node name) against one database."""

    def __init__(self, tmp: Path, db_url: str, media: MediaServer) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.media = media
        self.daemons: list[vfd.Daemon] = []
        self.configs: list[Path] = []
        self.dirs: list[Path] = []
        self.nodes: list[str] = []

    def start(self, n: int, *, workers: int = 2, lease: str = "30s", poll: str = "0.5s",
              **download: Any) -> None:
        for i in range(len(self.daemons), len(self.daemons) + n):
            home = self.tmp / f"host{i}"
            home.mkdir()
            node = f"mh-node-{i}"
            cfg = vfd.write_config(
                home, url_template=self.media.url_template, db_url=self.db_url,
                database={"poll_interval": poll, "lease_duration": lease, "node_name": node},
                download={"workers": workers, "directory": str(home / "videos"), **download},
                control={"socket": str(home / "control.sock")})
            self.configs.append(cfg)
            self.dirs.append(home / "videos")
            self.nodes.append(node)
            self.daemons.append(vfd.Daemon(cfg))

    def alive(self) -> list[bool]:
        return [d.proc.poll() is None for d in self.daemons]

    def logs(self) -> str:
        out = []
        for node, d in zip(self.nodes, self.daemons):
            with contextlib.suppress(Exception):
                out.append(f"----- {node} (pid {d.pid}) -----\n{d.log()[-6000:]}")
        return "\n".join(out)

    def stop_all(self) -> list[int | None]:
        codes: list[int | None] = []
        for d in self.daemons:
            if d.proc.poll() is not None:
                codes.append(d.proc.returncode)
                with contextlib.suppress(Exception):
                    d._log.close()
                continue
            d.signal(signal.SIGINT)  # quick stop: running jobs go back to the queue
            try:
                codes.append(d.stop(timeout=30))
            except subprocess.TimeoutExpired:
                d.kill()
                codes.append(None)
        return codes

    def final_files(self) -> dict[str, list[Path]]:
        """video_id -> complete files (not .part/.ytdl) over every daemon's directory."""
        found: dict[str, list[Path]] = {}
        for directory in self.dirs:
            if not directory.exists():
                continue
            for path in directory.rglob("*"):
                m = FINAL_FILE.search(path.name)
                if m and path.is_file():
                    found.setdefault(m.group(1), []).append(path)
        return found


@pytest.fixture
def media() -> Iterator[MediaServer]:
    with MediaServer(default_size=16 * 1024) as srv:
        yield srv


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, media: MediaServer) -> Iterator[Cluster]:
    c = Cluster(tmp_path, pg_url, media)
    try:
        yield c
    finally:
        c.stop_all()


def insert_ids(pg: Db, prefix: str, n: int) -> list[str]:
    """Queue ``prefix-0001`` ... with one plain INSERT ... SELECT (the trigger NOTIFYs once)."""
    pg.q("INSERT INTO videos (video_id) SELECT %s || lpad(g::text, 4, '0') FROM generate_series(1, %s) g",
         (prefix + "-", n))
    return [f"{prefix}-{i:04d}" for i in range(1, n + 1)]


def gets_per_id(media: MediaServer, ids: list[str]) -> Counter[str]:
    return Counter({i: media.body_requests(i) for i in ids})


def wait_all_done(pg: Db, cluster: Cluster, n: int, timeout: float, killed: int | None = None) -> dict[str, int]:
    def check() -> dict[str, int] | None:
        alive = [a for i, a in enumerate(cluster.alive()) if i != killed]
        assert all(alive), f"a daemon died: {cluster.alive()}\n{cluster.logs()}"
        c = pg.counts()
        return c if c.get("done", 0) == n else None
    try:
        return wait_until(check, timeout=timeout, interval=0.2, message=f"not all {n} rows done")
    except AssertionError:
        print(cluster.logs())
        raise


def database_ok(cfg: Path) -> bool:
    """``status --json`` database.ok; the control socket itself must keep answering."""
    r = vfd.ctl(cfg, "status", "--json", timeout=20)
    assert r.returncode == 0, f"control socket stopped answering after the database outage: {r.stderr[-400:]}"
    return json.loads(r.stdout)["database"]["ok"] is True


def running_leases(pg: Db) -> dict[str, str]:
    return {v: o for v, o in pg.q("SELECT video_id, lease_owner FROM videos WHERE status = 'running'")}


# -- tests ------------------------------------------------------------------------------------


def assert_fetched_once(media: MediaServer, cluster: Cluster, ids: list[str], in_flight: set[str]) -> None:
    """One download (and one file) per ID, except IDs that were in flight when something broke:
    those may have been fetched twice."""
    gets = gets_per_id(media, ids)
    for v in ids:
        limit = 2 * GETS_PER_DOWNLOAD if v in in_flight else GETS_PER_DOWNLOAD
        assert 1 <= gets[v] <= limit, (v, gets[v], v in in_flight)
    files = cluster.final_files()
    assert sorted(files) == sorted(ids)
    for v, paths in files.items():
        assert len(paths) <= (2 if v in in_flight else 1), (v, paths)


def test_three_daemons_drain_600_ids_once_each(cluster: Cluster, media: MediaServer) -> None:
    cluster.start(3, workers=2)
    pg = Db(cluster.db_url)
    try:
        started = time.monotonic()
        ids = insert_ids(pg, "drain", 600)
        counts = wait_all_done(pg, cluster, 600, timeout=120)
        elapsed = time.monotonic() - started
        print(f"\n3 daemons x 2 workers drained 600 ids in {elapsed:.1f}s ({600 / elapsed:.0f}/s)")
        assert counts == {"done": 600}, counts

        gets = gets_per_id(media, ids)
        wrong = {i: n for i, n in gets.items() if n != GETS_PER_DOWNLOAD}
        assert not wrong, f"{len(wrong)} ids not fetched exactly once: {dict(list(wrong.items())[:10])}"

        files = cluster.final_files()
        assert sorted(files) == sorted(ids), "files on disk do not match the queue"
        dupes = {i: p for i, p in files.items() if len(p) != 1}
        assert not dupes, f"ids with several files: {dict(list(dupes.items())[:5])}"
        per_host = Counter(next(n for n, d in zip(cluster.nodes, cluster.dirs) if d in p[0].parents)
                           for p in files.values())
        print("files per daemon:", dict(per_host))
        assert set(per_host) == set(cluster.nodes), f"some daemon did no work: {dict(per_host)}"

        listed = json.loads(vfd.ctl(cluster.configs[0], "list", "--json").stdout)
        assert len(listed) == 600
        for row in listed:
            assert row["status"] == "done" and row["lease_owner"] is None, row
            assert row["file_path"] and Path(row["file_path"]).is_file(), row
            assert FINAL_FILE.search(row["file_path"]).group(1) == row["video_id"], row
            assert row["attempts"] == 1, row
        n_leases = pg.q("SELECT count(*) FROM videos WHERE lease_owner IS NOT NULL OR claim_token IS NOT NULL "
                        "OR lease_expires IS NOT NULL")[0][0]
        assert n_leases == 0

        completed = 0
        for cfg, node in zip(cluster.configs, cluster.nodes):
            st = wait_until(lambda: (s := vfd.status(cfg))["queue"].get("done") == 600 and s,
                            timeout=10, message="status queue counts did not catch up")
            assert st["node"] == node
            assert st["database"]["ok"] is True
            assert st["queue"].get("running", 0) == 0 and st["queue"].get("queued", 0) == 0
            completed += st["counters"]["completed"]
            assert st["counters"]["lost_leases"] == 0
        assert completed == 600
    finally:
        pg.close()
    assert cluster.stop_all() == [0, 0, 0]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_sigkill_one_daemon_others_take_over_after_lease(cluster: Cluster, media: MediaServer) -> None:
    n = 60
    media.rate_bps = 48 * 1024  # 16 KiB in ~0.35 s per download: the run lasts several seconds
    cluster.start(3, workers=2, lease="3s")
    pg = Db(cluster.db_url)
    try:
        children: list[psutil.Process] = []
        ids = insert_ids(pg, "kill", n)
        victim = cluster.daemons[0]
        victim_node = cluster.nodes[0]
        # lease_owner is "<node_name>:<pid>@<scope>"
        wait_until(lambda: len([o for o in running_leases(pg).values() if o.rpartition(":")[0] == victim_node]) == 2
                   and 10 <= pg.done() <= n - 20, timeout=30, interval=0.02,
                   message="victim never had two jobs in flight mid-run")
        # freeze it first: a stopped daemon records nothing more, so the jobs it holds now are
        # still in flight when it dies, however long the next two steps take
        os.kill(victim.pid, signal.SIGSTOP)
        children = _descendants(victim.pid)
        assert children, "the victim daemon has no children?"
        victim.kill()  # SIGKILL
        in_flight = {v for v, o in running_leases(pg).items() if o.rpartition(":")[0] == victim_node}
        killed_at = time.monotonic()
        print(f"\nkilled {victim_node}: in flight {sorted(in_flight)}; {len(children)} descendants")
        assert in_flight

        counts = wait_all_done(pg, cluster, n, timeout=90, killed=0)
        assert counts == {"done": n}, counts
        owners = dict(pg.q("SELECT video_id, file_path FROM videos"))
        for v in in_flight:
            assert cluster.dirs[0] not in Path(owners[v]).parents, f"{v} recorded by the killed daemon"
        taken_over = pg.q("SELECT finished_at FROM videos WHERE video_id = ANY(%s)", (sorted(in_flight),))
        print(f"in-flight rows done {time.monotonic() - killed_at:.1f}s after the kill")
        assert len(taken_over) == len(in_flight)

        assert_fetched_once(media, cluster, ids, in_flight)
        # nothing is still being served once all rows are done (an orphan would be mid-download)
        assert not [r for r in media.requests() if r.outcome == "in-progress"]
        assert cluster.alive()[1:] == [True, True]
        listed = json.loads(vfd.ctl(cluster.configs[1], "list", "--json").stdout)
        assert {r["status"] for r in listed} == {"done"}
        assert all(r["lease_owner"] is None for r in listed)

        # the killed daemon's worker children (and its forkserver) must die with it: an orphan would
        # finish (or keep retrying) its download outside any lease
        survivors = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in children if not _gone([p])]
        assert not survivors, f"descendants of the SIGKILLed daemon are still alive: {survivors}"
    finally:
        pg.close()
        for p in children:  # never leak orphans into the rest of the session
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_pg_terminate_backend_mid_run(cluster: Cluster, media: MediaServer) -> None:
    n = 90
    media.rate_bps = 64 * 1024
    cluster.start(3, workers=2, lease="6s")
    pg = Db(cluster.db_url)
    try:
        ids = insert_ids(pg, "term", n)
        wait_until(lambda: pg.done() >= 15, timeout=30, message="run did not start")
        dbname = cluster.db_url.rsplit("/", 1)[1]
        killed_total = 0
        for _ in range(2):  # twice: the second cut hits fresh connections made after the first
            killed = pg.q("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))
            killed_total += len(killed)
            done_then = pg.done()
            wait_until(lambda: pg.done() >= done_then + 5 or pg.done() == n, timeout=30,
                       message="no progress after pg_terminate_backend")
        print(f"\nterminated {killed_total} backends")
        assert killed_total >= 6  # 3 daemons x (store + LISTEN), twice
        counts = wait_all_done(pg, cluster, n, timeout=90)
        assert counts == {"done": n}
        gets = gets_per_id(media, ids)
        wrong = {v: g for v, g in gets.items() if g != GETS_PER_DOWNLOAD}
        assert not wrong, f"lost or duplicated downloads: {wrong}"
        files = cluster.final_files()
        assert sorted(files) == sorted(ids) and all(len(p) == 1 for p in files.values())
        assert all(cluster.alive())
        # the LISTEN connections came back (one per daemon), the control sockets still answer
        wait_until(lambda: pg.q("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                                "application_name = 'videofetchd-listen'", (dbname,))[0][0] == 3,
                   timeout=20, message="the daemons' LISTEN connections did not come back")
        for cfg in cluster.configs:
            wait_until(lambda: database_ok(cfg), timeout=30, message="database.ok did not come back")
        pg.q("INSERT INTO videos (video_id) VALUES ('term-after')")
        wait_until(lambda: pg.done() == n + 1, timeout=10, message="no pickup after reconnect")
    finally:
        pg.close()
    assert cluster.stop_all() == [0, 0, 0]


# -- a private PostgreSQL server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout)


class PrivatePg:
    """A throw-away PostgreSQL cluster (initdb) in a temporary folder, on a free local port."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            _unavailable(f"no initdb under {PG_BIN}")
        self.root = Path(tempfile.mkdtemp(prefix="vfd-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        r = _as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")
        assert r.returncode == 0, r.stdout + r.stderr
        self.opts = f"-k {self.root} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                            "-o", self.opts, "-w", *args, timeout=timeout)

    def start(self) -> None:
        r = self.ctl("start")
        assert r.returncode == 0, r.stdout + r.stderr + (self.root / "log").read_text()

    def restart(self) -> None:
        r = self.ctl("restart", "-m", "fast")
        assert r.returncode == 0, r.stdout + r.stderr

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", "-m", "immediate", timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg(pg_admin: str) -> Iterator[PrivatePg]:
    server = PrivatePg()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


def test_postgres_restart_mid_run(tmp_path: Path, private_pg: PrivatePg, media: MediaServer) -> None:
    n = 60
    media.rate_bps = 48 * 1024
    with fresh_database(private_pg.url) as url:
        cluster = Cluster(tmp_path, url, media)
        pg: Db | None = None
        try:
            cluster.start(2, workers=2, lease="6s")
            pg = Db(url)
            ids = insert_ids(pg, "restart", n)
            wait_until(lambda: pg.done() >= 10, timeout=30, message="run did not start")
            in_flight = set(running_leases(pg))
            seen_down: list[bool] = []
            t0 = time.monotonic()
            private_pg.restart()
            print(f"\npg_ctl restart -m fast took {time.monotonic() - t0:.1f}s; in flight: {len(in_flight)}")
            with contextlib.suppress(AssertionError):  # optional: a fast restart may go unnoticed
                wait_until(lambda: seen_down.append(
                    any(vfd.status(c)["database"]["ok"] is False for c in cluster.configs)) or seen_down[-1],
                    timeout=3, interval=0.05)
            print(f"a daemon reported database.ok=false: {any(seen_down)}")
            counts = wait_all_done(pg, cluster, n, timeout=90)
            assert counts == {"done": n}
            assert all(cluster.alive())
            assert_fetched_once(media, cluster, ids, in_flight)
            wait_until(lambda: pg.q("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                                    "application_name = 'videofetchd-listen'", (url.rsplit("/", 1)[1],))[0][0] == 2,
                       timeout=20, message="the daemons' LISTEN connections did not come back")
            for cfg in cluster.configs:
                wait_until(lambda: database_ok(cfg), timeout=30, message="database.ok did not come back")
        finally:
            if pg is not None:
                pg.close()
            codes = cluster.stop_all()
        assert codes == [0, 0]


def test_instant_pickup_of_a_plain_sql_insert(cluster: Cluster, media: MediaServer) -> None:
    cluster.start(1, workers=2, poll="30s")
    pg = Db(cluster.db_url)
    try:
        insert_ids(pg, "warm", 2)  # warm the children up; first jobs pay yt-dlp's start-up
        wait_until(lambda: pg.done() == 2, timeout=30, message="warm-up rows not done")
        wait_until(lambda: all(w["state"] == "idle" for w in vfd.status(cluster.configs[0])["workers"]),
                   timeout=10)
        delays = []
        for i in range(5):
            vid = f"instant-{i}"
            pg.q("INSERT INTO videos (video_id) VALUES (%s)", (vid,))  # autocommit: committed on return
            committed = time.monotonic()
            first = wait_until(lambda: next((r.time for r in media.requests() if r.video_id == vid), None),
                               timeout=10, interval=0.005, message=f"{vid} never requested")
            delays.append(first - committed)
            wait_until(lambda: pg.q("SELECT status FROM videos WHERE video_id = %s", (vid,))[0][0] == "done",
                       timeout=10)
        print(f"\ninsert-commit -> first GET: median {statistics.median(delays) * 1000:.0f} ms, "
              f"max {max(delays) * 1000:.0f} ms ({', '.join(f'{d * 1000:.0f}' for d in delays)})")
        assert max(delays) < 1.0, delays
    finally:
        pg.close()


def test_a_claim_that_times_out_is_not_leaked(cluster: Cluster, media: MediaServer) -> None:
    """A claim statement that outlives the daemon's database call timeout (10 s) still commits in
    the database thread afterwards; its rows must not stay 'running' under a lease that the
    daemon keeps renewing while no worker holds them."""
    cluster.start(1, workers=2, lease="30s")
    cfg = cluster.configs[0]
    pg = Db(cluster.db_url)
    locker = _connect(cluster.db_url)
    try:
        assert vfd.ctl(cfg, "pause").returncode == 0
        ids = insert_ids(pg, "slowclaim", 2)
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE videos IN EXCLUSIVE MODE")  # the next claim blocks on it
        blocked_at = time.monotonic()
        assert vfd.ctl(cfg, "resume").returncode == 0
        wait_until(lambda: vfd.status(cfg)["database"]["ok"] is False, timeout=20,
                   message="the blocked claim never timed out")
        locker.commit()  # the blocked claim now commits, after the daemon gave up on it
        print(f"\nlock held {time.monotonic() - blocked_at:.1f}s")
        try:
            wait_until(lambda: pg.done() == 2, timeout=45, interval=0.5, message="rows never done")
        except AssertionError:
            leaked = pg.q("SELECT video_id, status, lease_owner FROM videos")
            workers = [w["state"] for w in vfd.status(cfg)["workers"]]
            raise AssertionError(f"rows leaked by the timed-out claim: {leaked}; workers {workers}") from None
        assert [media.body_requests(v) for v in ids] == [GETS_PER_DOWNLOAD] * 2
    finally:
        locker.close()
        pg.close()


def test_restart_with_the_same_node_name_does_not_keep_dead_leases(cluster: Cluster, media: MediaServer) -> None:
    """A daemon SIGKILLed and started again with the same config (same database.node_name, as
    systemd's Restart= does) must not renew the leases of the jobs its predecessor lost."""
    media.rate_bps = 8 * 1024  # 16 KiB take ~2 s: both jobs are surely in flight when we kill
    cluster.start(1, workers=2, lease="3s")
    pg = Db(cluster.db_url)
    try:
        ids = insert_ids(pg, "reborn", 2)
        wait_until(lambda: all(media.body_requests(v) >= GETS_PER_DOWNLOAD for v in ids), timeout=20,
                   message="jobs never started")
        cluster.daemons[0].kill()
        assert set(running_leases(pg).values()) == {f"{cluster.nodes[0]}:{cluster.daemons[0].pid}@daemon"}
        media.rate_bps = None
        cluster.daemons[0] = vfd.Daemon(cluster.configs[0])  # same config, same node name
        try:
            wait_until(lambda: pg.done() == 2, timeout=20, interval=0.2, message="rows never done")
        except AssertionError:
            rows = pg.q("SELECT video_id, status, lease_owner, lease_expires - extract(epoch FROM clock_timestamp()) "
                        "FROM videos")
            raise AssertionError(f"the restarted daemon keeps its predecessor's leases alive: {rows}") from None
    finally:
        pg.close()
