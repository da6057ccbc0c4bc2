"""Status text that fits: shortening, layouts by width, escaping, and the two redraw methods.

Pure functions of a status snapshot (the dict the control socket returns); the redraws write into
a StringIO whose escape sequences are checked. What a real terminal shows is checked in tmux by
tests/integration/test_views.py.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from videofetchd.control.display import (ELLIPSIS, LiveBlock, cell_width, fit, format_status, format_workers,
                                         human_duration)
from videofetchd.text import printable


def busy(slot: int, video_id: str, **extra: Any) -> dict[str, Any]:
    w = {"slot": slot, "pid": 20000 + slot, "state": "busy", "video_id": video_id, "phase": "downloading",
         "downloaded_bytes": 700 * 1024 * 1024, "total_bytes": 1400 * 1024 * 1024, "speed_bps": 2.5e6,
         "eta_s": 280.0, "last_progress_age_s": 0.2, "stalled_s": None}
    w.update(extra)
    return w


STATUS: dict[str, Any] = {
    "version": "0.1.0", "pid": 24662, "node": "archive-host-01", "state": "running", "uptime_s": 93784,
    "config": {"path": "/etc/videofetchd/videofetchd.yaml", "generation": 3, "loaded_at": "2026-11-26T23:46:00+00:00",
               "last_reload_error": "/etc/videofetchd/videofetchd.yaml: download.workers: expected an integer"},
    "database": {"ok": False, "error": "database call counts timed out", "pending_results": 2},
    "notes": ["site www.youtube.com paused for 840s (throttled)"],
    "queue": {"queued": 1234567, "running": 4, "done": 8765432, "failed": 1234, "missing": 3},
    "counters": {"completed": 100000, "failed": 2, "retried": 3, "stalled_killed": 1, "worker_restarts": 1,
                 "recycled": 0, "lost_leases": 0, "downloaded_bytes": 12345678901},
    "workers": [busy(0, "dQw4w9WgXcQ"),
                busy(1, "url-" + "f" * 40, phase="extracting", total_bytes=None, downloaded_bytes=0, speed_bps=None,
                     eta_s=None),
                busy(2, "stall-x", speed_bps=None, eta_s=None, last_progress_age_s=12.3, stalled_s=12.3),
                {"slot": 3, "pid": None, "state": "restarting"}, {"slot": 4, "pid": 31000, "state": "idle"}],
}


@pytest.mark.parametrize("width", [40, 60, 79, 80, 100, 132, 200])
def test_every_line_fits_the_width(width: int) -> None:
    lines = format_status(STATUS, width).split("\n")
    too_long = [(cell_width(x), x) for x in lines if cell_width(x) > width]
    assert too_long == []
    assert sum(1 for x in lines if x.startswith("videofetchd 0.1.0")) == 1


def test_without_a_width_nothing_is_shortened() -> None:
    text = format_status(STATUS)
    assert ELLIPSIS not in text and "url-" + "f" * 20 in text
    assert "download.workers: expected an integer" in text


def test_counters_continue_on_the_next_line_instead_of_being_cut() -> None:
    lines = format_status(STATUS, 80).split("\n")
    counters = "\n".join(x for x in lines if x.startswith(("counters:", "  ")) and "slot" not in x)
    for item in ("completed 100000", "worker_restarts 1", "lost_leases 0", "downloaded 11.5 GiB"):
        assert item in counters, counters


def test_all_workers_share_one_layout_per_width() -> None:
    for width in (80, 100, 200):
        lines = format_workers(STATUS["workers"], width)
        busy_lines = [x for x in lines if "downloading" in x or "extracting" in x]
        # the phase column starts at the same place on every busy line
        starts = {x.index("downloading") if "downloading" in x else x.index("extracting") for x in busy_lines}
        assert len(starts) == 1, (width, lines)
    assert all("pid" in x for x in format_workers(STATUS["workers"], 200))  # wide: pid and bar
    assert not any("pid" in x for x in format_workers(STATUS["workers"], 80))


def test_a_stalled_worker_shows_its_stall_age_not_a_stale_speed_and_eta() -> None:
    for width in (None, 80):
        line = next(x for x in format_workers(STATUS["workers"], width) if "stall-x" in x)
        assert "stalled 12s" in line and "eta" not in line and "/s" not in line, line


def test_control_characters_from_outside_are_escaped() -> None:
    hostile = {**STATUS, "config": {**STATUS["config"], "last_reload_error": "bad\x1b]0;owned\x07\r\nnext"},
               "workers": [busy(0, "x\x1b[2J\u202eevil")]}
    text = format_status(hostile, 200)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text
    assert "bad\\x1b]0;owned\\x07\\r\\nnext" in text and "x\\x1b[2J\\u202eevil" in text
    assert printable("plain text, ünïcode, 日本") == "plain text, ünïcode, 日本"


def test_wide_characters_count_two_cells() -> None:
    assert cell_width("日本語") == 6 and cell_width("e\u0301") == 1
    cut = fit("日本語のタイトル", 9)
    assert cell_width(cut) <= 9 and cut.endswith(ELLIPSIS)


def test_a_short_terminal_shows_the_first_workers_and_says_how_many_more() -> None:
    lines = format_status(STATUS, 80, height=12).split("\n")
    assert len(lines) <= 12
    assert lines[-1].startswith("  ... ") and "more" in lines[-1]


def test_durations_are_compact() -> None:
    assert [human_duration(s) for s in (5, 65, 3725, 93784)] == ["5s", "1m05s", "1h02m", "1d02h"]


class Tty(io.StringIO):
    """A StringIO whose fileno fails: the live block then assumes an 80x24 terminal."""

    def fileno(self) -> int:
        raise io.UnsupportedOperation


def test_live_block_redraws_over_itself_and_erases_what_is_left() -> None:
    out = Tty()
    block = LiveBlock(out)
    block.draw(["head 1", "  a", "  b", "  c"])
    mark = len(out.getvalue())
    block.draw(["head 2", "  a"])
    redraw = out.getvalue()[mark:]
    assert redraw.startswith("\x1b[F" * 4)  # back over the four lines drawn before
    assert redraw.endswith("\x1b[J")  # and the two lines not drawn again are erased
    mark = len(out.getvalue())
    block.message("job x failed: " + "word " * 40)
    printed = out.getvalue()[mark:]
    assert printed.startswith("\x1b[F" * 2 + "\x1b[J")
    message_lines = printed[len("\x1b[F" * 2 + "\x1b[J"):].split("\n")[:-3]
    assert len(message_lines) >= 3 and all(len(x) <= 79 for x in message_lines), message_lines
    assert printed.count("head 2") == 1  # the block comes back below the message


def test_live_block_never_grows_taller_than_the_terminal() -> None:
    out = Tty()
    LiveBlock(out).draw([f"line {i}" for i in range(60)])
    drawn = [x for x in re.split(r"\n", out.getvalue()) if x.strip("\x1b[J")]
    assert len(drawn) <= 23 and "more lines" in drawn[-1]
