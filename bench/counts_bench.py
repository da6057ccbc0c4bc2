"""Queue counts at millions of rows: the counters the triggers keep against a full GROUP BY, and
what an idle daemon costs on such a database.

    .venv/bin/python bench/counts_bench.py                       # 1M and 10M rows, SQLite and PostgreSQL
    .venv/bin/python bench/counts_bench.py --rows 1000000 --backend sqlite --idle-seconds 30

For each backend and size it fills a fresh database with that many done rows (plus a few queued,
running and failed ones), then measures, in one run:

* ``store.counts()`` (the counters; what status, STATUS= and the metrics read every 2 s) against
  the ``SELECT status, count(*) ... GROUP BY status`` it replaced, median of several calls;
* a real idle daemon on that database: the CPU it uses over ``--idle-seconds`` (daemon,
  forkserver and workers, from /proc), and the latency of ``{"cmd": "status"}`` on its control
  socket (median and worst of 20 requests).

PostgreSQL runs against ``--pg-admin`` (default postgresql://postgres@127.0.0.1:5432/postgres);
a scratch database is created and dropped. Prints a table; with ``--output`` also markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PYTHON, REPO, Table, Workdir, write_config  # noqa: E402

sys.path.insert(0, REPO)
from videofetchd.queue.store import open_store  # noqa: E402

DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
EXTRA = {"queued": 1000, "failed": 500, "missing": 100}


def fill_sqlite(path: str, rows: int) -> str:
    url = f"sqlite:///{path}"
    st = open_store(url)
    try:
        _fill(st, rows)
    finally:
        st.close()
    return url


def _fill(st, rows: int) -> None:  # type: ignore[no-untyped-def]
    """``rows`` done rows plus a few in the other states, in statements of 1M rows."""
    step = 1_000_000
    series = ("WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM c WHERE x < ?) SELECT x FROM c"
              if st.backend == "sqlite" else "SELECT x FROM generate_series(?::bigint, ?::bigint) AS c(x)")
    for start in range(0, rows, step):
        end = min(rows, start + step) - 1
        st.write("INSERT INTO videos (video_id, status, file_path, file_size, found_by, finished_at) "
                 f"SELECT 'v' || x, 'done', '/srv/videos/clip ' || x || '.mp4', 1000, 'download', 0 FROM ({series}) s",
                 [start, end])
    for status, n in EXTRA.items():  # queued rows not yet eligible: the daemon has nothing to claim
        st.write(f"INSERT INTO videos (video_id, status, run_after) SELECT '{status}' || x, '{status}', 4e9 "
                 f"FROM ({series}) s", [1, n])
    if st.backend == "postgres":
        st.db.execute_sql("VACUUM ANALYZE videos")


def time_calls(fn, n: int = 7) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_queries(url: str) -> tuple[float, float, dict[str, int]]:
    st = open_store(url)
    try:
        counters = time_calls(st.counts)
        full = time_calls(lambda: st.read("SELECT status, count(*) FROM videos GROUP BY status"), n=3)
        return counters, full, st.counts()
    finally:
        st.close()


def _tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _status_request(path: str) -> float:
    t = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b'{"cmd": "status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    json.loads(data)
    return time.perf_counter() - t


def measure_daemon(url: str, wd: Workdir, idle_s: float) -> tuple[float, float, float]:
    """(idle CPU in % of one core, median and worst status latency in ms) of a real daemon."""
    sock = wd.sub("control.sock")
    cfg = write_config(wd.sub("videofetchd.yaml"), db="unused.db", directory=wd.sub("videos"),
                       url_template="http://127.0.0.1:9/v/{id}.mp4", socket_path=sock, workers=4,
                       extra_database={"url": url, "poll_interval": "5s"})
    proc = subprocess.Popen([PYTHON, "-m", "videofetchd", "--config", cfg], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _status_request(sock)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start") from None
                time.sleep(0.1)
        ps = psutil.Process(proc.pid)
        time.sleep(3.0)  # let the start-up settle (first claims, first counts, children warm)
        c0, t0 = _tree_cpu(ps), time.monotonic()
        time.sleep(idle_s)
        cpu = 100 * (_tree_cpu(ps) - c0) / (time.monotonic() - t0)
        lat = [_status_request(sock) for _ in range(20)]
        return cpu, 1000 * statistics.median(lat), 1000 * max(lat)
    finally:
        proc.terminate()
        proc.wait(60)


def pg_database(admin: str) -> tuple[str, str]:
    import psycopg2
    name = f"vfd_bench_{uuid.uuid4().hex[:8]}"
    con = psycopg2.connect(admin)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    con.close()
    return name, admin.rsplit("/", 1)[0] + "/" + name


def drop_pg(admin: str, name: str) -> None:
    import psycopg2
    con = psycopg2.connect(admin)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    con.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, action="append", help="done rows (repeatable; default 1M and 10M)")
    p.add_argument("--backend", choices=("sqlite", "postgres"), action="append")
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument("--pg-admin", default=DEFAULT_PG_ADMIN)
    p.add_argument("--output", help="also write the table as markdown to this file")
    args = p.parse_args(argv)
    sizes = args.rows or [1_000_000, 10_000_000]
    backends = args.backend or ["sqlite", "postgres"]
    table = Table(f"queue counts and an idle daemon ({args.idle_seconds:g} s idle window)",
                  ["backend", "rows", "fill s", "counts() ms", "GROUP BY ms", "idle daemon CPU %",
                   "status median ms", "status worst ms", "counts exact"])
    for backend in backends:
        for rows in sizes:
            wd = Workdir(f"counts-{backend}-{rows}")
            pg_name = None
            try:
                t = time.monotonic()
                if backend == "sqlite":
                    url = fill_sqlite(wd.sub("queue.db"), rows)
                else:
                    pg_name, url = pg_database(args.pg_admin)
                    st = open_store(url)
                    try:
                        _fill(st, rows)
                    finally:
                        st.close()
                fill_s = time.monotonic() - t
                counters, full, counts = measure_queries(url)
                exact = counts == {"queued": EXTRA["queued"], "running": 0, "done": rows,
                                   "failed": EXTRA["failed"], "missing": EXTRA["missing"]}
                cpu, med, worst = measure_daemon(url, wd, args.idle_seconds)
                table.add(backend, f"{rows:,}", f"{fill_s:.0f}", f"{1000 * counters:.2f}", f"{1000 * full:.0f}",
                          f"{cpu:.2f}", f"{med:.1f}", f"{worst:.1f}", "yes" if exact else f"NO: {counts}")
                print(table.text(), flush=True)
            finally:
                wd.cleanup()
                if pg_name:
                    drop_pg(args.pg_admin, pg_name)
    table.note("idle daemon: 4 warm workers; the queued rows are not yet eligible, so nothing is claimed")
    print("\n" + table.text())
    if args.output:
        with open(args.output, "w") as f:
            f.write(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
