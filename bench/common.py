"""Shared code for videofetchd's benchmarks (bench/run.py and its sub-benchmarks).

Everything here talks to 127.0.0.1 only: the media server (tests/mediaserver.py) runs in this
process, in threads, and every downloader under test is a subprocess.

CPU accounting: this process makes itself a *child subreaper* (PR_SET_CHILD_SUBREAPER), so
grandchildren that outlive their parent (videofetchd's forkserver, yt-dlp children of xargs, ...)
are re-parented to us and reaped here.  The user+sys of a whole process tree is then exactly the
``resource.getrusage(RUSAGE_CHILDREN)`` delta around the run, forkserver workers included.
Peak RSS is sampled (every 50 ms) as the sum over all our descendants; ``ru_maxrss`` (the largest
single process) is reported too.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
YTDLP = os.path.join(VENV_BIN, "yt-dlp")
RESULTS_DIR = os.path.join(REPO, "bench", "results")
MiB = 1024 * 1024
KiB = 1024

sys.path.insert(0, os.path.join(REPO, "tests"))
from mediaserver import MediaServer  # noqa: E402

__all__ = ["MediaServer", "Measured", "Table", "Workdir", "ensure_subreaper", "run_measured",
           "start_measured", "verify_files", "write_config", "vfd_cmd", "ytdlp_version", "median_of",
           "db_counts", "PYTHON", "YTDLP", "REPO", "MiB", "KiB", "RESULTS_DIR", "tree_pss",
           "ByteSampler", "completion_times", "machine_busy"]

_PR_SET_CHILD_SUBREAPER = 36


def ensure_subreaper() -> bool:
    """Re-parent orphaned descendants to this process so their CPU time is counted (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _proc_stat_busy() -> float:
    """Machine-wide busy CPU seconds so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rusage_children() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss * 1024


def _reap_orphans(keep: Iterable[int] = (), timeout: float = 10.0) -> list[int]:
    """Wait for every child of ours (re-parented orphans) except ``keep``; kill stragglers."""
    keep = set(keep)
    deadline = time.monotonic() + timeout
    killed: list[int] = []
    while True:
        kids = [p for p in psutil.Process().children() if p.pid not in keep]
        if not kids:
            return killed
        for p in kids:
            try:
                pid, _ = os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                continue
        if time.monotonic() > deadline:
            for p in kids:
                with contextlib.suppress(psutil.Error):
                    p.kill()
                    killed.append(p.pid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, 0)
            return killed
        time.sleep(0.02)


class _TreeSampler(threading.Thread):
    """Samples the summed RSS of all our descendants (the media server lives in threads of this
    process and is therefore not counted)."""

    def __init__(self, exclude: Iterable[int] = (), period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.exclude = set(exclude)
        self.period = period
        self.peak = 0
        self.peak_procs = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_evt.is_set():
            total = n = 0
            try:
                kids = me.children(recursive=True)
            except psutil.Error:
                kids = []
            for p in kids:
                if p.pid in self.exclude:
                    continue
                try:
                    total += p.memory_info().rss
                    n += 1
                except psutil.Error:
                    pass
            if total > self.peak:
                self.peak, self.peak_procs = total, n
            self._stop_evt.wait(self.period)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


@dataclasses.dataclass
class Measured:
    cmd: str
    returncode: int
    wall_s: float
    cpu_s: float
    peak_tree_rss: int  # sampled sum over the process tree
    max_proc_rss: int   # ru_maxrss delta: largest single reaped process (0 if not larger than before)
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    t_start: float = 0.0  # time.time() at start
    bg_cores: float = 0.0  # CPU used by *other* processes on the machine during the run, in cores


def _shell_text(cmd: Sequence[str] | str) -> str:
    if isinstance(cmd, str):
        return cmd
    import shlex
    return " ".join(shlex.quote(c) for c in cmd)


def run_measured(cmd: Sequence[str] | str, *, timeout: float, cwd: str | None = None,
                 stdin_text: str | None = None, env: dict[str, str] | None = None,
                 shell: bool = False, busy: Iterable[int] = ()) -> Measured:
    """Run ``cmd`` to completion and measure wall time, tree CPU (user+sys) and peak RSS.

    ``busy``: pids of our other live children (e.g. a daemon) not to reap or count.
    """
    busy = set(busy)
    sampler = _TreeSampler(exclude=busy)
    cpu0, maxrss0 = _rusage_children()
    sampler.start()
    busy0, self0, wall0 = _proc_stat_busy(), _self_cpu(), time.time()
    t0 = time.perf_counter()
    timed_out = False
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, shell=shell, text=True, start_new_session=True,
                            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    _reap_orphans(keep=busy)
    sampler.stop()
    cpu1, maxrss1 = _rusage_children()
    other = (_proc_stat_busy() - busy0) - (_self_cpu() - self0) - (cpu1 - cpu0)
    return Measured(_shell_text(cmd), proc.returncode, wall, cpu1 - cpu0, sampler.peak,
                    maxrss1 if maxrss1 > maxrss0 else 0, out, err, timed_out, wall0,
                    max(0.0, other) / wall if wall > 0 else 0.0)


def completion_times(directory: str, t_start: float, ext: str = "mp4") -> list[float]:
    """Seconds from ``t_start`` to each output file's mtime (= when it was finished), sorted."""
    out = []
    for name in os.listdir(directory):
        if name.endswith("." + ext):
            out.append(os.stat(os.path.join(directory, name)).st_mtime - t_start)
    return sorted(out)


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds, harness CPU seconds) now, for measuring background load around a span."""
    return _proc_stat_busy(), _self_cpu()


class Started:
    """A long-running measured child (the daemon): CPU is settled in finish()."""

    def __init__(self, cmd: Sequence[str], *, env: dict[str, str] | None = None,
                 stdout: Any = None, stderr: Any = None) -> None:
        self.cmd = _shell_text(cmd)
        self.cpu0, _ = _rusage_children()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL,
                                     stderr=stderr or subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> tuple[int | None, float, float]:
        """Signal, wait; returns (exit code or None if it had to be killed, wall, tree CPU)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        wall = time.perf_counter() - self.t0
        _reap_orphans()
        cpu1, _ = _rusage_children()
        return rc, wall, cpu1 - self.cpu0


