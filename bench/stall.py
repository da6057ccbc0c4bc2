"""Stall: a download that hangs mid-body (connection open, no more bytes).

The server sends half of a 2 MiB file and then hangs.  How long is the download slot held, from
the moment the stall starts (server side) until the slot is free again?
  * videofetchd (one-shot fetch, 1 worker, ``stall_timeout: 5s``, ``retry_backoff: 1s``): until the
    child is killed and the row is back in ``queued``; the retry then resumes and completes.
  * plain ``yt-dlp URL`` with default options: a stall that happens once (yt-dlp recovers after its
    socket timeout, then resumes), and a stall on every request, each resumed request hanging again
    after 64 KiB (socket timeout x retries), capped at ``--stall-cap`` seconds.
Every completed file's sha256 is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil

from common import (MiB, YTDLP, MediaServer, Table, Workdir, verify_files, vfd_cmd, write_config)

SIZE = 2 * MiB
POLL_S = 0.01
PERSISTENT_AFTER = 64 * 1024  # every (resumed) request hangs after this many body bytes


def _row_status(db: str, vid: str) -> str | None:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT status FROM videos WHERE video_id = ?", (vid,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _workers(root: int) -> set[int]:
    """Worker children: processes whose parent is a forkserver under ``root``."""
    out = set()
    try:
        for p in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "forkserver" in " ".join(p.parent().cmdline()):
                    out.add(p.pid)
    except psutil.Error:
        pass
    return out


def _vfd(server: MediaServer, wd: Workdir, stall_timeout: float) -> dict:
    vid = "stall-vfd"
    server.configure(vid, size=SIZE, stall_after=SIZE // 2, stall_times=1)
    out = wd.fresh("vfd", "out")
    db = wd.sub("vfd", "q.db")
    cfg = write_config(wd.sub("vfd", "cfg.yaml"), db=db, directory=out, url_template=server.url_template,
                       socket_path=wd.sub("vfd", "ctl.sock"), workers=1,
                       extra_download={"stall_timeout": f"{stall_timeout:g}s", "retry_backoff": "1s"})
    subprocess.run(vfd_cmd("add", vid, "--config", cfg), check=True, capture_output=True, timeout=60)
    cmd = vfd_cmd("fetch", "--num-workers", "1", "--config", cfg)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t_stall = t_killed = t_queued = t_released = None
    stalled_pid = None
    while proc.poll() is None and time.monotonic() - t0 < 120:
        now = time.monotonic()
        if t_stall is None and server.stalled_count > 0:
            t_stall = now
            ws = _workers(proc.pid)
            stalled_pid = min(ws) if ws else None
        if t_stall is not None:
            if t_released is None and server.stalled_count == 0:
                t_released = now
            if t_killed is None and stalled_pid is not None and not psutil.pid_exists(stalled_pid):
                t_killed = now
            if t_queued is None and _row_status(db, vid) in ("queued", "done"):
                t_queued = now
        time.sleep(POLL_S)
    try:
        log, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
    ok, bad = verify_files(out, server, [vid])
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "stall": t_stall, "killed": t_killed, "queued": t_queued,
            "released": t_released, "end": time.monotonic(), "ok": ok, "bad": bad,
            "requests": server.body_requests(vid), "log": log}


def _ytdlp(server: MediaServer, wd: Workdir, vid: str, times: int, cap: float, after: int = SIZE // 2) -> dict:
    server.configure(vid, size=SIZE, stall_after=after, stall_times=times)
    out = wd.fresh(vid)
    cmd = [YTDLP, server.url(vid), "-o", os.path.join(out, "%(id)s.%(ext)s"), "--no-progress", "-q"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    t_stall = t_released = None
    capped = False
    while proc.poll() is None:
        now = time.monotonic()
        if t_stall is None and server.stalled_count > 0:
            t_stall = now
        if t_stall is not None and t_released is None and server.stalled_count == 0:
            t_released = now
        if now - (t_stall or t0) > cap:
            capped = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            server.release_stalls()
            break
        time.sleep(POLL_S)
    log, _ = proc.communicate()
    ok, bad = verify_files(out, server, [vid])
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "stall": t_stall, "released": t_released,
            "end": time.monotonic(), "capped": capped, "ok": ok, "requests": server.body_requests(vid),
            "log": log}


def _d(a: float | None, b: float | None) -> str:
    return f"{b - a:.2f}" if a is not None and b is not None else "-"


def run(args: argparse.Namespace) -> list[Table]:
    cap, st = args.stall_cap, args.stall_timeout
    wd = Workdir("stall", keep=args.keep)
    server = MediaServer(default_size=SIZE).start()
    t = Table("stall: 2 MiB file, the server hangs after 1 MiB (connection kept open); times in seconds from "
              "the start of the stall",
              ["contender", "slot held (stall -> slot free)", "child killed", "row back in queue",
               "stalled connection closed", "job finished", "GETs for the file", "sha256 ok", "rc / note"])
    try:
        v = _vfd(server, wd, st)
        print(f"  videofetchd: killed {_d(v['stall'], v['killed'])}s, queued {_d(v['stall'], v['queued'])}s "
              f"after the stall start; rc {v['rc']}", flush=True)
        if v["rc"] != 0 or not v["ok"]:
            print(v["log"][-1500:])
        held = _d(v["stall"], v["queued"] if v["queued"] is not None else v["killed"])
        t.add(f"videofetchd fetch, stall_timeout {st:g}s (stall once)", held, _d(v["stall"], v["killed"]),
              _d(v["stall"], v["queued"]), _d(v["stall"], v["released"]), _d(v["stall"], v["end"]), v["requests"],
              f"{v['ok']}/1", f"rc {v['rc']}; retry_backoff 1s, resumed")
        t.note(f"`{v['cmd']}`")

        y1 = _ytdlp(server, wd, "stall-once", 1, cap)
        print(f"  yt-dlp (stall once): free after {_d(y1['stall'], y1['released'] or y1['end'])}s, done after "
              f"{_d(y1['stall'], y1['end'])}s; rc {y1['rc']}", flush=True)
        t.add("yt-dlp URL, default options (stall once)", _d(y1["stall"], y1["released"] or y1["end"]), "-", "-",
              _d(y1["stall"], y1["released"]), _d(y1["stall"], y1["end"]) if not y1["capped"] else f">{cap:.0f}",
              y1["requests"], f"{y1['ok']}/1", f"rc {y1['rc']}; socket timeout then resume")
        t.note(f"`{y1['cmd']}`")

        yn = _ytdlp(server, wd, "stall-always", 1000, cap, after=PERSISTENT_AFTER)
        print(f"  yt-dlp (stall every time): {'capped' if yn['capped'] else 'ended'} after "
              f"{_d(yn['stall'], yn['end'])}s; rc {yn['rc']}", flush=True)
        held_n = f">{cap:.0f}" if yn["capped"] else _d(yn["stall"], yn["end"])
        t.add(f"yt-dlp URL, default options (every request stalls after {PERSISTENT_AFTER >> 10} KiB)",
              held_n, "-", "-", "-", held_n,
              yn["requests"], f"{yn['ok']}/1",
              f"killed at the {cap:.0f}s cap" if yn["capped"] else f"rc {yn['rc']}: {yn['log'].strip()[-160:]}")
        t.note("'slot held' for videofetchd = stall start until the row is back in `queued` (the worker slot is "
               "free and rebuilt); for yt-dlp = until the stalled request is given up (stall once) or the process "
               "exits (stall every time). Per stall, videofetchd holds the slot for about stall_timeout + one "
               "supervisor tick (BUSY_TICK_S = 0.25 s) + the SIGTERM round trip; a persistent stall costs that "
               "per attempt, up to max_attempts with backoff in between, without holding the slot in between.")
        return [t]
    finally:
        server.release_stalls()
        server.stop()
        wd.cleanup()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stall")
    g.add_argument("--stall-timeout", type=float, default=5.0, help="videofetchd stall_timeout (default 5)")
    g.add_argument("--stall-cap", type=float, default=120.0, help="give up on plain yt-dlp after this (120)")


if __name__ == "__main__":
    sys.exit("run through bench/run.py --only stall")
