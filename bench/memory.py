"""Memory: the real daemon (8 workers) fed small files continuously; total PSS over its process tree.

``python -m videofetchd --config CFG`` runs in the foreground; the benchmark keeps the queue topped
up with ``videofetchd add --file -`` (batches, so the daemon never runs dry) and samples the
proportional set size (psutil ``memory_full_info().pss``) of the daemon, its forkserver, the
resource tracker and every worker child.  Targets: <= 400 MiB in total, and flat within 10% from
job ~1,000 to the end.  The daemon is stopped with SIGTERM (exit 0 expected).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import (KiB, MiB, MediaServer, Table, Workdir, db_counts, machine_busy, met, start_measured, tree_pss,
                    verify_files, vfd_cmd, write_config)

SIZE = 8 * KiB


def _status(cfg: str) -> dict:
    r = subprocess.run(vfd_cmd("status", "--json", "--config", cfg), capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else {}


def run(args: argparse.Namespace) -> list[Table]:
    total, workers, deadline_s = args.memory_jobs, 8, args.memory_timeout
    batch, low_water = 500, 1000
    wd = Workdir("memory", keep=args.keep)
    server = MediaServer(default_size=SIZE).start()
    t = Table(f"memory: daemon with {workers} workers, {total} x 8 KiB jobs fed continuously "
              "(total PSS of daemon + forkserver + resource tracker + workers)",
              ["sample", "jobs done", "elapsed s", "processes", "workers", "total PSS MiB", "total RSS MiB",
               "daemon PSS MiB", "forkserver PSS MiB", "workers PSS MiB", "largest worker PSS MiB",
               "jobs/s since last"])
    samples: list[tuple[int, float, int]] = []
    try:
        ids = [f"m{i:05d}" for i in range(total)]
        out = wd.fresh("out")
        cfg = write_config(wd.sub("cfg.yaml"), db=wd.sub("q.db"), directory=out, url_template=server.url_template,
                           socket_path=wd.sub("ctl.sock"), workers=workers,
                           extra_database={"poll_interval": "1s"})
        busy0, self0 = machine_busy()
        daemon = start_measured(vfd_cmd("--config", cfg), stderr=open(wd.sub("daemon.log"), "w"))
        fed = 0
        t0 = time.monotonic()
        while not _status(cfg).get("state") == "running":
            if daemon.proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"daemon did not start (rc {daemon.proc.poll()}); see {wd.sub('daemon.log')}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        print(f"  daemon ready after {ready_s:.2f}s", flush=True)
        next_sample, last = 1000, (0, time.monotonic())
        timed_out = False
        done = 0
        while True:
            counts = db_counts(wd.sub("q.db"))
            done = counts.get("done", 0) + counts.get("failed", 0)
            queued = counts.get("queued", 0)
            if fed < total and queued < low_water:
                chunk = ids[fed:fed + batch]
                subprocess.run(vfd_cmd("add", "--file", "-", "--config", cfg), input="\n".join(chunk) + "\n",
                               capture_output=True, text=True, timeout=60, check=True)
                fed += len(chunk)
            if done >= next_sample or done >= total:
                now = time.monotonic()
                pss, rss, detail = tree_pss(daemon.pid)
                daemon_pss = next((d[2] for d in detail if d[0] == daemon.pid), 0)
                servers = {d[0] for d in detail if d[3] == daemon.pid and "forkserver" in d[1]}
                workers_pss = [d[2] for d in detail if d[3] in servers]
                fs_pss = sum(d[2] for d in detail if d[0] in servers)
                rate = (done - last[0]) / (now - last[1]) if now > last[1] else 0.0
                samples.append((done, now - t0, pss))
                t.add(len(samples), done, f"{now - t0:.1f}", len(detail), len(workers_pss), f"{pss / MiB:.1f}",
                      f"{rss / MiB:.1f}", f"{daemon_pss / MiB:.1f}", f"{fs_pss / MiB:.1f}",
                      f"{sum(workers_pss) / MiB:.1f}", f"{max(workers_pss, default=0) / MiB:.1f}", f"{rate:.1f}")
                print(f"  {done} done: total PSS {pss / MiB:.1f} MiB over {len(detail)} processes "
                      f"(RSS {rss / MiB:.1f} MiB), {rate:.1f} jobs/s", flush=True)
                last = (done, now)
                next_sample = (done // 1000 + 1) * 1000
            if done >= total:
                break
            if time.monotonic() - t0 > deadline_s:
                timed_out = True
                break
            time.sleep(0.25)
        st = _status(cfg)
        rc, wall, cpu = daemon.finish()
        busy1, self1 = machine_busy()
        bg = max(0.0, (busy1 - busy0) - (self1 - self0) - cpu) / wall
        ok, bad = verify_files(out, server, ids[:done]) if done else (0, [])
        s1000 = next((s for s in samples if s[0] >= 1000), samples[0] if samples else None)
        end = samples[-1] if samples else None
        ta = Table("memory: targets", ["target", "measured", "met"])
        if s1000 and end:
            peak = max(s[2] for s in samples)
            growth = (end[2] - s1000[2]) / s1000[2]
            ta.add("total PSS <= 400 MiB (max over samples)", f"{peak / MiB:.1f} MiB", met(peak <= 400 * MiB))
            ta.add(f"flat within 10% from job {s1000[0]} to job {end[0]}", f"{100 * growth:+.1f}%",
                   met(abs(growth) <= 0.10))
        ta.add("SIGTERM -> exit 0", f"exit {rc}", met(rc == 0))
        ta.add(f"all {total} jobs done within {deadline_s:.0f}s",
               f"{done} done" + (" (timed out)" if timed_out else ""), met(done >= total and not timed_out))
        ta.add("sha256 of every file", f"{ok}/{done} ok" + (f"; {bad[:3]}" if bad else ""),
               met(not bad and ok == done))
        c = st.get("counters", {})
        t.note(f"daemon: ready after {ready_s:.2f}s, wall {wall:.1f}s, tree CPU {cpu:.1f}s "
               f"({1000 * cpu / max(done, 1):.1f} ms/job), overall {done / wall:.1f} jobs/s, bg load {bg:.2f} cores; "
               f"counters at the end: {json.dumps(c)}")
        t.note("download.recycle_after_jobs is the default (500): each worker child is replaced after 500 jobs, "
               "so the samples include freshly recycled children.")
        t.note(f"`{daemon.cmd}`; fed with `videofetchd add --file - --config CFG` in batches of {batch} whenever "
               f"fewer than {low_water} rows were queued; PSS = sum of psutil memory_full_info().pss over "
               "psutil.Process(daemon).children(recursive=True) + the daemon.")
        return [t, ta]
    finally:
        server.stop()
        wd.cleanup()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory")
    g.add_argument("--memory-jobs", type=int, default=10000, help="jobs fed to the daemon (default 10000)")
    g.add_argument("--memory-timeout", type=float, default=900.0, help="give up after this many seconds (900)")


if __name__ == "__main__":
    sys.exit("run through bench/run.py --only memory")
