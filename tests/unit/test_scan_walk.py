"""How the scanner hands the walk over: a forked or a spawned child through a pipe, or a helper
thread through a queue. Both must report exactly the same; a child that dies or a consumer that gives up must not
leave a process behind."""

from __future__ import annotations

import json
import select
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import video_tree

from videofetchd.library import walkproc
from videofetchd.config import ScanConfig
from videofetchd.errors import DatabaseUnavailable
from videofetchd.library.scan import ScanError, scan_directories
from videofetchd.queue.store import open_store
from videofetchd.library.walkproc import ForkedWalk, SpawnedWalk, WalkMode, start_walk

CFG = ScanConfig()


def make_library(root: Path, n: int, name_len: int = 20) -> None:
    """n videos in a few directories, with a sidecar, a partial, a broken sidecar and a stray file."""
    for i in range(n):
        d = root / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{'t' * name_len} {i} [vid{i:06d}].mp4").write_bytes(b"x" * (1 + i % 7))
    (root / "s.webm").write_bytes(b"y")
    (root / "s.info.json").write_text(json.dumps({"id": "sidecarid", "extractor_key": "Youtube"}))
    (root / "p [partial01].mp4.part").write_bytes(b"z")
    (root / "b [brokenjs].mp4").write_bytes(b"b")
    (root / "b [brokenjs].info.json").write_text("{oops")
    (root / "notes.txt").write_text("not a video")


def children() -> list[psutil.Process]:
    return psutil.Process().children()


@pytest.mark.parametrize("dry_run", [False, True])
def test_process_and_thread_walks_report_the_same(tmp_path: Path, dry_run: bool) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 2500)
    reports: dict[str, tuple[dict[str, Any], list[tuple[Any, ...]]]] = {}
    for mode in ("process", "spawn", "thread"):
        store = open_store(f"sqlite:///{tmp_path}/{mode}.db")
        try:
            report = scan_directories(store, [lib], CFG, dry_run=dry_run, walk_in=mode)
            done = store.read("SELECT video_id, file_path, file_size, found_by FROM videos ORDER BY video_id")
        finally:
            store.close()
        reports[mode] = ({**report.to_dict(), "elapsed_s": None}, done)
    assert reports["process"] == reports["spawn"] == reports["thread"]
    seen, written = reports["process"]
    assert seen["videos_found"] == 2502 and seen["partial"] == 1 and seen["skipped_errors"] == 1
    assert seen["unrecognized"] == 0 and seen["files_seen"] == 2506
    assert any("ignored sidecar" in w for w in seen["warnings"])
    assert len(written) == (0 if dry_run else 2502)
    assert children() == []


def test_auto_forks_only_without_other_threads(tmp_path: Path) -> None:
    """Under pytest the main thread is alone, so "auto" forks; with a thread running it must not
    fork (a copied lock could hang the child): it spawns a fresh interpreter instead."""
    lib = tmp_path / "lib"
    make_library(lib, 10)
    assert threading.active_count() == 1, "run pytest with timeout_method = signal (setup.cfg)"
    with start_walk([lib], CFG) as walk:
        assert isinstance(walk, ForkedWalk) and len(children()) == 1
        assert sum(len(chunk or ()) for _, chunk in walk) == 12
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with start_walk([lib], CFG) as walk:
            assert isinstance(walk, SpawnedWalk)
            (child,) = children()
            assert child.cmdline()[1:3] == ["-m", "videofetchd.library.walkproc"]
            assert sum(len(chunk or ()) for _, chunk in walk) == 12
    finally:
        stop.set()
        other.join()


def test_the_walk_starts_before_it_is_read(tmp_path: Path) -> None:
    """videofetchctl scan loads the database layer while the walker already lists directories."""
    lib = tmp_path / "lib"
    make_library(lib, 3000)
    with start_walk([lib], CFG, "process") as walk:
        assert isinstance(walk, ForkedWalk)
        readable, _, _ = select.select([walk._pipe], [], [], 10)  # found files wait in the pipe, unread
        assert readable
        assert sum(len(chunk or ()) for _, chunk in walk) == 3002


@pytest.fixture
def small_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KiB pipes: a walker of the libraries below (700 KiB of listing) cannot finish before the
    parent reads, so it is certainly still there when a test kills it."""
    monkeypatch.setattr(walkproc, "PIPE_BYTES", 64 * 1024)


@pytest.mark.usefixtures("small_pipes")
@pytest.mark.parametrize("mode", ["process", "spawn"])
def test_a_walker_child_that_dies_fails_the_scan_and_is_reaped(tmp_path: Path, mode: WalkMode) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 3000, name_len=220)
    with start_walk([lib], CFG, mode) as walk:
        events = iter(walk)
        root, chunk = next(events)
        assert root == str(lib) and chunk
        (child,) = children()
        child.send_signal(signal.SIGKILL)
        with pytest.raises(ScanError, match="walker process died"):
            for _ in events:
                pass
    assert children() == [] and not psutil.pid_exists(child.pid)  # reaped: no zombie left


@pytest.mark.usefixtures("small_pipes")
def test_a_consumer_that_stops_early_kills_and_reaps_the_child(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 3000, name_len=220)
    walk = start_walk([lib], CFG, "process")
    next(iter(walk))
    (child,) = children()
    walk.close()  # what scan_into_store does when a database write raises mid-scan
    walk.close()  # and a second close (the CLI's own with-block) is harmless
    assert children() == [] and not psutil.pid_exists(child.pid)


@pytest.mark.parametrize("mode", ["process", "spawn", "thread"])
def test_a_database_error_mid_scan_stops_the_walker(tmp_path: Path, mode: WalkMode) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 3000)
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    store.write("DROP TABLE videos")  # every write of the scan now fails
    try:
        with pytest.raises(DatabaseUnavailable):
            scan_directories(store, [lib], CFG, walk_in=mode)
    finally:
        store.close()
    assert children() == []
    assert [t for t in threading.enumerate() if t.name == "videofetchd-scan-walk"] == []


@pytest.mark.parametrize("mode", ["process", "spawn", "thread"])
def test_progress_counts_the_videos_found_so_far(tmp_path: Path, mode: WalkMode) -> None:
    lib = tmp_path / "lib"
    make_library(lib, 4500)
    seen: list[int] = []
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        report = scan_directories(store, [lib], CFG, walk_in=mode, progress=seen.append)
    finally:
        store.close()
    assert len(seen) >= 3  # one call per chunk: whole directories, 1,000 files or more (5 x 900 here)
    assert seen == sorted(seen) and seen[-1] == report.videos_found == 4502


def test_closing_a_thread_walk_stops_the_walker(tmp_path: Path) -> None:
    """The walker thread stops at its next hand-over; it does not go on through the library."""
    lib = tmp_path / "lib"
    video_tree(lib, 40, 1000)
    walk = start_walk([lib], CFG, "thread")
    next(iter(walk))
    walk.close()
    assert [t for t in threading.enumerate() if t.name == "videofetchd-scan-walk"] == []
    # the queue holds 10 chunks, so the walker got at most about a dozen directories further
    assert walk.tally.counts["files_seen"] < 20_000


def test_an_ignored_sigchld_does_not_fail_a_finished_scan(tmp_path: Path) -> None:
    """A parent that runs us with SIGCHLD ignored makes the kernel reap the walker itself."""
    lib = tmp_path / "lib"
    make_library(lib, 100)
    before = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        report = scan_directories(store, [lib], CFG, walk_in="process")
    finally:
        store.close()
        signal.signal(signal.SIGCHLD, before)
    assert report.videos_found == 102 and children() == []
