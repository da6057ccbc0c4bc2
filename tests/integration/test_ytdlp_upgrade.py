"""``make upgrade-ytdlp`` while the daemon runs: new jobs move to the new yt-dlp, none is lost.

A throwaway venv holds an older yt-dlp of its own (two real releases from the package index,
cached as wheels under the temp directory) and borrows the rest of the test venv through a
``.pth`` file. The daemon runs from it; pip then installs the newer release into it, as the
upgrade target does, while a slow download runs. The children must report the new version in
``videofetchctl status --json`` without a restart, the running download must finish on the old
one (never killed, never retried), and jobs queued afterwards must run on the new one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import vfd
from helpers import wait_until
from mediaserver import MediaServer

OLD, NEW = "2026.10.21", "2026.10.26"
WHEELS = Path(tempfile.gettempdir()) / "videofetchd-test-wheels"
KiB = 1024


def _wheels() -> Path:
    WHEELS.mkdir(exist_ok=True)
    for version in (OLD, NEW):
        if not list(WHEELS.glob(f"yt_dlp-{version}-*.whl")):
            subprocess.run([vfd.PY, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                            "-d", str(WHEELS), f"yt-dlp=={version}"], check=True, timeout=180)
    return WHEELS


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([vfd.PY, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--disable-pip-version-check", "--no-deps", "--no-compile", "--no-index",
                    "--find-links", str(WHEELS), *args],
                   check=True, timeout=120, capture_output=True)


def _venv(tmp_path: Path) -> Path:
    """A venv with yt-dlp OLD of its own; everything else (videofetchd too) from the test venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    borrowed = sysconfig.get_paths()["purelib"]  # the test venv's site-packages, after the venv's own
    (site / "zz-test-venv.pth").write_text(f"import site; site.addsitedir({borrowed!r})\n")
    _pip(venv, f"yt-dlp=={OLD}")
    return venv


def _versions(st: dict[str, Any]) -> list[str | None]:
    return [w.get("ytdlp") for w in st["workers"]]


def _status_when(cfg: Path, ok: Callable[[dict[str, Any]], bool]) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        st = vfd.status(cfg)
        return st if ok(st) else None
    return probe


@pytest.mark.timeout(180)
def test_an_upgraded_ytdlp_reaches_new_jobs_and_no_job_is_lost(tmp_path: Path) -> None:
    t0 = time.monotonic()
    _wheels()
    venv = _venv(tmp_path)
    ours = subprocess.run([vfd.PY, "-c", "import yt_dlp.version as v; print(v.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with MediaServer(default_size=8 * KiB) as srv:
        srv.configure("slow", size=1500 * KiB, rate_bps=60 * KiB)  # ~25 s: runs across the upgrade
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2, "max_attempts": 1})
        with vfd.running(cfg, python=str(venv / "bin" / "python")) as d:
            st = wait_until(_status_when(cfg, lambda s: _versions(s) == [OLD, OLD]), timeout=30)
            assert st["stack"]["ytdlp"] in (None, OLD), st["stack"]  # the daemon's probe, when done
            assert vfd.ctl(cfg, "add", "slow").returncode == 0
            wait_until(lambda: any(w["video_id"] == "slow" and w["downloaded_bytes"]
                                   for w in vfd.status(cfg)["workers"]), timeout=20)
            t_upgrade = time.monotonic()
            _pip(venv, "--upgrade", f"yt-dlp=={NEW}")  # what `make upgrade-ytdlp VENV=...` runs
            # the idle child moves at once; the busy one once its download is done
            moved = wait_until(_status_when(cfg, lambda s: NEW in _versions(s)), timeout=30)
            busy = [w for w in moved["workers"] if w["video_id"] == "slow"]
            assert busy and busy[0]["ytdlp"] == OLD, moved["workers"]  # not killed for the upgrade
            took = time.monotonic() - t_upgrade
            ids = [f"after-{i}" for i in range(4)]
            assert vfd.ctl(cfg, "add", *ids).returncode == 0
            wait_until(lambda: vfd.counts(tmp_path / "queue.db").get("done") == 5, timeout=60)
            final = wait_until(_status_when(cfg, lambda s: _versions(s) == [NEW, NEW]), timeout=30)
            assert final["stack"]["ytdlp"] == NEW, final["stack"]
            rows = vfd.rows(tmp_path / "queue.db")
            assert {r["status"] for r in rows} == {"done"} and all(r["attempts"] == 1 for r in rows), rows
            log = d.log()
        assert d.proc.returncode == 0
    assert f"yt-dlp {OLD} -> {NEW}" in log, log[-3000:]
    assert "runs the yt-dlp of before the upgrade" in log
    # the test venv itself was left alone
    assert subprocess.run([vfd.PY, "-c", "import yt_dlp.version as v; print(v.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip() == ours
    print(f"\nupgrade test: {time.monotonic() - t0:.1f}s in all; children on {NEW} {took:.1f}s after pip began",
          file=sys.stderr)
    json.dumps(final)  # status stays JSON-serialisable with the stack in it
