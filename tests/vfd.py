"""Test harness for running the real videofetchd and videofetchctl as processes.

Importable as the top-level module ``vfd`` (tests/ is on sys.path). Nothing here fakes a part
of the system: configs are real YAML files, the daemon is a real process, the notify listener is
a real AF_UNIX datagram socket, and queue state is read straight from the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import yaml

from helpers import wait_until

PY = sys.executable
#: the local test servers are on loopback, which downloads may not reach by default
LOCAL = ["127.0.0.0/8", "::1/128"]


def write_config(tmp: Path, *, url_template: str, db_url: str | None = None, **sections: Any) -> Path:
    """A config under ``tmp``; keyword arguments are merged into sections (download={...})."""
    data: dict[str, Any] = {
        "database": {"url": db_url or f"sqlite:///{tmp}/queue.db", "poll_interval": "0.5s"},
        "download": {"directory": str(tmp / "videos"), "url_template": url_template, "workers": 2,
                     "retry_backoff": "0.2s", "stall_timeout": "30s", "kill_grace": "1s", "allow_addresses": LOCAL},
        "control": {"socket": str(tmp / "control.sock")},
        "logging": {"level": "info"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = tmp / "videofetchd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def ctl(config: Path, *args: str, input: str | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``videofetchctl --config CONFIG ARGS`` (through ``python -m videofetchd``)."""
    return subprocess.run([PY, "-m", "videofetchd", *args, "--config", str(config)], input=input,
                          capture_output=True, text=True, timeout=timeout, env=env)


def status(config: Path) -> dict[str, Any]:
    r = ctl(config, "status", "--json", timeout=20)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def rows(db: Path, where: str = "1=1") -> list[dict[str, Any]]:
    """Rows of the SQLite queue at ``db`` (read-only, straight from the file)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM videos WHERE {where} ORDER BY id")]
    finally:
        con.close()


def counts(db: Path) -> dict[str, int]:
    result: dict[str, int] = {}
    for r in rows(db):
        result[r["status"]] = result.get(r["status"], 0) + 1
    return result


class NotifyListener:
    """A real $NOTIFY_SOCKET: collects every datagram the daemon sends, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("ascii", "replace")))

    def fields(self) -> list[str]:
        """Every KEY=VALUE line received, in order."""
        return [line for _, msg in list(self.messages) for line in msg.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Daemon:
    """``videofetchd --config CONFIG`` as a child process, stderr captured to a file."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, python: str = PY) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen([python, "-m", "videofetchd", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        sock = Path(yaml.safe_load(config.read_text())["control"]["socket"])
        try:
            wait_until(lambda: self.proc.poll() is not None or (sock.exists() and self._answers()),
                       timeout=60, message="daemon did not open its control socket")
            assert self.proc.poll() is None, self.log()
        except BaseException:
            self.kill()
            raise

    def _answers(self) -> bool:
        return ctl(self.config, "status", "--json", timeout=20).returncode == 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the daemon and every process below it (they would die with it anyway)."""
        if self.proc.poll() is None:
            try:
                family = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                family = []
            self.proc.kill()
            self.proc.wait(10)
            for child in family:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        self._log.close()


def shutdown(d: Daemon) -> None:
    """Teardown that leaves no process behind: SIGINT (quick stop), then SIGKILL, then the daemon's
    descendants by pid."""
    try:
        family = psutil.Process(d.pid).children(recursive=True)
    except psutil.Error:
        family = []
    if d.proc.poll() is None:
        d.signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(20)
    d.kill()
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()


@contextlib.contextmanager
def running(config: Path, env: dict[str, str] | None = None, python: str = PY) -> Iterator[Daemon]:
    """A daemon for the duration of a ``with`` block, shut down whatever happens (``python``: the
    interpreter of another venv)."""
    d = Daemon(config, env=env, python=python)
    try:
        yield d
    finally:
        shutdown(d)


def worker_pids(config: Path) -> dict[str, int]:
    """video_id -> child pid for every busy slot."""
    return {w["video_id"]: w["pid"] for w in status(config)["workers"] if w["state"] == "busy"}
