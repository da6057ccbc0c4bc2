"""Egress identities against a site that allows N video starts per client address per minute.

    .venv/bin/python bench/identity_bench.py [--per-window 60] [--window 60] [--videos 60] [--budget 0.98]

The media server (tests/iplimit.py) answers HTTP 429 to a client address that starts more than
--per-window videos within any --window seconds (a probe and the download GET of one video are
one start). Three contenders, each with its own server and its own addresses of 127.0.0.0/8, so
that none inherits another's window, and --videos videos per address:

  1. ``videofetchctl fetch`` with one identity (source_address 127.0.0.2),
     ``max_per_hour`` = --budget x the address's allowance;
  2. the same with three identities (127.0.0.3, .4, .5), the same budget each;
  3. plain ``yt-dlp -a urls.txt --sleep-requests WINDOW/N --source-address 127.0.0.6``: one
     process sleeping exactly the allowance's interval before each video.

Steady videos/hour is what the server saw: for each address, (starts - 1) / (last start - first
start), summed over the addresses. End to end is videos / (process start to exit). Targets:
three identities >= 2.8x one, and within 5 % of the allowance of three addresses, with no 429.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PYTHON, YTDLP, Table, Workdir, vfd_cmd, write_config  # noqa: E402
from iplimit import AddressLimit, LimitedMediaServer  # noqa: E402

SCALE_TARGET = 2.8
ALLOWANCE_TARGET = 0.95


class Run:
    def __init__(self, name: str, addresses: list[str], videos: int, wall_s: float, limit: AddressLimit,
                 done: int) -> None:
        self.name, self.addresses, self.videos, self.wall_s, self.done = name, addresses, videos, wall_s, done
        self.refused = len(limit.refused())
        rate = 0.0
        for address in addresses:
            times = sorted(s.time for s in limit.admitted(address))
            if len(times) >= 2:
                rate += (len(times) - 1) / (times[-1] - times[0])
        self.per_hour = rate * 3600.0

    def row(self, allowance_per_hour: float) -> list[Any]:
        allowed = allowance_per_hour * len(self.addresses)
        return [self.name, len(self.addresses), f"{self.done}/{self.videos}", self.refused, f"{self.wall_s:.1f}",
                f"{self.per_hour:,.0f}", f"{100 * self.per_hour / allowed:.1f} %",
                f"{self.done / self.wall_s * 3600:,.0f}"]


def _server(args: argparse.Namespace) -> tuple[LimitedMediaServer, AddressLimit]:
    limit = AddressLimit(per_window=args.per_window, window=args.window)
    return LimitedMediaServer(limit, default_size=16 * 1024).start(), limit


def run_videofetchd(args: argparse.Namespace, work: Workdir, name: str, addresses: list[str]) -> Run:
    srv, limit = _server(args)
    try:
        home = work.fresh(name)
        per_hour = int(args.budget * args.per_window * 3600 / args.window)
        identities = [{"name": f"ip{a.rsplit('.', 1)[1]}", "source_address": a, "max_per_hour": per_hour}
                      for a in addresses]
        cfg = write_config(os.path.join(home, "vfd.yaml"), db=os.path.join(home, "q.db"),
                           directory=os.path.join(home, "videos"), url_template=srv.url_template,
                           socket_path=os.path.join(home, "c.sock"), workers=args.workers,
                           extra_download={"identities": identities, "throttle_cooldown": "10m"})
        ids = [f"{name}-{i:05d}" for i in range(args.videos * len(addresses))]
        subprocess.run(vfd_cmd("add", "--config", cfg, "--file", "-"), input="\n".join(ids), text=True,
                       check=True, capture_output=True)
        t0 = time.monotonic()
        r = subprocess.run(vfd_cmd("fetch", "--config", cfg, "--num-workers", str(args.workers)),
                           capture_output=True, text=True, timeout=len(ids) / len(addresses) * 3 + 120)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
        done = len([f for f in os.listdir(os.path.join(home, "videos")) if f.endswith(".mp4")])
        return Run(f"videofetchctl fetch, {len(addresses)} identit{'y' if len(addresses) == 1 else 'ies'}",
                   addresses, len(ids), wall, limit, done)
    finally:
        srv.stop()


def run_ytdlp(args: argparse.Namespace, work: Workdir, address: str) -> Run:
    srv, limit = _server(args)
    try:
        home = work.fresh("ytdlp")
        urls = os.path.join(home, "urls.txt")
        ids = [f"yt-{i:05d}" for i in range(args.videos)]
        with open(urls, "w") as f:
            f.write("\n".join(srv.url(i) for i in ids) + "\n")
        sleep = args.window / args.per_window
        t0 = time.monotonic()
        subprocess.run([YTDLP, "-a", urls, "--sleep-requests", f"{sleep:g}", "--source-address", address,
                        "-P", os.path.join(home, "videos"), "-o", "%(id)s.%(ext)s", "-q", "--no-progress",
                        "--ignore-errors"], capture_output=True, text=True, timeout=len(ids) * sleep * 3 + 120)
        wall = time.monotonic() - t0
        done = len([f for f in os.listdir(os.path.join(home, "videos")) if f.endswith(".mp4")])
        return Run(f"yt-dlp -a --sleep-requests {sleep:g}", [address], len(ids), wall, limit, done)
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-window", type=int, default=60, help="video starts the site allows per address")
    p.add_argument("--window", type=float, default=60.0, help="... within this many seconds")
    p.add_argument("--videos", type=int, default=60, help="videos per address and contender")
    p.add_argument("--budget", type=float, default=0.98, help="max_per_hour as a fraction of the allowance")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)
    if not os.path.exists(PYTHON):
        print("run `make venv` first", file=sys.stderr)
        return 2
    allowance = args.per_window * 3600.0 / args.window
    print(f"site allowance: {args.per_window} video starts per address per {args.window:g} s "
          f"= {allowance:,.0f} videos/hour per address; identity budget {args.budget:.0%} of it", flush=True)
    work = Workdir("identities", keep=args.keep)
    try:
        one = run_videofetchd(args, work, "one", ["127.0.0.2"])
        print(f"  done: {one.name}", flush=True)
        three = run_videofetchd(args, work, "three", ["127.0.0.3", "127.0.0.4", "127.0.0.5"])
        print(f"  done: {three.name}", flush=True)
        plain = run_ytdlp(args, work, "127.0.0.6")
        print(f"  done: {plain.name}", flush=True)
    finally:
        work.cleanup()
    table = Table("videos per hour under a per-address limit (steady: as the server saw the starts)",
                  ["contender", "addresses", "videos", "429s", "wall s", "steady videos/h", "of allowance",
                   "end-to-end videos/h"])
    for run in (one, three, plain):
        table.add(*run.row(allowance))
    print("\n" + table.text())
    scale = three.per_hour / one.per_hour if one.per_hour else 0.0
    share = three.per_hour / (3 * allowance)
    targets = Table("targets", ["target", "measured", "met"])
    targets.add(f"3 identities >= {SCALE_TARGET}x one", f"{scale:.2f}x", "yes" if scale >= SCALE_TARGET else "NO")
    targets.add(f"3 identities within {1 - ALLOWANCE_TARGET:.0%} of the allowance", f"{share:.1%}",
                "yes" if share >= ALLOWANCE_TARGET else "NO")
    targets.add("no 429 for videofetchd", f"{one.refused + three.refused}",
                "yes" if one.refused + three.refused == 0 else "NO")
    print("\n" + targets.text())
    ok = scale >= SCALE_TARGET and share >= ALLOWANCE_TARGET and one.refused + three.refused == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
