"""Benchmark ``videofetchctl scan`` against ``find`` on a generated library.

Generates N files (default 100,000) in a nested tree: yt-dlp default names ``Title [ID].mp4``,
about 5% with ``.info.json`` sidecars, about 2% partial ``.part`` files. Times ``find DIR -type f |
wc -l`` (warm cache: run once first) and the whole ``python -m videofetchd scan DIR`` process
(start to exit, fresh SQLite database), then the same scan again on the filled database (a
rescan that finds nothing new), prints a table and checks the number of done rows. A second tree
(--big-sidecars, default 1,000 videos) gives every video a 390 KiB info.json shaped like yt-dlp's,
scanned next to a plain Python loop that json.loads every sidecar.

    .venv/bin/python bench/scan_bench.py [--files 100000] [--runs 3] [--keep DIR] [--big-sidecars N] [--modes]

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
    ap.add_argument("--modes", action="store_true",
                    help="also time the scan in this process with each walk mode (process, spawn, thread)")
    ap.add_argument("--big-sidecars", type=int, default=1000, metavar="N",
                    help=f"also scan N videos with {SIDECAR_KIB} KiB yt-dlp-style info.json sidecars (0: skip)")
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
    find_s, find_cpu, n_files = time_find(tree)
    rows = [("find -type f | wc -l", n_files, find_s, find_cpu, find_s)]

    fresh = rescan = None
    for i in range(args.runs):
        db = fresh_db(base, f"q{i}.db")
        first = scan(base, tree, db, expected)
        again = scan(base, tree, db, expected)  # the same tree, nothing changed
        print(f"  run {i + 1}: {first[0]:.3f}s wall, {first[1]:.3f}s CPU; rescan {again[0]:.3f}s", file=sys.stderr)
        fresh = first if fresh is None or first[0] < fresh[0] else fresh
        rescan = again if rescan is None or again[0] < rescan[0] else rescan
    assert fresh is not None and rescan is not None
    rows.append(("videofetchctl scan", n_files, fresh[0], fresh[1], find_s))
    rows.append(("  rescan, no change", n_files, rescan[0], rescan[1], find_s))
    report = fresh[2]

    if args.big_sidecars:
        big = os.path.join(base, "sidecars")
        if not os.path.isdir(big):
            generate_big_sidecars(big, args.big_sidecars)
        b_find, b_find_cpu, b_files = time_find(big)
        rows.append((f"find, {SIDECAR_KIB} KiB sidecars", b_files, b_find, b_find_cpu, b_find))
        best = min((scan(base, big, fresh_db(base, f"big{i}.db"), args.big_sidecars) for i in range(args.runs)),
                   key=lambda t: t[0])
        rows.append(("videofetchctl scan", b_files, best[0], best[1], b_find))
        parse = [sys.executable, "-c", "import json, pathlib, sys\n"
                 "for p in pathlib.Path(sys.argv[1]).rglob('*.info.json'): json.loads(p.read_bytes())", big]
        p_s, p_cpu, _ = min((timed(parse) for _ in range(args.runs)), key=lambda t: t[0])
        rows.append(("  json.loads each sidecar", b_files, p_s, p_cpu, b_find))

    if args.modes:
        rows += walk_modes(base, tree, args.runs, find_s, n_files)

    if args.profile:
        prof = os.path.join(base, "scan.prof")
        cfg = write_config(base, fresh_db(base, "qprof.db"))
        subprocess.run([sys.executable, "-m", "cProfile", "-o", prof, "-m", "videofetchd", "scan", tree,
                        "--config", cfg], check=True, capture_output=True)
        import pstats
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; best of {args.runs} runs")
    print(f"{'what':<30} {'files':>8} {'seconds':>8} {'CPU s':>7} {'files/s':>10} {'x find':>7}")
    for what, files, wall, cpu, ref in rows:
        print(f"{what:<30} {files:>8} {wall:>8.3f} {cpu:>7.3f} {files / wall:>10.0f} {wall / ref:>7.2f}")
    print(f"done rows {expected} (verified); scan report: {report['videos_found']} videos, "
          f"{report['partial']} partial, in-process {report['elapsed_s']}s")
    rate = n_files / fresh[0]
    ok = rate >= TARGET_FILES_PER_S and fresh[0] / find_s <= TARGET_FIND_RATIO
    print(f"targets (>= {TARGET_FILES_PER_S} files/s, <= {TARGET_FIND_RATIO:.0f}x find):",
          "met" if ok else "NOT met")
    return 0


Row = tuple[str, int, float, float, float]  #: what, files, wall s, CPU s, reference (find) s


def walk_modes(base: str, tree: str, runs: int, find_s: float, n_files: int) -> list[Row]:
    """scan_directories() in this process with each walk mode (what the daemon runs: it has
    threads, so "auto" means spawn there): a fresh database, then the same tree again."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from videofetchd.config import ScanConfig
    from videofetchd.library.scan import scan_directories
    from videofetchd.queue.store import open_store
    rows = []
    for mode in ("process", "spawn", "thread"):
        best = [float("inf"), float("inf")]
        for i in range(runs):
            store = open_store(f"sqlite:///{fresh_db(base, f'mode-{mode}.db')}")
            try:
                for j in range(2):
                    t0 = time.perf_counter()
                    scan_directories(store, [tree], ScanConfig(), walk_in=mode)  # type: ignore[arg-type]
                    best[j] = min(best[j], time.perf_counter() - t0)
            finally:
                store.close()
        rows.append((f"in-process, {mode} walk", n_files, best[0], float("nan"), find_s))
        rows.append((f"  {mode} walk, rescan", n_files, best[1], float("nan"), find_s))
    return rows


