"""The one-shot start-up: children started as rows need them, the forkserver's prebuilt
YoutubeDL, and the cache of which extractor takes the url_template's URLs.

All through the real ``videofetchctl fetch`` against the real media server; the cache lives in
``download.cache_dir`` (by default ``cache`` next to the SQLite database: under tmp_path here)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import psutil

import vfd
from mediaserver import MediaServer

KiB = 1024


def _fetch_watching_children(cfg: Path, workers: int,
                             env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[int]]:
    """Run a one-shot fetch; returns its result and the pids of every worker child seen (the
    forkserver's Python children), sampled every 20 ms while it ran."""
    proc = subprocess.Popen([vfd.PY, "-m", "videofetchd", "fetch", "--num-workers", str(workers), "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        me = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                helpers = {p.pid for p in me.children()}  # the forkserver, the resource tracker
                for p in me.children(recursive=True):
                    if p.ppid() in helpers and p.exe() == psutil.Process().exe():  # not ffmpeg
                        seen.add(p.pid)
            except psutil.Error:
                pass
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=120)
    done.set()
    watcher.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen


def _env(tmp_path: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CACHE_DIRECTORY"}


def test_a_one_shot_run_starts_only_the_children_its_rows_need(tmp_path: Path) -> None:
    # two slow downloads (2 s each) and eight workers: two children, not eight
    with MediaServer(default_size=512 * KiB, rate_bps=256 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", "slow-1", "slow-2").returncode == 0
        result, children = _fetch_watching_children(cfg, 8, _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert vfd.counts(tmp_path / "queue.db") == {"done": 2}
    assert len(children) == 2, children


def test_the_extractor_cache_is_written_and_a_wrong_one_costs_no_job(tmp_path: Path) -> None:
    env = _env(tmp_path)
    cache = tmp_path / "cache" / "extractors.json"  # download.cache_dir's default: next to queue.db
    with MediaServer(default_size=50 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template, download={"workers": 2})
        assert vfd.ctl(cfg, "add", "c-1", "c-2").returncode == 0
        first = vfd.ctl(cfg, "fetch", env=env)
        assert first.returncode == 0, first.stderr
        data = json.loads(cache.read_text())
        assert data["templates"] == {srv.url_template: "Generic"}
        assert data["stamp"].split(":")[0] == _ytdlp_version()

        # a cache that names the wrong extractor (the template's URLs are no YouTube URLs): the
        # children check the answer against the URL, find the right extractor, and download
        data["templates"][srv.url_template] = "Youtube"
        cache.write_text(json.dumps(data))
        assert vfd.ctl(cfg, "add", "c-3").returncode == 0
        second = vfd.ctl(cfg, "fetch", env=env)
        assert second.returncode == 0, second.stderr

        # garbage in the cache file: a miss, rewritten
        cache.write_text("{not json")
        assert vfd.ctl(cfg, "add", "c-4").returncode == 0
        third = vfd.ctl(cfg, "fetch", env=env)
        assert third.returncode == 0, third.stderr
        assert json.loads(cache.read_text())["templates"] == {srv.url_template: "Generic"}
    assert vfd.counts(tmp_path / "queue.db") == {"done": 4}
    assert sorted(r["file_size"] for r in vfd.rows(tmp_path / "queue.db")) == [50 * KiB] * 4


def test_an_unwritable_cache_directory_costs_nothing_but_speed(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would go")
    with MediaServer(default_size=50 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", "u-1").returncode == 0
        result = vfd.ctl(cfg, "fetch", env=_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert vfd.counts(tmp_path / "queue.db") == {"done": 1}


def test_a_ytdlp_option_that_breaks_the_prebuild_still_fails_loudly(tmp_path: Path) -> None:
    # yt-dlp cannot start with a directory for its archive file: the forkserver's prebuild fails
    # on it quietly, and the children's own warm-up must say it (the row is never claimed)
    archive = tmp_path / "archive-is-a-directory"
    archive.mkdir()
    with MediaServer(default_size=50 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"ytdlp": {"download_archive": str(archive)}})
        assert vfd.ctl(cfg, "add", "b-1").returncode == 0
        result = vfd.ctl(cfg, "fetch", env=_env(tmp_path))
    assert result.returncode != 0
    assert "Is a directory" in result.stderr, result.stderr
    assert vfd.counts(tmp_path / "queue.db") == {"queued": 1}


def _ytdlp_version() -> str:
    out = subprocess.run([vfd.PY, "-c", "import yt_dlp.version; print(yt_dlp.version.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_console_script_fetches_as_python_m_does(tmp_path: Path) -> None:
    # `videofetchctl fetch` enters through __main__.ctl, which starts the forkserver before
    # importing the command: with --config=PATH too, the forkserver reads that file itself
    ctl = str(Path(vfd.PY).with_name("videofetchctl"))
    with MediaServer(default_size=50 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", "cs-1", "cs-2").returncode == 0
        result = subprocess.run([ctl, "fetch", f"--config={cfg}"], capture_output=True, text=True, timeout=120,
                                env=_env(tmp_path))
        template = srv.url_template
    assert result.returncode == 0, result.stderr
    assert vfd.counts(tmp_path / "queue.db") == {"done": 2}
    cache = json.loads((tmp_path / "cache" / "extractors.json").read_text())
    assert cache["templates"] == {template: "Generic"}


def test_long_downloads_start_the_slots_their_rows_need_at_once(tmp_path: Path) -> None:
    # six 4-second downloads and eight workers: once the first says (its ETA) that it waits for
    # bytes, the others start together; six children, not eight, and all six downloads overlap
    with MediaServer(default_size=1024 * KiB, rate_bps=256 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        ids = [f"long-{i}" for i in range(6)]
        assert vfd.ctl(cfg, "add", *ids).returncode == 0
        result, children = _fetch_watching_children(cfg, 8, _env(tmp_path))
        first_request = {r.video_id: r.time for r in reversed(srv.requests()) if r.video_id in ids}
    assert result.returncode == 0, result.stderr
    assert vfd.counts(tmp_path / "queue.db") == {"done": 6}
    assert len(children) == 6, children
    spread = max(first_request.values()) - min(first_request.values())
    assert sorted(first_request) == ids and spread < 2.0, f"the last download began {spread:.2f}s after the first"
