"""Pure parts of issue 11: the health set, the crash breaker's arithmetic, per-user admission to the
control socket, and reading ``control.socket`` from a config file that no longer parses."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from videofetchd import config as config_mod
from videofetchd.config import DownloadConfig
from videofetchd.control import guard
from videofetchd.control.locate import control_socket
from videofetchd.workers.breaker import CrashBreaker
from videofetchd.workers.health import DISK_SPACE, WORKERS_CANNOT_START, WORKERS_CRASHING, Health


def test_a_condition_is_logged_once_when_it_begins_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    h = Health()
    caplog.set_level(logging.INFO, logger="videofetchd.health")
    assert h.ok and h.to_dict() == {"ok": True, "conditions": []}
    assert h.set(DISK_SPACE, "0 B free") is True
    for _ in range(5):  # every probe sees it again: no new line
        assert h.set(DISK_SPACE, "still 0 B free") is False
    cond = h.active(DISK_SPACE)
    assert not h.ok and cond is not None and cond.detail == "still 0 B free"
    d = h.to_dict()
    assert d["ok"] is False and [c["name"] for c in d["conditions"]] == [DISK_SPACE]
    assert set(d["conditions"][0]) >= {"name", "detail", "since"}
    assert h.clear(DISK_SPACE, "10 GiB free") is True and h.clear(DISK_SPACE) is False
    assert h.ok
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "host condition disk_space: 0 B free" in lines[0] and "cleared" in lines[1], lines


def test_any_condition_blocks_and_the_summary_names_them_all() -> None:
    h = Health()
    h.set("b_cond", "two")
    h.set("a_cond", "one")
    assert h.names() == ["a_cond", "b_cond"] and h.summary() == "a_cond: one; b_cond: two"
    h.clear("a_cond")
    assert not h.ok


def test_the_breaker_needs_crash_limit_start_failures_in_a_row() -> None:
    h, d = Health(), DownloadConfig(crash_limit=3, crash_window=60)
    b = CrashBreaker(h)
    b.start_failed(d, "boom", now=0.0)
    b.start_failed(d, "boom", now=0.1)
    b.started()  # one child came up: the count starts again
    b.start_failed(d, "boom", now=0.2)
    b.start_failed(d, "boom", now=0.3)
    assert h.ok and b.may_rebuild(0.3)
    b.start_failed(d, "boom", now=0.4)
    cond = h.active(WORKERS_CANNOT_START)
    assert b.cannot_start and cond is not None and "3 worker children in a row" in cond.detail
    assert not b.may_rebuild(1.0) and b.may_rebuild(0.4 + 5.0)
    b.start_failed(d, "boom", now=10.0)  # the retry failed too: a longer delay
    assert not b.may_rebuild(10.0 + 5.0) and b.may_rebuild(10.0 + 10.0)
    b.started()
    assert h.ok


def test_the_breaker_pauses_for_crash_window_after_crash_limit_deaths() -> None:
    h, d = Health(), DownloadConfig(crash_limit=2, crash_window=20)
    b = CrashBreaker(h)
    b.death(d, 0.0)
    b.death(d, 25.0)  # outside the window of the first
    assert h.ok
    b.death(d, 30.0)
    assert h.active(WORKERS_CRASHING) is not None and b.pause_until == 50.0
    b.tick(49.0)
    assert not h.ok
    b.tick(50.0)
    assert h.ok


def test_a_users_new_connection_pushes_out_its_oldest_idle_one() -> None:
    a = guard.Admission()
    closed: list[int] = []
    conns = [a.admit(65534, lambda i=i: closed.append(i)) for i in range(guard.MAX_PER_UID)]
    assert all(conns) and a.others == guard.MAX_PER_UID
    conns[0].busy(True)  # answering a request: never pushed out
    newest = a.admit(65534, lambda: closed.append(-1))
    assert newest is not None and closed == [1]
    for c in conns[2:]:
        c.busy(True)
    newest.busy(True)
    assert a.admit(65534, lambda: None) is None  # all busy: no room for this user
    assert a.admit(0, lambda: None) is not None  # root has its own budget


def test_other_users_share_a_bounded_pool_root_does_not() -> None:
    a = guard.Admission()
    for uid in range(1000, 1000 + guard.MAX_OTHERS // guard.MAX_PER_UID):
        for _ in range(guard.MAX_PER_UID):
            conn = a.admit(uid, lambda: None)
            assert conn is not None
            conn.busy(True)
    assert a.others == guard.MAX_OTHERS
    assert a.admit(4242, lambda: None) is None
    assert all(a.admit(0, lambda: None) is not None for _ in range(guard.MAX_PER_OWN_UID))


def test_rate_limit_per_user() -> None:
    bucket = guard._Bucket(rate=10.0, burst=2.0, tokens=2.0, at=0.0)
    assert bucket.wait(0.0) == 0.0 and bucket.wait(0.0) == 0.0
    assert bucket.wait(0.0) == pytest.approx(0.1)  # the third waits its turn
    assert bucket.wait(0.0) == pytest.approx(0.2)
    assert bucket.wait(10.0) == 0.0  # refilled


def test_control_socket_is_found_in_a_file_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text('database:\n  url: sqlite:////x.db\ncontrol:\n  socket: "/run/x/control.sock"  # here\n'
                    "download: [workers: 3\n")
    sock, problem = control_socket(path)
    assert sock == "/run/x/control.sock" and problem is not None and "YAML syntax error" in problem
    path.write_text("control:\n  mode: '0600'\nother:\n  socket: /not/this\ndownload: [\n")
    assert control_socket(path)[0] == config_mod.ControlConfig().socket
