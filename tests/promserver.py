"""A real Prometheus server for tests (importable as the top-level module ``promserver``).

Runs Debian's ``/usr/bin/prometheus`` as a subprocess with a temporary config (1 s scrape interval,
job ``videofetchd``), ``--storage.tsdb.path`` under the test's tmp directory and a free port on
127.0.0.1 (Prometheus cannot listen on port 0), and answers queries through its HTTP API. Without
the binary a test skips, except under ``CI=true`` (``.ci/run`` installs the ``prometheus`` package),
where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import wait_until

__all__ = ["Prometheus", "free_port", "need", "scrape"]


def need(tool: str) -> str:
    """The path of ``tool``; skip without it (fail under CI=true)."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, timeout: float = 10.0) -> str:
    """The exposition text of http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        return str(reply.read().decode("utf-8"))


class Prometheus:
    """``prometheus`` scraping ``targets`` (host:port) every second as job ``videofetchd``."""

    def __init__(self, tmp: Path, targets: list[str], rule_files: list[str] | None = None) -> None:
        self.binary = need("prometheus")
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "rule_files": rule_files or [],
                  "scrape_configs": [{"job_name": "videofetchd", "static_configs": [{"targets": targets}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._ready, timeout=60, message="prometheus did not become ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.dir / "log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=20) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` as [{"metric": {...}, "value": [t, "v"]}]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (None when it has no sample)."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
