"""Which row owns a file: the queue's ID, a sidecar's ``videofetchd_id``, a download's recorded
path, yt-dlp's recorded ID and extractor; and another extractor's same ID is not a match.
Real SQLite and PostgreSQL, real files; the rows a download would leave are written as the
store writes them (``finish``)."""

from __future__ import annotations

import json
from pathlib import Path

from videofetchd.config import ScanConfig
from videofetchd.library.queries import record_archive
from videofetchd.library.scan import scan_directories
from videofetchd.queue.store import Store

CFG = ScanConfig()


def downloaded(store: Store, video_id: str, path: Path, ytdlp_id: str, extractor: str = "Generic") -> None:
    """A row as a finished download leaves it (claimed, then ``finish``ed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")
    store.add([(video_id, None)])
    claimed = store.claim("test:1", 1, 60.0)
    assert [c.video_id for c in claimed] == [video_id]
    assert store.finish(claimed[0].row_id, claimed[0].claim_token, file_path=str(path), file_size=5,
                        extractor=extractor, ytdlp_id=ytdlp_id)


def table(store: Store) -> dict[str, tuple[object, ...]]:
    return {r[0]: tuple(r[1:]) for r in store.read("SELECT video_id, status, file_path, ytdlp_id, extractor "
                                                   "FROM videos ORDER BY id")}


def test_a_downloads_file_is_its_rows_by_path_and_after_a_move_by_ytdlp_id(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    downloaded(store, "q-hls", lib / "master [master].mp4", "master")
    downloaded(store, "page7", lib / "Clip [page7-1].mp4", "page7-1", "HTML5MediaEmbed")
    report = scan_directories(store, [lib], CFG)
    assert (report.videos_found, report.created, report.already_done, report.marked_done) == (2, 0, 2, 0)
    (lib / "sub").mkdir()
    for name in ("master [master].mp4", "Clip [page7-1].mp4"):
        (lib / name).rename(lib / "sub" / name)
    report = scan_directories(store, [lib], CFG)
    assert (report.created, report.moved, report.missing) == (0, 2, 0)
    assert table(store) == {
        "q-hls": ("done", str(lib / "sub" / "master [master].mp4"), "master", "Generic"),
        "page7": ("done", str(lib / "sub" / "Clip [page7-1].mp4"), "page7-1", "HTML5MediaEmbed")}


def test_a_sidecar_names_its_queue_row_and_rebuilds_a_lost_one(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    (lib / "a").mkdir(parents=True)
    (lib / "a" / "Clip [page9-1].mp4").write_bytes(b"video")
    (lib / "a" / "Clip [page9-1].info.json").write_text(json.dumps(
        {"id": "page9-1", "extractor_key": "HTML5MediaEmbed", "videofetchd_id": "page9"}))
    store.add([("page9", None)])
    report = scan_directories(store, [lib], CFG)
    assert (report.created, report.marked_done) == (0, 1)
    assert table(store)["page9"][:3] == ("done", str(lib / "a" / "Clip [page9-1].mp4"), "page9-1")
    store.write("DELETE FROM videos")  # the queue is lost
    assert scan_directories(store, [lib], CFG).created == 1
    assert list(table(store)) == ["page9"]


def test_a_file_of_another_extractor_does_not_take_a_row(store: Store, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "V [123456789].mp4").write_bytes(b"video")
    (lib / "V [123456789].info.json").write_text(json.dumps({"id": "123456789", "extractor_key": "Vimeo"}))
    store.add([("123456789", None)])
    report = scan_directories(store, [lib], CFG, url_template="https://www.youtube.com/watch?v={id}")
    assert (report.other_extractor, report.marked_done) == (1, 0)
    assert table(store)["123456789"][0] == "queued"
    # without a known site the row's extractor is unknown: the file may be its video
    assert scan_directories(store, [lib], CFG).marked_done == 1


def test_an_archive_line_of_another_extractor_leaves_the_row(store: Store) -> None:
    store.add([("123456789", None), ("555", "https://vimeo.com/555")])
    counts: dict[str, int] = {}
    yt = "https://www.youtube.com/watch?v={id}"
    record_archive(store, {"123456789": "vimeo", "555": "youtube"}, counts, yt)
    assert counts.get("other_extractor") == 2 and not counts.get("imported")
    record_archive(store, {"123456789": "youtube", "555": "vimeo"}, counts, yt)
    assert counts["imported"] == 2
    assert {k: v[0] for k, v in table(store).items()} == {"123456789": "done", "555": "done"}
