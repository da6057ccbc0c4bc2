"""The library scanner on generated trees: ID recognition, partial and odd files, loops, errors,
the database rules (SQLite, and PostgreSQL for everything that writes), reconcile and its guard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from pg import pg_url  # noqa: F401  (fixture)
from videofetchd.library import scan
from videofetchd.library import walker as walker_mod
from videofetchd.config import ScanConfig
from videofetchd.errors import InvalidVideoId, VideofetchdError
from videofetchd.queue.jobs import validate_video_id
from videofetchd.library.scan import ScanRootError, Walker, Tally, is_valid_id, scan_directories
from videofetchd.library.commands import extractor_for_site, parse_archive_line
from videofetchd.library.queries import record_archive
from videofetchd.queue.store import Store, open_store

CFG = ScanConfig()


def touch(path: Path, data: bytes = b"video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def walk(root: Path, cfg: ScanConfig = CFG) -> tuple[dict[str, tuple[Any, ...]], Tally]:
    tally = Tally()
    found = {f[1]: f for batch in Walker(cfg, tally).walk(str(root)) for f in batch}
    return found, tally


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    yield store
    store.close()


ROW_FIELDS = ("video_id", "status", "attempts", "last_error", "file_path", "file_size", "url", "error_kind",
              "found_by", "extractor", "lease_owner", "finished_at")


def rows(store: Store) -> dict[str, dict[str, Any]]:
    found = store.read(f"SELECT {', '.join(ROW_FIELDS)} FROM videos ORDER BY id")
    return {r[0]: dict(zip(ROW_FIELDS, r)) for r in found}


def set_rows(store: Store, status: str, items: dict[str, str | None]) -> None:
    store.add([(vid, None) for vid in items])
    for vid, path in items.items():
        store.write("UPDATE videos SET status = ?, file_path = ?, lease_owner = ? WHERE video_id = ?",
                    [status, path, "elsewhere:1" if status == "running" else None, vid])


# -- recognition (no database) ----------------------------------------------------------------

def test_sidecar_id_wins_over_the_file_name(tmp_path: Path) -> None:
    video = touch(tmp_path / "Title [fileid12345].mp4")
    (tmp_path / "Title [fileid12345].info.json").write_text(
        json.dumps({"id": "sideid", "extractor_key": "Vimeo", "extractor": "vimeo"}))
    found, tally = walk(tmp_path)
    assert found[str(video)] == ("sideid", str(video), 5, "info.json", "Vimeo", "sideid")
    assert tally.counts["files_seen"] == 2


def test_sidecar_for_a_merged_file_and_extractor_fallback(tmp_path: Path) -> None:
    video = touch(tmp_path / "no id in this name.mkv")
    (tmp_path / "no id in this name.info.json").write_text(json.dumps({"id": "abc", "extractor": "generic"}))
    found, _ = walk(tmp_path)
    assert found[str(video)][0::3] == ("abc", "info.json")
    assert found[str(video)][4] == "generic"


def test_last_bracket_group_at_the_end_of_the_stem(tmp_path: Path) -> None:
    a = touch(tmp_path / "Song [live] [x] [dQw4w9WgXcQ].mp4")
    b = touch(tmp_path / "with [brackets] inside and spaces  [a-b_c.d].MKV")
    touch(tmp_path / "Movie [1080p].mp4")
    touch(tmp_path / "Movie [AV1].webm")
    touch(tmp_path / "Bad [has space].mp4")
    touch(tmp_path / "Bad [a=b].mp4")
    touch(tmp_path / "Not at end [abc] trailer.mp4")
    found, tally = walk(tmp_path)
    assert {f[0] for f in found.values()} == {"dQw4w9WgXcQ", "a-b_c.d"}
    assert found[str(a)][3] == found[str(b)][3] == "filename"
    assert tally.counts["unrecognized"] == 5


def test_id_pattern_comes_last(tmp_path: Path) -> None:
    cfg = ScanConfig(id_pattern=r"^(?P<id>vid[0-9]+)_")
    p = touch(tmp_path / "vid123_some title.mp4")
    q = touch(tmp_path / "vid456_other [realid].mp4")
    found, _ = walk(tmp_path, cfg)
    assert found[str(p)][0::3] == ("vid123", "pattern")
    assert found[str(q)][0::3] == ("realid", "filename")


def test_only_video_extensions_count(tmp_path: Path) -> None:
    touch(tmp_path / "notes [abc].txt")
    touch(tmp_path / "cover [abc].jpg")
    touch(tmp_path / "noext [abc]")
    touch(tmp_path / "[abc].mp4")
    found, tally = walk(tmp_path, ScanConfig(extensions=("mp4",)))
    assert [f[0] for f in found.values()] == ["abc"]
    assert tally.counts["files_seen"] == 4


def test_partial_and_empty_files_are_never_done(tmp_path: Path) -> None:
    for name in ("a [id1].mp4.part", "b [id2].mp4.ytdl", "c [id3].temp.mp4", "d [id4].mp4.part-Frag3",
                 "e [id5].mp4.part-Frag3.part", "f [id6].f137.mp4", "g [id7].f251-1.webm", "h [id8].temp"):
        touch(tmp_path / name)
    touch(tmp_path / "empty [id9].mp4", b"")
    ok = touch(tmp_path / "fine [id10].mp4")
    found, tally = walk(tmp_path)
    assert list(found) == [str(ok)]
    assert tally.counts["partial"] == 9


def test_odd_names(tmp_path: Path) -> None:
    bad_dir = os.fsencode(str(tmp_path)) + b"/dir\xff"
    os.mkdir(bad_dir)
    with open(bad_dir + b"/inside [insideid].mp4", "wb") as fh:
        fh.write(b"x")
    with open(os.fsencode(str(tmp_path)) + b"/latin1 \xe9t\xe9 [latin1id].mp4", "wb") as fh:
        fh.write(b"x")
    good = touch(tmp_path / "ünïcödé  spaced [ok_id-1].webm")
    found, tally = walk(tmp_path)
    assert list(found) == [str(good)]
    assert tally.counts["skipped_errors"] == 2
    assert all("not valid UTF-8" in w for w in tally.warnings)
    assert all(w.isprintable() for w in tally.warnings)


def test_symlinks_are_not_followed_and_loops_end(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    touch(lib / "sub" / "a [aaa].mp4")
    outside = touch(tmp_path / "elsewhere" / "b [bbb].mp4")
    (lib / "sub" / "loop").symlink_to(lib)
    (lib / "out").symlink_to(outside.parent)
    (lib / "link [ccc].mp4").symlink_to(outside)  # a symlinked file is not followed either
    (lib / "dangling [ddd].mp4").symlink_to(tmp_path / "nowhere.mp4")
    found, tally = walk(lib)
    assert sorted(f[0] for f in found.values()) == ["aaa"]
    assert tally.counts["skipped_errors"] == 2  # the two file links, each with a warning
    assert sum("a symlink (not followed)" in w for w in tally.warnings) == 2


def test_bind_mount_style_loop_is_detected(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x [xxx].mp4")
    walker = Walker(CFG, Tally())
    walker.visited.add((os.stat(tmp_path / "a").st_dev, os.stat(tmp_path / "a").st_ino))
    found = [f for b in walker.walk(str(tmp_path)) for f in b]
    assert found == [] and "already visited" in walker.tally.warnings[0]


def test_deep_tree_needs_no_recursion(tmp_path: Path) -> None:
    deep = str(tmp_path)
    for _ in range(1200):  # deeper than the default recursion limit (and than pathlib can mkdir)
        deep += "/d"
        os.mkdir(deep)
    with open(deep + "/deep [deepid].mp4", "wb") as fh:
        fh.write(b"x")
    try:
        found, _ = walk(tmp_path)
        assert [f[0] for f in found.values()] == ["deepid"]
    finally:  # pytest's own clean-up (shutil.rmtree) recurses and would fail on this tree
        os.unlink(deep + "/deep [deepid].mp4")
        while deep != str(tmp_path):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_unreadable_directory_by_name_too_long(tmp_path: Path) -> None:
    """Works as root too: a path beyond PATH_MAX cannot be opened (ENAMETOOLONG)."""
    touch(tmp_path / "ok [okid].mp4")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 * 250 characters > 4096
            name = "n" * 250
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        with open(os.open("lost [lostid].mp4", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as fh:
            fh.write(b"x")
    finally:
        os.close(fd)
    found, tally = walk(tmp_path)
    assert [f[0] for f in found.values()] == ["okid"]
    assert tally.counts["skipped_errors"] >= 1
    assert any("cannot" in w for w in tally.warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads directories whatever their mode")
def test_unreadable_directory_by_permissions(tmp_path: Path) -> None:
    touch(tmp_path / "ok [okid].mp4")
    locked = tmp_path / "locked"
    touch(locked / "x [xid].mp4")
    locked.chmod(0)
    try:
        found, tally = walk(tmp_path)
    finally:
        locked.chmod(0o755)
    assert [f[0] for f in found.values()] == ["okid"]
    assert tally.counts["skipped_errors"] == 1


def test_broken_sidecars_warn_and_fall_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = touch(tmp_path / "a [aname].mp4")
    (tmp_path / "a [aname].info.json").write_text("{not json")
    b = touch(tmp_path / "b [bname].mp4")
    (tmp_path / "b [bname].info.json").write_text(json.dumps({"title": "no id"}))
    c = touch(tmp_path / "c.mp4")
    (tmp_path / "c.info.json").write_bytes(b"\xff\xfe garbage")
    found, tally = walk(tmp_path)
    assert found[str(a)][0::3] == ("aname", "filename")
    assert found[str(b)][0::3] == ("bname", "filename")
    assert str(c) not in found
    assert tally.counts["skipped_errors"] == 3 and tally.counts["unrecognized"] == 1
    assert sum("ignored sidecar" in r.getMessage() for r in caplog.records) == 3


def test_a_fifo_named_like_a_sidecar_is_skipped_not_waited_on(tmp_path: Path) -> None:
    a = touch(tmp_path / "a [aname].mp4")
    os.mkfifo(tmp_path / "a [aname].info.json")  # opening it for reading would block for ever
    found, tally = walk(tmp_path)
    assert found[str(a)][0::3] == ("aname", "filename")
    assert tally.counts["skipped_errors"] == 1 and "not a regular file" in tally.warnings[0]


def _sidecar_reference(data: bytes) -> tuple[str, str | None, str | None] | None:
    info = json.loads(data)
    extractor = info.get("extractor_key") or info.get("extractor")
    return info["id"], extractor if isinstance(extractor, str) and extractor else None, info.get("videofetchd_id")


def test_sidecar_short_cut_agrees_with_json() -> None:
    """The info.json short cut takes what yt-dlp writes and hands everything else to json."""
    formats = [{"format_id": str(i), "url": "https://x.invalid/?" + "&".join(f"k{j}=v" for j in range(50)),
                "http_headers": {"User-Agent": "Mozilla/5.0"}} for i in range(60)]
    real = {"id": "dQw4w9WgXcQ", "title": 'say "hi"', "formats": formats,
            "description": 'a trap: \"extractor_key\": \"Evil\", and "extractor": "Evil" in text',
            "tags": ["extractor", "extractor_key"], "extractor": "youtube", "extractor_key": "Youtube",
            "requested_formats": [{"extractor_key": "Youtube", "format_id": "1"}]}
    docs = [
        json.dumps(real), json.dumps(real, indent=2), json.dumps({"id": "abc", "extractor": "vimeo"}),
        json.dumps({"id": "abc"}), json.dumps({"id": "abc", "extractor_key": "", "extractor": "generic"}),
        json.dumps({"id": "abc", "extractor_key": None}), json.dumps({"id": "a\u0062c"}),
        json.dumps({"id": "abc", "extractor_key": "Odd\"Key"}), json.dumps({"title": "t", "id": "later"}),
        json.dumps({"id": "abc", "nested": {"extractor_key": "Same"}, "extractor_key": "Same"}),
        json.dumps({"id": "abc", "http_headers": {'X "extractor_key': "Evil"}, "extractor_key": "Good"}),
        json.dumps({"id": "abc", "note": '", "extractor_key": "Evil', "extractor": "good"}),
        '{"id": "abc",\n    "extractor_key": "Indented"\n}',
        json.dumps({**real, "videofetchd_id": "queue-1"}), json.dumps({"id": "abc", "videofetchd_id": "q:2"}),
        json.dumps({"id": "abc", "note": '"videofetchd_id": "evil"', "videofetchd_id": "good"}),
    ]
    short_cut = 0
    for doc in docs:
        fast = walker_mod._sidecar_fast(doc.encode())
        if fast is not None:
            short_cut += 1
            assert fast == _sidecar_reference(doc.encode()), doc[:80]
    assert walker_mod._sidecar_fast(json.dumps(real).encode()) == ("dQw4w9WgXcQ", "Youtube", None)
    assert walker_mod._sidecar_fast(json.dumps({**real, "videofetchd_id": "q-7"}).encode()) == \
        ("dQw4w9WgXcQ", "Youtube", "q-7")
    assert short_cut >= 10  # the common shapes do not fall back
    # not JSON whitespace: json.loads refuses it, and the short cut does not take the key either
    assert walker_mod._sidecar_fast(b'{"id": "abc",\x0b"extractor_key": "Y"}') == ("abc", None, None)


def test_odd_sidecar_values_never_break_the_scan(tmp_path: Path) -> None:
    """An extractor that is not one word of safe characters is dropped (it would break the
    database write, or an archive line); a sidecar nested too deep for json is skipped."""
    a = touch(tmp_path / "a [aname1].mp4")
    (tmp_path / "a [aname1].info.json").write_text('{"title": "t", "id": "aname1", "extractor_key": "\\ud800"}')
    b = touch(tmp_path / "b [bname1].mp4")
    (tmp_path / "b [bname1].info.json").write_text(json.dumps({"title": "t", "id": "bname1",
                                                               "extractor": "two words"}))
    c = touch(tmp_path / "c [cname1].mp4")
    (tmp_path / "c [cname1].info.json").write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    found, tally = walk(tmp_path)
    assert found[str(a)][0::3] == ("aname1", "info.json") and found[str(a)][4] is None
    assert found[str(b)][0::3] == ("bname1", "info.json") and found[str(b)][4] is None
    assert found[str(c)][0::3] == ("cname1", "filename")
    assert tally.counts["skipped_errors"] == 1 and "ignored sidecar" in tally.warnings[0]


def test_sidecar_without_id_first_is_parsed_in_full(tmp_path: Path) -> None:
    v = touch(tmp_path / "x.mp4")
    (tmp_path / "x.info.json").write_text(json.dumps({"title": "t", "id": "laterid", "extractor": "vimeo"}))
    found, tally = walk(tmp_path)
    assert found[str(v)][0::3] == ("laterid", "info.json") and found[str(v)][4] == "vimeo"
    assert not tally.warnings


def test_is_valid_id_matches_validate_video_id() -> None:
    samples = ["dQw4w9WgXcQ", "a", ".", "..", ".x", "-x", "a b", "a/b", "a=b", "x" * 200, "x" * 201,
               "ok:1@2~3+4", "tab\t", "é", "", "a\nb", "_", "1080p"]
    for s in samples:
        try:
            validate_video_id(s)
            expected = True
        except InvalidVideoId:
            expected = False
        assert is_valid_id(s) is expected, s


def test_archive_helpers() -> None:
    assert parse_archive_line("youtube dQw4w9WgXcQ\n") == ("youtube", "dQw4w9WgXcQ")
    assert parse_archive_line("Vimeo 12345") == ("vimeo", "12345")
    assert parse_archive_line("   \n") is None and parse_archive_line("# comment") is None
    for bad in ("onlyone", "a b c", "youtube bad/id"):
        with pytest.raises(ValueError):
            parse_archive_line(bad)
    assert extractor_for_site("https://www.youtube.com/watch?v={id}") == "youtube"
    assert extractor_for_site("https://youtu.be/{id}") == "youtube"
    assert extractor_for_site("https://vimeo.com/{id}") == "vimeo"
    assert extractor_for_site("http://127.0.0.1:8000/v/{id}.mp4") == "generic"


# -- the database rules (SQLite and PostgreSQL) ---------------------------------------------------

def test_new_ids_get_done_rows(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    a = touch(lib / "a [aaa].mp4", b"12345")
    touch(lib / "s.webm")
    (lib / "s.info.json").write_text(json.dumps({"id": "sss", "extractor_key": "Youtube"}))
    report = scan_directories(store, [lib], CFG)
    assert (report.created, report.marked_done, report.videos_found, report.files_seen) == (2, 2, 2, 3)
    r = rows(store)
    assert r["aaa"]["status"] == "done" and r["aaa"]["file_path"] == str(a) and r["aaa"]["file_size"] == 5
    assert r["aaa"]["found_by"] == "filename" and r["sss"]["found_by"] == "info.json"
    assert store.read("SELECT extractor, finished_at IS NOT NULL FROM videos WHERE video_id = 'sss'") == \
        [("Youtube", True)]
    assert "marked 2 done (2 new)" in report.summary()


def test_known_rows_become_done_and_running_rows_are_left_alone(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for vid in ("q1", "f1", "m1", "r1"):
        touch(lib / f"t [{vid}].mp4")
    set_rows(store, "queued", {"q1": None})
    set_rows(store, "failed", {"f1": None})
    set_rows(store, "missing", {"m1": "/old/place.mp4"})
    set_rows(store, "running", {"r1": None})
    store.write("UPDATE videos SET last_error = 'boom', error_kind = 'transient' WHERE video_id = 'f1'")
    report = scan_directories(store, [lib], CFG)
    assert (report.marked_done, report.created, report.skipped_running) == (3, 0, 1)
    r = rows(store)
    assert {v: r[v]["status"] for v in r} == {"q1": "done", "f1": "done", "m1": "done", "r1": "running"}
    assert r["f1"]["last_error"] is None and r["f1"]["error_kind"] is None
    assert r["m1"]["file_path"] == str(lib / "t [m1].mp4")
    assert r["r1"]["file_path"] is None and r["r1"]["lease_owner"] == "elsewhere:1"


def test_rescan_changes_nothing_and_moves_are_followed(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    a = touch(lib / "a [aaa].mp4")
    touch(lib / "b [bbb].mp4")
    scan_directories(store, [lib], CFG)
    before = store.read("SELECT video_id, updated_at FROM videos ORDER BY video_id")
    again = scan_directories(store, [lib], CFG)
    assert (again.already_done, again.marked_done, again.missing) == (2, 0, 0)
    assert store.read("SELECT video_id, updated_at FROM videos ORDER BY video_id") == before
    moved = lib / "sub" / a.name
    moved.parent.mkdir()
    a.rename(moved)
    third = scan_directories(store, [lib], CFG)
    assert (third.already_done, third.moved, third.missing) == (2, 1, 0)
    assert rows(store)["aaa"]["file_path"] == str(moved)


def test_second_copy_of_a_done_video_is_a_duplicate(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    first = touch(lib / "a" / "x [dup].mp4")
    touch(lib / "b" / "x again [dup].mkv")
    report = scan_directories(store, [lib], CFG)
    assert (report.created, report.duplicates) == (1, 1)
    kept = rows(store)["dup"]["file_path"]
    report = scan_directories(store, [lib], CFG)
    assert rows(store)["dup"]["file_path"] == kept and report.duplicates == 1
    assert kept in (str(first), str(lib / "b" / "x again [dup].mkv"))


def test_a_first_import_with_a_few_known_ids_keeps_every_rule(store: Store, tmp_path: Path) -> None:
    """A batch that looks new (the few known IDs are off the sampled ones) is inserted blind,
    chunk by chunk; the chunks holding known IDs roll back and go through the careful path."""
    lib = tmp_path / "lib"
    ids = [f"id{i:05d}" for i in range(3000)]
    paths = {vid: touch(lib / f"d{i % 9}" / f"video {i} [{vid}].mp4") for i, vid in enumerate(ids)}
    set_rows(store, "queued", {ids[1]: None})
    set_rows(store, "running", {ids[1501]: None})
    set_rows(store, "done", {ids[2999]: str(paths[ids[2999]])})
    report = scan_directories(store, [lib], CFG)
    assert (report.videos_found, report.created, report.marked_done) == (3000, 2997, 2998)
    assert (report.already_done, report.skipped_running) == (1, 1)
    r = rows(store)
    assert r[ids[1]]["status"] == "done" and r[ids[1]]["file_path"] == str(paths[ids[1]])
    assert r[ids[1501]]["status"] == "running" and r[ids[1501]]["file_path"] is None
    assert sum(row["status"] == "done" for row in r.values()) == 2999
    assert all(r[vid]["file_path"] == str(path) for vid, path in paths.items() if vid != ids[1501])


def test_batches_across_boundaries(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "BATCH_FILES", 1000)
    lib = tmp_path / "lib"
    for i in range(2500):
        touch(lib / f"d{i % 7}" / f"video {i} [id{i:05d}].mp4")
    touch(lib / "d0" / "again [id00001].mp4")  # a duplicate, probably in another batch
    set_rows(store, "queued", {f"id{i:05d}": None for i in range(0, 2500, 10)})
    report = scan_directories(store, [lib], CFG)
    assert report.videos_found == 2501 and report.marked_done == 2500 and report.created == 2250
    assert report.duplicates == 1
    assert store.counts()["done"] == 2500


def test_archive_entries_become_done_without_a_file(store: Store) -> None:
    set_rows(store, "queued", {"q": None})
    set_rows(store, "missing", {"m": "/gone.mp4"})
    set_rows(store, "running", {"r": None})
    set_rows(store, "done", {"d": "/lib/d.mp4"})
    counts: dict[str, int] = {}
    record_archive(store, {"q": "youtube", "m": "youtube", "r": "youtube", "d": "youtube", "new": "vimeo"}, counts)
    assert counts == {"imported": 2, "created": 1, "left": 2, "already_done": 1}
    r = rows(store)
    assert {v: r[v]["status"] for v in r} == {"q": "done", "m": "missing", "r": "running", "d": "done",
                                              "new": "done"}
    assert r["new"]["found_by"] == "archive" and r["new"]["file_path"] is None
    assert r["d"]["file_path"] == "/lib/d.mp4" and r["d"]["found_by"] is None


def test_dry_run_writes_nothing(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    touch(lib / "a [aaa].mp4")
    set_rows(store, "queued", {"qqq": None})
    touch(lib / "q [qqq].mp4")
    set_rows(store, "done", {"gone": str(lib / "gone [gone].mp4")})
    before = store.read("SELECT * FROM videos ORDER BY id")
    report = scan_directories(store, [lib], CFG, dry_run=True)
    assert (report.created, report.marked_done, report.missing, report.dry_run) == (1, 2, 1, True)
    assert "would mark 2 done" in report.summary() and "nothing written" in report.summary()
    assert store.read("SELECT * FROM videos ORDER BY id") == before


def test_reconcile_marks_gone_files_missing(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    keep = touch(lib / "k [keep].mp4")
    gone = touch(lib / "g [gone].mp4")
    other = tmp_path / "other" / "o [other].mp4"  # done, outside the scanned root: not ours to judge
    set_rows(store, "done", {"other": str(other)})
    scan_directories(store, [lib], CFG)
    gone.unlink()
    report = scan_directories(store, [lib], CFG)
    assert (report.missing, report.requeued_missing) == (1, 0)
    r = rows(store)
    assert r["gone"]["status"] == "missing" and "file missing" in r["gone"]["last_error"]
    assert r["gone"]["file_path"] == str(gone)
    assert r["keep"]["status"] == "done" and r["keep"]["file_path"] == str(keep)
    assert r["other"]["status"] == "done"
    touch(gone)  # it comes back: done again
    assert scan_directories(store, [lib], CFG).marked_done == 1
    assert rows(store)["gone"]["status"] == "done"


def test_reconcile_requeue_missing(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    touch(lib / "k [keep].mp4")
    gone = touch(lib / "g [gone].mp4")
    scan_directories(store, [lib], CFG)
    store.write("UPDATE videos SET attempts = 3")
    gone.unlink()
    report = scan_directories(store, [lib], ScanConfig(requeue_missing=True))
    assert (report.missing, report.requeued_missing) == (1, 1)
    r = rows(store)["gone"]
    assert (r["status"], r["attempts"], r["file_path"]) == ("queued", 0, None)
    assert str(gone) in r["last_error"]


def test_reconcile_can_be_turned_off(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    touch(lib / "k [keep].mp4")
    set_rows(store, "done", {"gone": str(lib / "gone.mp4")})
    report = scan_directories(store, [lib], CFG, reconcile=False)
    assert report.missing == 0 and rows(store)["gone"]["status"] == "done"


def test_missing_root_refuses_to_act(store: Store, tmp_path: Path) -> None:
    touch(tmp_path / "lib" / "a [aaa].mp4")
    with pytest.raises(ScanRootError, match="does not exist"):
        scan_directories(store, [tmp_path / "lib", tmp_path / "unmounted"], CFG)
    assert rows(store) == {}
    with pytest.raises(ScanRootError, match="not a directory"):
        scan_directories(store, [tmp_path / "lib" / "a [aaa].mp4"], CFG)
    assert issubclass(ScanRootError, VideofetchdError)


def test_empty_root_with_done_rows_is_an_unmounted_disk(store: Store, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    touch(mnt / "a [aaa].mp4")
    touch(mnt / "b [bbb].mp4")
    scan_directories(store, [mnt], CFG)
    for f in mnt.iterdir():
        f.unlink()
    with pytest.raises(ScanRootError, match="empty.*mounted"):
        scan_directories(store, [mnt], ScanConfig(requeue_missing=True))
    assert store.counts()["done"] == 2
    # files, but no video at all: the files found are recorded, nothing is marked missing
    touch(mnt / "lost+found" / "readme.txt")
    with pytest.raises(ScanRootError, match="no video files") as info:
        scan_directories(store, [mnt], CFG)
    assert info.value.report is not None and info.value.report.missing == 0
    assert store.counts()["done"] == 2
    # the operator says the library really is gone
    report = scan_directories(store, [mnt], CFG, allow_empty=True)
    assert report.missing == 2 and store.counts()["missing"] == 2


def test_empty_root_without_rows_is_fine(store: Store, tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    report = scan_directories(store, [tmp_path / "new"], CFG)
    assert report.files_seen == 0 and report.missing == 0


def test_nested_roots_are_walked_once(sqlite_store: Store, tmp_path: Path) -> None:
    touch(tmp_path / "lib" / "sub" / "a [aaa].mp4")
    roots = [tmp_path / "lib" / "sub", tmp_path / "lib", str(tmp_path / "lib/")]
    report = scan_directories(sqlite_store, roots, CFG)
    assert report.roots == (str(tmp_path / "lib"),) and report.videos_found == 1 and report.duplicates == 0


def test_similar_prefix_is_not_under_the_root(sqlite_store: Store, tmp_path: Path) -> None:
    touch(tmp_path / "lib" / "a [aaa].mp4")
    set_rows(sqlite_store, "done", {"sib": str(tmp_path / "lib2" / "gone.mp4"),
                                    "case": str(tmp_path / "LIB" / "gone.mp4")})
    report = scan_directories(sqlite_store, [tmp_path / "lib"], CFG)
    assert report.missing == 0 and sqlite_store.counts()["done"] == 3


def test_warnings_are_capped(tmp_path: Path) -> None:
    for i in range(scan.MAX_WARNINGS + 10):
        touch(tmp_path / f"v{i} [id{i}].mp4")
        (tmp_path / f"v{i} [id{i}].info.json").write_text("{")
    found, tally = walk(tmp_path)
    assert len(found) == scan.MAX_WARNINGS + 10
    assert tally.counts["skipped_errors"] == scan.MAX_WARNINGS + 10
    assert len(tally.warnings) == scan.MAX_WARNINGS + 1


def test_report_to_dict_is_json(sqlite_store: Store, tmp_path: Path) -> None:
    touch(tmp_path / "a [aaa].mp4")
    d = scan_directories(sqlite_store, [tmp_path], CFG).to_dict()
    assert json.loads(json.dumps(d))["created"] == 1 and d["roots"] == [str(tmp_path)]


def test_a_huge_flat_directory_is_streamed_in_bounded_batches(sqlite_store: Store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """yt-dlp's default puts a whole archive in one directory: it is listed twice (sidecars first)
    and handed over in slices, and every transaction stays within BATCH_FILES."""
    monkeypatch.setattr(walker_mod, "LARGE_DIR", 100)
    monkeypatch.setattr(walker_mod, "SLICE", 30)
    monkeypatch.setattr(scan, "BATCH_FILES", 70)
    lib = tmp_path / "flat"
    for i in range(400):
        touch(lib / f"v{i:03d} [flat{i:04d}].mp4")
    for i in (0, 199, 399):  # a sidecar names a different ID wherever it falls in the listing
        (lib / f"v{i:03d} [flat{i:04d}].info.json").write_text(json.dumps({"id": f"side{i:04d}"}))
    chunks = list(Walker(CFG, Tally()).walk(str(lib), 25))
    assert len(chunks) >= 10 and sum(map(len, chunks)) == 400  # one directory, many hand-overs
    sizes: list[int] = []
    real = scan.queries.record_files

    def record(store: Store, files: Any, *args: Any, **kw: Any) -> int:
        sizes.append(len(files))
        return real(store, files, *args, **kw)

    monkeypatch.setattr(scan.queries, "record_files", record)
    report = scan_directories(sqlite_store, [lib], CFG)
    assert report.videos_found == 400 and report.created == 400 and max(sizes) <= 70 and sum(sizes) == 400
    r = rows(sqlite_store)
    assert {f"side{i:04d}" for i in (0, 199, 399)} <= set(r) and "flat0199" not in r
    assert all(r[f"side{i:04d}"]["found_by"] == "info.json" for i in (0, 199, 399))
