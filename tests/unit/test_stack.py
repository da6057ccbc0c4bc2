"""The yt-dlp stack: what ``download.ytdlp`` hands yt-dlp, version ages, and the status line."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from videofetchd import config
from videofetchd.control.display import format_stack
from videofetchd.errors import ConfigError
from videofetchd.workers.download import RESERVED_PARAMS, Downloader
from videofetchd.workers.stack import age_days, installed_versions

PASSED_THROUGH = ("js_runtimes", "cookiefile", "proxy", "extractor_args")


class _Reporter:
    def phase(self, phase: int) -> None: ...
    def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None: ...
    def files(self, paths: list[str]) -> None: ...


def test_site_options_pass_through_to_youtubedl(tmp_path: Path) -> None:
    assert not set(PASSED_THROUGH) & RESERVED_PARAMS
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n.example.com\tTRUE\t/\tFALSE\t0\tsession\tabc\n")
    wanted = {"js_runtimes": {"deno": {"path": "/opt/deno/bin/deno"}, "node": {}},
              "cookiefile": str(cookies), "proxy": "socks5://127.0.0.1:1080",
              "extractor_args": {"youtube": {"player_client": ["web", "tv"]}}}
    cfg = config.from_dict({"download": {"directory": str(tmp_path / "videos"), "ytdlp": wanted,
                                         "cache_dir": str(tmp_path / "cache")}})
    d = Downloader(cfg.download, _Reporter())
    params = d.ydl.params
    for key, value in wanted.items():
        assert params[key] == value, key
    assert params["cachedir"] == str(tmp_path / "cache")
    assert {c.name for c in d.ydl.cookiejar} == {"session"}  # the cookie file was read
    assert set(d.ydl._js_runtimes) == {"deno", "node"}  # yt-dlp took them as its runtimes


def test_the_cache_dir_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    sqlite = config.from_dict({"database": {"url": f"sqlite:///{tmp_path}/q.db"}})
    assert sqlite.download.cache_dir == f"{tmp_path}/cache"  # next to the database (make run)
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/videofetchd")  # systemd's CacheDirectory=
    assert config.from_dict({}).download.cache_dir == "/var/cache/videofetchd"
    chosen = config.from_dict({"download": {"cache_dir": str(tmp_path / "c")}})
    assert chosen.download.cache_dir == str(tmp_path / "c")
    with pytest.raises(ConfigError, match="download.cache_dir: expected an absolute path"):
        config.from_dict({"download": {"cache_dir": "relative/cache"}})


def test_version_age() -> None:
    today = datetime.date(2026, 12, 1)
    assert age_days("2026.10.26", today) == 36
    assert age_days("2025.6.30.1", today) == 519
    assert age_days("nightly", today) is None
    assert installed_versions()["yt-dlp"]  # the sites extra is installed in the test venv


def test_the_status_line_of_the_stack() -> None:
    stack = {"ytdlp": "2026.10.26", "ytdlp_age_days": 36, "ejs": "0.8.0", "ejs_expected": "0.8.0",
             "js_runtime": "deno", "js_runtime_version": "2.9.8", "ffmpeg": "5.1.9"}
    workers = [{"ytdlp": "2026.10.26"}, {"ytdlp": "2026.10.26"}]
    assert format_stack(stack, workers) == ["stack: yt-dlp 2026.10.26 (36 days), ejs 0.8.0, deno 2.9.8, ffmpeg 5.1.9"]
    mixed = format_stack({**stack, "ffmpeg": None, "js_runtime": None}, [{"ytdlp": "2026.10.21"}, *workers])
    assert mixed[0].endswith("NO JS RUNTIME, NO FFMPEG")
    assert mixed[1] == ("workers run yt-dlp 2026.10.21 (1), 2026.10.26 (2): recycled to the installed one "
                        "as they go idle")
    assert format_stack(None, workers) == []