def start_measured(cmd: Sequence[str], **kw: Any) -> Started:
    return Started(cmd, **kw)


def tree_pss(pid: int) -> tuple[int, int, list[tuple[int, str, int, int]]]:
    """(total PSS, total RSS, [(pid, name, pss, ppid)]) of ``pid`` and all its descendants."""
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
    total_pss = total_rss = 0
    detail = []
    for p in procs:
        try:
            m = p.memory_full_info()
            name = " ".join(p.cmdline()[1:4])[:60] or p.name()
            ppid = p.ppid()
        except psutil.Error:
            continue
        total_pss += m.pss
        total_rss += m.rss
        detail.append((p.pid, name, m.pss, ppid))
    return total_pss, total_rss, detail


class ByteSampler(threading.Thread):
    """Records (time, server.bytes_sent_total) every ``period`` seconds: gives the transfer window."""

    def __init__(self, server: MediaServer, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.samples.append((time.perf_counter(), self.server.bytes_sent_total))
            self._stop_evt.wait(self.period)
        self.samples.append((time.perf_counter(), self.server.bytes_sent_total))

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()

    def window(self, base: int, target: int) -> tuple[float, float] | None:
        """(first time bytes moved past ``base``, first time they reached ``base + target``)."""
        start = end = None
        prev_t = None
        for t, b in self.samples:
            if start is None and b > base:
                start = prev_t if prev_t is not None else t
            if end is None and b >= base + target:
                end = t
                break
            prev_t = t
        if start is None or end is None:
            return None
        return start, end


class Workdir:
    """A scratch directory for one benchmark (removed afterwards unless keep=True)."""

    def __init__(self, name: str, keep: bool = False) -> None:
        self.path = tempfile.mkdtemp(prefix=f"vfd-bench-{name}-")
        self.keep = keep

    def sub(self, *parts: str) -> str:
        p = os.path.join(self.path, *parts)
        return p

    def fresh(self, *parts: str) -> str:
        p = self.sub(*parts)
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
        return p

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def write_config(path: str, *, db: str, directory: str, url_template: str, socket_path: str,
                 workers: int = 4, extra_download: dict[str, Any] | None = None,
                 extra_database: dict[str, Any] | None = None, level: str = "warning") -> str:
    import yaml
    download: dict[str, Any] = {"directory": directory, "url_template": url_template,
                                "output_template": "%(id)s.%(ext)s", "workers": workers,
                                # the local media server is on loopback, refused by default
                                "allow_addresses": ["127.0.0.0/8", "::1/128"]}
    download.update(extra_download or {})
    database: dict[str, Any] = {"url": f"sqlite:///{os.path.abspath(db)}"}
    database.update(extra_database or {})
    cfg = {"database": database, "download": download,
           "control": {"socket": socket_path, "mode": "0600"}, "logging": {"level": level}}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def vfd_cmd(*args: str) -> list[str]:
    """The command a user types: ``videofetchctl ARGS``, or the daemon ``videofetchd ARGS`` when
    the first argument is an option (both console scripts of the repository's venv)."""
    script = "videofetchd" if not args or args[0].startswith("-") else "videofetchctl"
    return [os.path.join(VENV_BIN, script), *args]


def ytdlp_version() -> str:
    try:
        return subprocess.run([YTDLP, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def verify_files(directory: str, server: MediaServer, ids: Sequence[str], ext: str = "mp4") -> tuple[int, list[str]]:
    """sha256 of DIR/ID.EXT against the server's content; returns (ok count, problems)."""
    ok = 0
    bad: list[str] = []
    for vid in ids:
        path = os.path.join(directory, f"{vid}.{ext}")
        try:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            bad.append(f"{vid}: missing")
            continue
        if h.hexdigest() == server.sha256(vid):
            ok += 1
        else:
            bad.append(f"{vid}: sha256 mismatch")
    return ok, bad


def db_counts(db_path: str) -> dict[str, int]:
    """Queue counts read straight from the SQLite file (read-only, WAL-safe)."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return {s: n for s, n in con.execute("SELECT status, count(*) FROM videos GROUP BY status")}
    finally:
        con.close()


def met(ok: bool) -> str:
    """The "met" column of a targets table."""
    return "yes" if ok else "**NO**"


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def media_server(**kw: Any) -> Iterator[MediaServer]:
    srv = MediaServer(**kw).start()
    try:
        yield srv
    finally:
        srv.stop()


class Table:
    """A titled table printed as aligned text and rendered as markdown."""

    def __init__(self, title: str, headers: Sequence[str]) -> None:
        self.title = title
        self.headers = list(headers)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, *cells: Any) -> None:
        self.rows.append([_fmt(c) for c in cells])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def text(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.headers)]
        line = "  ".join(h.ljust(w) for h, w in zip(self.headers, widths))
        out = [f"== {self.title} ==", line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in self.rows]
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join("---" for _ in self.headers) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        return f"{c:.2f}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)
