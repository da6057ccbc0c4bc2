"""Benchmark ``videofetchctl scan`` against ``find`` on a generated library.

Generates N files (default 100,000) in a nested tree: yt-dlp default names ``Title [ID].mp4``,
about 5% with ``.info.json`` sidecars, about 2% partial ``.part`` files. Times ``find DIR -type f |
wc -l`` (warm cache: run once first) and the whole ``python -m videofetchd scan DIR`` process
(start to exit, fresh SQLite database), prints a table and checks the number of done rows.

    .venv/bin/python bench/scan_bench.py [--files 100000] [--runs 3] [--keep DIR] [--profile]

With --keep the tree is generated once into DIR and reused by later runs; otherwise it lives in a
temporary directory that is removed at the end. Wall times depend on how busy the machine is; the
CPU column (user + sys of the scan process) is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import resource
import sqlite3
import string
import subprocess
import sys
import tempfile
import time

ID_CHARS = string.ascii_letters + string.digits + "-_"
TARGET_FILES_PER_S = 100_000
TARGET_FIND_RATIO = 5.0


def generate(root: str, n: int, seed: int = 1) -> int:
    """Write the tree; returns how many complete videos (done rows expected) it holds."""
    rng = random.Random(seed)
    videos = files = 0
    d = 0
    while files < n:
        channel = os.path.join(root, f"channel-{d // 20:03d}", f"season {d % 20:02d}")
        os.makedirs(channel, exist_ok=True)
        d += 1
        for _ in range(100):
            if files >= n:
                break
            vid = "".join(rng.choice(ID_CHARS) for _ in range(11))
            title = f"Some video title {rng.randrange(10**6)} (official) - part {rng.randrange(99)}"
            base = os.path.join(channel, f"{title} [{vid}]")
            r = rng.random()
            if r < 0.02:
                _write(base + ".mp4.part", b"x" * 10)
                files += 1
                continue
            _write(base + ".mp4", b"x" * rng.randrange(1, 64))
            files += 1
            videos += 1
            if r < 0.07 and files < n:
                info = {"id": vid, "title": title, "extractor": "youtube", "extractor_key": "Youtube",
                        "formats": [{"format_id": str(i), "url": f"https://example.invalid/{i}"} for i in range(20)]}
                _write(base + ".info.json", json.dumps(info).encode())
                files += 1
    return videos


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def timed(cmd: list[str], **kw: object) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of the children (user + sys), result)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--keep", metavar="DIR", help="use (and keep) this directory instead of a temp dir")
    ap.add_argument("--runs", type=int, default=3, help="scan runs (each on a fresh database); best is reported")
    ap.add_argument("--profile", action="store_true", help="also run the scan once under cProfile")
    args = ap.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="scanbench-")
    try:
        return run(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def run(args: argparse.Namespace, base: str) -> int:
    tree = os.path.join(base, "library")
    marker = os.path.join(base, "expected")
    if os.path.exists(marker):
        expected = int(open(marker).read())
    else:
        t0 = time.perf_counter()
        expected = generate(tree, args.files)
        open(marker, "w").write(str(expected))
        print(f"generated {args.files} files ({expected} videos) in {time.perf_counter() - t0:.1f}s")
    find_cmd = ["sh", "-c", f"find '{tree}' -type f | wc -l"]
    timed(find_cmd)  # warm the dentry/inode cache
    find_s, find_cpu, proc = min((timed(find_cmd) for _ in range(3)), key=lambda t: t[0])
    n_files = int(proc.stdout.strip())

    best = None
    for run in range(args.runs):
        db = os.path.join(base, f"q{run}.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        cfg = os.path.join(base, "bench.yaml")
        with open(cfg, "w") as fh:
            fh.write(f"database:\n  url: sqlite:///{db}\ndownload:\n  directory: {base}/dl\n"
                     f"control:\n  socket: {base}/ctl.sock\nlogging:\n  level: warning\n")
        cmd = [sys.executable, "-m", "videofetchd", "scan", tree, "--config", cfg, "--json"]
        scan_s, scan_cpu, proc = timed(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        done = sqlite3.connect(db).execute("SELECT count(*) FROM videos WHERE status = 'done'").fetchone()[0]
        if done != expected:
            print(f"FAIL: {done} done rows, expected {expected}", file=sys.stderr)
            return 1
        print(f"  run {run + 1}: {scan_s:.3f}s wall, {scan_cpu:.3f}s CPU", file=sys.stderr)
        if best is None or scan_s < best[0]:
            best = (scan_s, scan_cpu, json.loads(proc.stdout))
    assert best is not None
    scan_s, scan_cpu, report = best
    if args.profile:
        prof = os.path.join(base, "scan.prof")
        db = os.path.join(base, "qprof.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        with open(cfg, "w") as fh:
            fh.write(f"database:\n  url: sqlite:///{db}\ncontrol:\n  socket: {base}/ctl.sock\n")
        subprocess.run([sys.executable, "-m", "cProfile", "-o", prof, "-m", "videofetchd", "scan", tree,
                        "--config", cfg], check=True, capture_output=True)
        import pstats
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)

    rate = n_files / scan_s
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'what':<22} {'files':>8} {'seconds':>8} {'CPU s':>7} {'files/s':>10} {'x find':>7}")
    print(f"{'find -type f | wc -l':<22} {n_files:>8} {find_s:>8.3f} {find_cpu:>7.3f} {n_files / find_s:>10.0f} "
          f"{1.0:>7.2f}")
    print(f"{'videofetchctl scan':<22} {n_files:>8} {scan_s:>8.3f} {scan_cpu:>7.3f} {rate:>10.0f} "
          f"{scan_s / find_s:>7.2f}")
    print(f"done rows {expected} (verified); scan report: {report['videos_found']} videos, "
          f"{report['partial']} partial, in-process {report['elapsed_s']}s")
    ok = rate >= TARGET_FILES_PER_S and scan_s / find_s <= TARGET_FIND_RATIO
    print("targets (>= 100k files/s, <= 5x find):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
