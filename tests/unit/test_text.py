"""Escaping text from outside before it is printed: text.printable, the log formatter, status."""

from __future__ import annotations

import logging

from videofetchd.control.display import format_status
from videofetchd.logs import SafeFormatter
from videofetchd.text import printable, printable_block

HOSTILE = "a\x1b]0;title\x07b\x1b[2J\x9bc\nd\re\tf\x7fg\u202eh\u2028i"


def test_every_control_character_becomes_a_visible_escape() -> None:
    out = printable(HOSTILE)
    assert out == "a\\x1b]0;title\\x07b\\x1b[2J\\x9bc\\nd\\re\\tf\\x7fg\\u202eh\\u2028i"
    assert out.isprintable()
    assert all(printable(chr(c)).isprintable() for c in range(0xA0))  # every C0 and C1 control, DEL


def test_plain_text_is_returned_as_it_is_and_escaping_twice_changes_nothing() -> None:
    for text in ("dQw4w9WgXcQ", "Ünïcödé titles — with dashes [x].mp4", ""):
        assert printable(text) is text
    assert printable(printable(HOSTILE)) == printable(HOSTILE)
    assert printable(42) == "42"


def test_a_block_keeps_its_line_breaks_only() -> None:
    assert printable_block("one\x1b[2J\ntwo\r\n") == "one\\x1b[2J\ntwo\\r\n"


def test_log_lines_are_escaped_and_stay_one_line_each() -> None:
    fmt = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "job %s failed: %s", ("v1", HOSTILE), None)
    line = fmt.format(record)
    assert "\x1b" not in line and "\n" not in line and "\\x1b[2J" in line
    try:
        raise ValueError("bad\x1b[2J")
    except ValueError:
        import sys
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    text = fmt.format(record)
    assert "\x1b" not in text and "Traceback (most recent call last):\n" in text


def test_status_text_escapes_what_came_from_outside() -> None:
    snapshot = {"pid": 1, "state": "running", "uptime_s": 1.0, "node": "n\x1b[2J",
                "config": {"path": "/etc/v.yaml", "generation": 1, "loaded_at": "now",
                           "last_reload_error": "/etc/v.yaml: bad \x1b]0;x\x07"},
                "notes": ["note\x1b[31m"], "scan": {"last_result": "refused: /srv/\x1b[2J", "last_ok": False},
                "queue": {"queued": 1}, "counters": {"completed": 0},
                "workers": [{"slot": 0, "pid": 2, "state": "busy", "video_id": "\x1b[2Jevil", "phase": "downloading",
                             "downloaded_bytes": 1, "total_bytes": 2, "speed_bps": 1.0, "eta_s": 1.0,
                             "last_progress_age_s": 0.1}]}
    text = format_status(snapshot)
    assert "\x1b" not in text and text.count("\\x1b") == 5
