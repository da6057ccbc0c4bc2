"""Bandwidth-bound: 16 x 8 MiB, the server throttled to 2 MiB/s per connection, 8 at a time.

The ideal is 8 x 2 = 16 MiB/s.  First a plain parallel urllib client (8 threads, separate process)
measures what the media server itself can deliver, throttled and unthrottled; then videofetchd
(one-shot fetch, 8 workers) and ``xargs -P 8 -n 1 yt-dlp``.  Aggregate MiB/s is reported end to end
(process start to exit) and over the transfer window (first body byte to last body byte, sampled
from the server's byte counter).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from common import (MiB, PYTHON, YTDLP, ByteSampler, MediaServer, Table, Workdir, run_measured, verify_files,
                    vfd_cmd, write_config)

_URLLIB_CLIENT = r"""
import sys, time, urllib.request, concurrent.futures as cf
urls = sys.argv[2:]; par = int(sys.argv[1])
def get(u):
    n = 0
    with urllib.request.urlopen(u, timeout=60) as r:
        while True:
            b = r.read(1 << 16)
            if not b:
                return n
            n += len(b)
t = time.perf_counter()
with cf.ThreadPoolExecutor(par) as ex:
    total = sum(ex.map(get, urls))
print(total, time.perf_counter() - t)
"""


def _urllib(server: MediaServer, ids: list[str], par: int) -> tuple[float, float]:
    """(MiB/s, seconds) of a plain parallel urllib download in a separate process."""
    r = subprocess.run([PYTHON, "-c", _URLLIB_CLIENT, str(par), *[server.url(v) for v in ids]],
                       capture_output=True, text=True, timeout=300, check=True)
    total, secs = r.stdout.split()
    return int(total) / MiB / float(secs), float(secs)


def run(args: argparse.Namespace) -> list[Table]:
    n, size, rate, workers = args.bw_files, args.bw_size_mib * MiB, int(args.bw_rate_mib * MiB), 8
    limit = workers * rate / MiB
    wd = Workdir("bandwidth", keep=args.keep)
    t = Table(f"bandwidth: {n} x {args.bw_size_mib} MiB, {args.bw_rate_mib} MiB/s per connection, {workers} in "
              f"parallel (limit {limit:.0f} MiB/s)",
              ["contender", "wall s", "MiB/s end to end", "% of limit", "MiB/s transfer window", "% of limit (window)",
               "CPU s", "peak tree RSS MiB", "bg load cores", "sha256 ok", "note"])
    server = MediaServer(default_size=size, rate_bps=rate).start()
    try:
        ids = [f"bw{i:03d}" for i in range(n)]
        for v in ids:
            server.sha256(v)  # generate (and cache) the content before timing
        # the server's own ceiling
        free = MediaServer(default_size=size).start()
        try:
            for v in ids[:workers]:
                free.sha256(v)
            mbs, secs = _urllib(free, ids[:workers], workers)
            t.add(f"urllib, {workers} threads, server NOT throttled", f"{secs:.2f}", f"{mbs:.0f}", "-", "-", "-", "-",
                  "-", "-", "-", f"{workers} files: raw server ceiling")
        finally:
            free.stop()
        mbs, secs = _urllib(server, ids, workers)
        t.add(f"urllib, {workers} threads, throttled", f"{secs:.2f}", f"{mbs:.2f}", f"{100 * mbs / limit:.1f}%",
              "-", "-", "-", "-", "-", "-", "plain client: what the throttled server can deliver")
        print(f"  urllib throttled: {mbs:.2f} MiB/s", flush=True)

        total = n * size
        for name in ("videofetchd", "xargs"):
            out = wd.fresh(name, "out")
            if name == "videofetchd":
                cfg = write_config(wd.sub(name, "cfg.yaml"), db=wd.sub(name, "q.db"), directory=out,
                                   url_template=server.url_template, socket_path=wd.sub(name, "ctl.sock"),
                                   workers=workers)
                subprocess.run(vfd_cmd("add", *ids, "--config", cfg), check=True, capture_output=True, timeout=60)
                cmd: list[str] | str = vfd_cmd("fetch", "--num-workers", str(workers), "--config", cfg)
                label = f"videofetchd fetch --num-workers {workers}"
                shell = False
            else:
                urls = wd.sub(name, "urls.txt")
                with open(urls, "w") as f:
                    f.write("\n".join(server.url(v) for v in ids) + "\n")
                tmpl = os.path.join(out, "%(id)s.%(ext)s")
                cmd = f"xargs -P {workers} -n 1 {YTDLP} -o '{tmpl}' --no-progress -q < '{urls}'"
                label = f"xargs -P {workers} -n 1 yt-dlp"
                shell = True
            base = server.bytes_sent_total
            nreq0 = len(server.requests())
            sampler = ByteSampler(server)
            sampler.start()
            m = run_measured(cmd, shell=shell, timeout=max(120.0, 10 * total / (limit * MiB)))
            sampler.stop()
            ok, bad = verify_files(out, server, ids)
            if bad or m.returncode:
                print(f"  [{name}] rc={m.returncode} problems: {bad[:5]} {m.stderr[-600:]}")
            e2e = total / MiB / m.wall_s
            win = sampler.window(base, total)
            wmbs = total / MiB / (win[1] - win[0]) if win else float("nan")
            extra = server.bytes_sent_total - base - total
            starts = sorted(r.time for r in server.requests()[nreq0:]
                            if r.method == "GET" and r.video_id in ids and r.bytes_sent >= size // 2)
            wave = starts[:workers]
            spread = wave[-1] - wave[0] if len(wave) == workers else float("nan")
            t.add(label, f"{m.wall_s:.2f}", f"{e2e:.2f}", f"{100 * e2e / limit:.1f}%", f"{wmbs:.2f}",
                  f"{100 * wmbs / limit:.1f}%", f"{m.cpu_s:.2f}", f"{m.peak_tree_rss / MiB:.0f}", f"{m.bg_cores:.2f}",
                  f"{ok}/{n}", f"first {workers} downloads began within {spread:.2f}s of each other; "
                  f"body bytes beyond the files: {extra / MiB:.2f} MiB"
                  + (f"; first byte after {win[0] - sampler.samples[0][0]:.2f}s" if win else ""))
            print(f"  {label}: {m.wall_s:.2f}s, {e2e:.2f} MiB/s end to end, {wmbs:.2f} MiB/s in the transfer window",
                  flush=True)
            t.note(f"`{m.cmd}`")
        t.note("ideal wall time = files x size / limit = "
               f"{total / MiB / limit:.1f}s (+ start-up). 'transfer window' = first to last body byte as the server "
               "counted them (sampled every 20 ms); end to end includes process start-up and exit.")
        return [t]
    finally:
        server.stop()
        wd.cleanup()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bandwidth")
    g.add_argument("--bw-files", type=int, default=16, help="files (default 16)")
    g.add_argument("--bw-size-mib", type=int, default=8, help="MiB per file (default 8)")
    g.add_argument("--bw-rate-mib", type=float, default=2.0, help="MiB/s per connection (default 2)")


if __name__ == "__main__":
    sys.exit("run through bench/run.py --only bandwidth")
