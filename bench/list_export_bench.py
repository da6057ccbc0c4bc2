"""Benchmark ``videofetchctl list`` and ``export`` on a queue of a million rows.

Fills a fresh SQLite database (and, with --pg, a fresh PostgreSQL database) with N rows (default
1,000,000: 80 % done with a file path, 10 % failed with an error, 10 % queued), then runs each
command as a whole ``python -m videofetchd`` process writing into a pipe that this script drains,
and reports the time to the first line, the wall time to the end and the process's peak RSS
(``VmHWM`` of /proc/PID/status, read every 20 ms: ``ru_maxrss`` would include this script's
own memory, which the child shares until it executes Python). The database's own command-line
client dumping the same columns (``sqlite3 -csv``, ``psql COPY ... TO STDOUT``) runs in the same
table for comparison.

    .venv/bin/python bench/list_export_bench.py [--rows 1000000] [--runs 3] [--pg postgresql://...] [--keep DIR]

Targets (issue 15): peak RSS under 100 MiB and the first line within a second, for list and export.
Wall times depend on how busy the machine is; each row is the median of --runs runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PYTHON, REPO, Table  # noqa: E402

MiB = 1024 * 1024
TARGET_RSS = 100 * MiB
TARGET_FIRST_LINE_S = 1.0


@dataclass
class Run:
    first_line_s: float
    wall_s: float
    peak_rss: int
    lines: int
    out_bytes: int


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` with stdout into a pipe drained here; time the first line and the end; peak RSS."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    hwm = HighWater(proc.pid)
    first = None
    lines = size = 0
    while True:
        chunk = proc.stdout.read1(1 << 20)
        if not chunk:
            break
        if first is None and b"\n" in chunk:
            first = time.monotonic() - t0
        lines += chunk.count(b"\n")
        size += len(chunk)
    err = proc.stderr.read()
    code = proc.wait()
    wall = time.monotonic() - t0
    hwm.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.decode(errors='replace')[-2000:]}")
    return Run(first or wall, wall, hwm.peak, lines, size)


class HighWater(threading.Thread):
    """Follows VmHWM (the peak resident set of the process's own memory map) until the process ends."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/status"
        self.peak = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                with open(self.path) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                            break
                    else:
                        return  # a zombie has no memory map any more
            except OSError:
                return
            time.sleep(0.02)


def fill_sqlite(path: str, rows: int) -> None:
    subprocess.run([PYTHON, "-c", "import sys; from videofetchd.queue.store import open_store; "
                    "open_store('sqlite:///' + sys.argv[1]).close()", path], check=True, cwd=REPO)
    con = sqlite3.connect(path)
    with con:
        con.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
            INSERT INTO videos (video_id, status, attempts, file_path, file_size, found_by, last_error,
                                error_kind, finished_at)
            SELECT printf('vid%08d', i),
                   CASE i % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'queued' ELSE 'done' END,
                   CASE i % 10 WHEN 1 THEN 0 ELSE 1 END,
                   CASE WHEN i % 10 > 1 THEN printf('/srv/media/channel %d/Some video title %d [vid%08d].mp4',
                                                    i % 500, i, i) END,
                   CASE WHEN i % 10 > 1 THEN 10000000 + i END,
                   CASE WHEN i % 10 > 1 THEN 'download' END,
                   CASE i % 10 WHEN 0 THEN 'ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found' END,
                   CASE i % 10 WHEN 0 THEN 'permanent' END,
                   CASE WHEN i % 10 != 1 THEN 1764547200 + i END
            FROM n""")
    con.close()


def fill_pg(url: str, rows: int) -> None:
    subprocess.run([PYTHON, "-c", "import sys; from videofetchd.queue.store import open_store; "
                    "open_store(sys.argv[1]).close()", url], check=True, cwd=REPO)
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", f"""
        ALTER TABLE videos DISABLE TRIGGER videos_notify;
        INSERT INTO videos (video_id, status, attempts, file_path, file_size, found_by, last_error, error_kind,
                            finished_at)
        SELECT format('vid%s', lpad(i::text, 8, '0')),
               CASE i % 10 WHEN 0 THEN 'failed' WHEN 1 THEN 'queued' ELSE 'done' END,
               CASE i % 10 WHEN 1 THEN 0 ELSE 1 END,
               CASE WHEN i % 10 > 1 THEN format('/srv/media/channel %s/Some video title %s [vid%s].mp4',
                                                i % 500, i, lpad(i::text, 8, '0')) END,
               CASE WHEN i % 10 > 1 THEN 10000000 + i END,
               CASE WHEN i % 10 > 1 THEN 'download' END,
               CASE i % 10 WHEN 0 THEN 'ERROR: [generic] Unable to download webpage: HTTP Error 404: Not Found' END,
               CASE i % 10 WHEN 0 THEN 'permanent' END,
               CASE WHEN i % 10 != 1 THEN 1764547200 + i END
        FROM generate_series(1, {rows}) AS i;
        ALTER TABLE videos ENABLE TRIGGER videos_notify;
        ANALYZE videos;"""], check=True)


def config(tmp: str, url: str) -> str:
    path = os.path.join(tmp, f"vfd-{abs(hash(url))}.yaml")
    with open(path, "w") as f:
        f.write(f"database: {{url: '{url}'}}\ncontrol: {{socket: '{tmp}/c.sock'}}\n")
    return path


COLUMNS = "video_id, status, attempts, error_kind, last_error, file_path, file_size, found_by, finished_at"


def cases(cfg: str, backend: str, url: str, db_path: str | None, rows: int) -> list[tuple[str, list[str]]]:
    vfd = [PYTHON, "-m", "videofetchd"]
    middle = f"vid{rows // 2:08d}"
    out = [
        ("videofetchctl list", [*vfd, "list", "--config", cfg]),
        ("videofetchctl list --json", [*vfd, "list", "--json", "--config", cfg]),
        ("videofetchctl list --status failed", [*vfd, "list", "--status", "failed", "--config", cfg]),
        (f"videofetchctl list --limit 50 --after {middle}", [*vfd, "list", "--limit", "50", "--after", middle,
                                                             "--config", cfg]),
        ("videofetchctl export (jsonl)", [*vfd, "export", "--config", cfg]),
        ("videofetchctl export --format csv", [*vfd, "export", "--format", "csv", "--config", cfg]),
    ]
    if backend == "sqlite" and shutil.which("sqlite3") and db_path:
        out.append(("sqlite3 -csv (same columns)", ["sqlite3", "-csv", db_path,
                                                    f"SELECT {COLUMNS} FROM videos ORDER BY id"]))
    if backend == "postgres" and shutil.which("psql"):
        out.append(("psql COPY TO STDOUT CSV (same columns)",
                    ["psql", "-q", url, "-c", f"COPY (SELECT {COLUMNS} FROM videos ORDER BY id) TO STDOUT CSV"]))
    return out


def bench(table: Table, backend: str, url: str, db_path: str | None, tmp: str, runs: int, rows: int) -> bool:
    cfg = config(tmp, url)
    ok = True
    for name, cmd in cases(cfg, backend, url, db_path, rows):
        results = [measure(cmd) for _ in range(runs)]
        first = statistics.median(r.first_line_s for r in results)
        wall = statistics.median(r.wall_s for r in results)
        rss = max(r.peak_rss for r in results)
        ours = name.startswith("videofetchctl")
        met = (rss < TARGET_RSS and first < TARGET_FIRST_LINE_S) if ours else None
        ok = ok and met is not False
        table.add(backend, name, f"{results[0].lines:,}", f"{first:.3f}", f"{wall:.2f}",
                  f"{results[0].lines / wall:,.0f}", f"{rss / MiB:.1f}", {True: "yes", False: "NO", None: ""}[met])
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg", metavar="URL", help="also a fresh database on this PostgreSQL server (admin URL)")
    ap.add_argument("--keep", metavar="DIR", help="build the SQLite database once into DIR and reuse it")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="vfd-listbench-")
    os.makedirs(tmp, exist_ok=True)
    table = Table(f"list and export, {args.rows:,} rows (median of {args.runs}; RSS: peak of the process)",
                  ["backend", "command", "lines", "first line s", "wall s", "lines/s", "peak RSS MiB",
                   "< 100 MiB and < 1 s"])
    ok = True
    try:
        db_path = os.path.join(tmp, f"queue-{args.rows}.db")
        if not os.path.exists(db_path):
            t0 = time.monotonic()
            fill_sqlite(db_path, args.rows)
            print(f"filled {db_path} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        ok = bench(table, "sqlite", f"sqlite:///{db_path}", db_path, tmp, args.runs, args.rows)
        if args.pg:
            sys.path.insert(0, os.path.join(REPO, "tests"))
            from pg import fresh_database
            with fresh_database(args.pg) as url:
                t0 = time.monotonic()
                fill_pg(url, args.rows)
                print(f"filled a PostgreSQL database in {time.monotonic() - t0:.1f}s", file=sys.stderr)
                ok = bench(table, "postgres", url, None, tmp, args.runs, args.rows) and ok
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    table.note("each command is a whole process (interpreter start included), its stdout a pipe drained at once")
    table.note(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; other work may share it")
    print(table.text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
