"""What a user sees on a real 80x24 terminal: ``status``, ``status --watch``, the ``fetch`` live view,
``list`` and ``export``.

The terminal is tmux (tests/tmuxterm.py: a private server per test, ``capture-pane -J`` so that a
line the terminal had to wrap comes back longer than 80 columns); the daemon and ``videofetchctl``
are real processes downloading from the local media server. Every captured line must fit the width
and match one of the shapes the view draws, so a leftover fragment of an earlier, longer line
(the old ``fetch`` view left them) or a repeated header fails the test.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import vfd
from helpers import wait_until
from mediaserver import MediaServer
from tmuxterm import Terminal

KiB = 1024
WIDTH, HEIGHT = 80, 24
LONG_ID = "a-rather-long-identifier-of-a-video-0001"

SIZES = r"\s*[\d.?]+% [\d.]+[BKMGT]?/(?:[\d.]+[BKMGT]?|\?)"
SPEED = r"(?:[\d.]+[BKMGT]?/s|-|stalled \S+)"
WORKER = [
    rf"  +\d+ \S+ +(?:extracting|downloading|postprocessing) +(?:\[[#.?]{{10}}\] )?{SIZES} +{SPEED}(?: eta \S+)?",
    r"  +\d+ (?:idle|dormant|restarting)(?: \(retiring\))?",
    r"  slot +\d+  pid +\S+  (?:idle|dormant|restarting)(?: \(retiring\))?",
]
STATUS = [
    r"videofetchd \S+ pid \d+ on \S+: (?:starting|running|paused|reloading|stopping), up \S+",
    r"config: .*", r"database: .*", r"stack: .*", r"workers run yt-dlp .*",
    r"HOST CONDITION .*", r"note: .*", r"queue: .*", r"counters: .*",
    r"workers \(\d+\):",
    r"  (?:[a-z_]+ \d+|downloaded [\d.]+ [KMGT]?i?B)(?:, (?:[a-z_]+ \d+|downloaded [\d.]+ [KMGT]?i?B))*,?",
    *WORKER,
]
WATCH_FOOTER = r"every [\d.]+s at \d\d:\d\d:\d\d; Ctrl-C to quit"
LOG = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR) \S+: .*"
FETCH = [r"fetch: \d+ done, \d+ failed, \d+ retried; queued \d+; [\d.]+ [KMGT]?i?B; up \S+", *WORKER, LOG,
         r"    \S.*", r"fetched \d+, failed \d+, retried \d+; queue now: .*", r"  \d+ failed: .*"]


def misfits(lines: list[str], shapes: list[str]) -> list[str]:
    """Lines longer than the terminal or of no known shape (leftovers of an earlier redraw)."""
    return [line for line in lines if len(line) > WIDTH or not any(re.fullmatch(s, line) for s in shapes)]


def ctl_cmd(cfg: Path, *args: str) -> list[str]:
    return [vfd.PY, "-m", "videofetchd", *args, "--config", str(cfg)]


def test_status_and_status_watch_fit_80_columns_and_redraw_cleanly(tmp_path: Path) -> None:
    with MediaServer(default_size=4 * 1024 * KiB, rate_bps=64 * KiB) as srv:
        srv.configure("stall-forever", size=256 * KiB, rate_bps=16 * 1024 * KiB)  # fast once released
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"workers": 3, "stall_timeout": "120s"})
        with vfd.running(cfg):
            assert vfd.ctl(cfg, "add", "dQw4w9WgXcQ", LONG_ID, "stall-forever").returncode == 0

            def stalled_and_busy() -> bool:
                workers = vfd.status(cfg)["workers"]
                return sum(w["state"] == "busy" for w in workers) == 3 and any(
                    w["video_id"] == "stall-forever" and w["stalled_s"] for w in workers)

            wait_until(stalled_and_busy, timeout=60, interval=0.5, message="no stalled worker next to busy ones")

            with Terminal(ctl_cmd(cfg, "status"), width=WIDTH, height=HEIGHT) as term:
                assert term.wait_exit() == 0, term.screen()
                lines = term.lines(history=True)
            assert misfits(lines, STATUS) == [], "\n".join(lines)
            stall = [x for x in lines if "stall-forever" in x]
            assert len(stall) == 1 and "stalled" in stall[0] and "eta" not in stall[0], lines
            assert any(LONG_ID[:12] in x and "\u2026" in x for x in lines), lines  # shortened, not wrapped

            with Terminal(ctl_cmd(cfg, "status", "--watch", "0.3"), width=WIDTH, height=HEIGHT) as term:
                frames = [wait_until(lambda: (t := term.lines(history=True)) and any(
                    re.fullmatch(WATCH_FOOTER, x) for x in t) and t, timeout=30, message="no watch view")]
                srv.release_stalls()  # the stalled download finishes: its long line becomes a short idle one
                for _ in range(40):
                    frames.append(term.lines(history=True))
                    if re.search(r"^  +\d+ idle$", "\n".join(frames[-1]), re.M):
                        break
                    time.sleep(0.25)
                assert vfd.ctl(cfg, "pause").returncode == 0  # the header changes too
                wait_until(lambda: any(": paused, up" in x for x in term.lines()), timeout=20)
                frames.append(term.lines(history=True))
                term.keys("C-c")
                assert term.wait_exit() == 0
                end = term.lines(history=True)
            assert any(re.search(r"^  +\d+ idle$", "\n".join(f), re.M) for f in frames), frames[-1]
            for frame in frames:
                assert misfits(frame, [*STATUS, WATCH_FOOTER]) == [], "\n".join(frame)
                assert sum(x.startswith("videofetchd ") for x in frame) == 1, "\n".join(frame)  # redrawn, not appended
            assert "Traceback" not in "\n".join(end) and "interrupted" not in "\n".join(end)


def test_fetch_live_view_fits_80_columns_and_redraws_cleanly(tmp_path: Path) -> None:
    ids = ["dQw4w9WgXcQ", "ok-2", "ok-3", LONG_ID, "e404-missing-video", "stall-then-fine", "ok-7"]
    with MediaServer(default_size=640 * KiB, rate_bps=256 * KiB) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template,
                               download={"stall_timeout": "3s", "retry_backoff": "0.2s"})
        assert vfd.ctl(cfg, "add", *ids).returncode == 0
        with Terminal(ctl_cmd(cfg, "fetch", "--num-workers", "3"), width=WIDTH, height=HEIGHT) as term:
            frames = []
            while term.exit_status() is None and len(frames) < 400:
                frames.append(term.lines(history=True))
                time.sleep(0.2)
            assert term.wait_exit(timeout=120) == 1, term.screen()  # the 404 failed
            frames.append(term.lines(history=True))
    final = frames[-1]
    assert any(re.fullmatch(r"fetched 6, failed 1, retried 1; .*", x) for x in final), "\n".join(final)
    assert len(frames) > 5
    for frame in frames:
        assert misfits(frame, FETCH) == [], "\n".join(frame)
        assert sum(x.startswith("fetch: ") for x in frame) <= 1, "\n".join(frame)  # one view, redrawn in place
    text = re.sub(r"\s+", " ", " ".join(final))  # a long log record is broken into indented lines
    assert text.count("ERROR videofetchd.workers.recorder: job e404-missing-video failed for good") == 1, final
    assert any("stall-then-fine" in x and "stalled" in x for f in frames for x in f) or \
        any("stall-then-fine" in x and "WARNING" in x for x in final)


def hostile_queue(tmp_path: Path, n: int) -> Path:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/{id}")
    assert vfd.ctl(cfg, "add", "--file", "-", input="\n".join(f"row-{i:03d}" for i in range(n))).returncode == 0
    con = sqlite3.connect(tmp_path / "queue.db")
    with con:
        con.execute("UPDATE videos SET status = 'failed', error_kind = 'permanent', "
                    "last_error = 'HTTP Error 404 \x1b]2;pwned\x07 from the site' WHERE video_id = 'row-001'")
        con.execute("UPDATE videos SET status = 'done', file_path = ? WHERE video_id = 'row-002'",
                    ["/srv/media/" + "a very long directory name " * 6 + "clip [row-002].mp4"])
    con.close()
    return cfg


def test_list_on_a_terminal_shows_a_page_that_fits_and_escapes_what_it_prints(tmp_path: Path) -> None:
    cfg = hostile_queue(tmp_path, 100)
    with Terminal(ctl_cmd(cfg, "list"), width=WIDTH, height=HEIGHT) as term:
        assert term.wait_exit() == 0
        lines = term.lines(history=True)
        title = term.title()
    rows = [x for x in lines if x.startswith("row-")]
    assert [x.split()[0] for x in rows] == [f"row-{i:03d}" for i in range(len(rows))]
    assert HEIGHT // 2 < len(rows) < HEIGHT  # a screenful, not a hundred lines scrolling by
    last = rows[-1].split()[0]
    assert f"(more rows: videofetchctl list --after {last}; --limit 0 lists them all)" in lines
    assert all(len(x) <= WIDTH for x in lines), lines
    assert any("\\x1b]2;pwned\\x07" in x for x in lines) and "pwned" not in title


def test_export_csv_on_a_terminal_is_escaped(tmp_path: Path) -> None:
    cfg = hostile_queue(tmp_path, 3)
    with Terminal(ctl_cmd(cfg, "export", "--format", "csv"), width=200, height=HEIGHT) as term:
        assert term.wait_exit() == 0
        lines = term.lines(history=True)
        title = term.title()
    assert lines[0] == "video_id,status,attempts,error_kind,last_error,file_path,file_size,found_by,finished_at"
    assert "row-001,failed,0,permanent,HTTP Error 404 \\x1b]2;pwned\\x07 from the site,,,," in lines
    assert "pwned" not in title