def time_find(tree: str) -> tuple[float, float, int]:
    """Best of three warm-cache runs of find | wc -l: (wall, CPU, files)."""
    find_cmd = ["sh", "-c", f"find '{tree}' -type f | wc -l"]
    timed(find_cmd)  # warm the dentry/inode cache
    wall, cpu, proc = min((timed(find_cmd) for _ in range(3)), key=lambda t: t[0])
    return wall, cpu, int(proc.stdout.strip())


def fresh_db(base: str, name: str) -> str:
    db = os.path.join(base, name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    return db


def write_config(base: str, db: str) -> str:
    cfg = os.path.join(base, "bench.yaml")
    with open(cfg, "w") as fh:
        fh.write(f"database:\n  url: sqlite:///{db}\ndownload:\n  directory: {base}/dl\n"
                 f"control:\n  socket: {base}/ctl.sock\nlogging:\n  level: warning\n")
    return cfg


def scan(base: str, tree: str, db: str, expected: int) -> tuple[float, float, dict[str, object]]:
    """One ``videofetchctl scan`` process, start to exit: (wall, CPU, its JSON report)."""
    cmd = [sys.executable, "-m", "videofetchd", "scan", tree, "--config", write_config(base, db), "--json"]
    wall, cpu, proc = timed(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode != 0:
        sys.exit(f"scan failed:\n{proc.stdout}\n{proc.stderr}")
    done = sqlite3.connect(db).execute("SELECT count(*) FROM videos WHERE status = 'done'").fetchone()[0]
    if done != expected:
        sys.exit(f"FAIL: {done} done rows, expected {expected}")
    return wall, cpu, json.loads(proc.stdout)


SIDECAR_KIB = 390  #: a YouTube info.json with its formats and automatic captions is about this size


def generate_big_sidecars(root: str, n: int, seed: int = 2) -> None:
    """n videos, each with an info.json shaped and sized like yt-dlp's for a YouTube video."""
    rng = random.Random(seed)
    for i in range(n):
        d = os.path.join(root, f"channel-{i // 100:03d}")
        os.makedirs(d, exist_ok=True)
        vid = "".join(rng.choice(ID_CHARS) for _ in range(11))
        base = os.path.join(d, f"Some video title {i} [{vid}]")
        _write(base + ".mp4", b"x" * rng.randrange(1, 64))
        _write(base + ".info.json", json.dumps(_info_json(vid, rng)).encode())


def _info_json(vid: str, rng: random.Random) -> dict[str, object]:
    def url(host: str, n: int) -> str:
        return f"https://{host}/?" + "&".join(f"k{j}=v{rng.randrange(10**9)}" for j in range(n))
    formats = [{"format_id": str(i), "ext": "mp4", "protocol": "https", "vcodec": "avc1.4d401f", "acodec": "none",
                "url": url("rr1---sn-abc.googlevideo.com/videoplayback", 60), "width": 1280, "height": 720,
                "http_headers": {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Accept": "text/html"},
                "format": f"{i} - 1280x720 (720p)", "tbr": 1234.5, "filesize": 123456789} for i in range(40)]
    captions = {f"l{i}": [{"ext": ext, "url": url("www.youtube.com/api/timedtext", 20), "name": f"Language {i}"}
                          for ext in ("json3", "srv1", "srv2", "srv3", "ttml", "vtt")] for i in range(150)}
    return {"id": vid, "title": "Some video title", "formats": formats, "thumbnails": [
        {"url": "https://i.ytimg.com/vi/x/hq.jpg", "id": str(i)} for i in range(40)],
        "description": "words " * 500, "automatic_captions": captions, "subtitles": {}, "duration": 212,
        "extractor": "youtube", "extractor_key": "Youtube", "webpage_url": f"https://www.youtube.com/watch?v={vid}",
        "_type": "video"}


if __name__ == "__main__":
    sys.exit(main())
