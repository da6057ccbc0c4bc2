"""``videofetchctl scan``, ``import-archive``, ``export-archive`` and ``fetch --existing_videos_dir``
as real processes on a generated library, with a real config file and a SQLite queue in tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

import vfd
from helpers import video_tree, wait_until

PY = sys.executable


def write_config(tmp: Path, **scan: Any) -> Path:
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp}/q.db"},
        "download": {"directory": str(tmp / "videos")},
        "control": {"socket": str(tmp / "control.sock")},
        "logging": {"level": "warning"},
    }
    if scan:
        data["scan"] = scan
    path = tmp / "videofetchd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(config: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "videofetchd", *args, "--config", str(config)], input=input,
                          capture_output=True, text=True, timeout=120)


def rows(tmp: Path) -> dict[str, dict[str, Any]]:
    return {r["video_id"]: r for r in vfd.rows(tmp / "q.db")}


def make_library(root: Path, n: int = 30) -> list[str]:
    ids = []
    for i in range(n):
        vid = f"vid{i:04d}xyz"
        ids.append(vid)
        sub = root / f"channel {i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 5 == 0:  # merged file without the ID in its name, identified by its sidecar
            (sub / f"title {i}.mkv").write_bytes(b"m" * (i + 1))
            (sub / f"title {i}.info.json").write_text(json.dumps({"id": vid, "extractor_key": "Youtube"}))
        else:
            (sub / f"title {i} [{vid}].mp4").write_bytes(b"v" * (i + 1))
    (root / "channel 0" / "half [partial01].mp4.part").write_bytes(b"p")
    return ids


@pytest.fixture
def lib(tmp_path: Path) -> Path:
    root = tmp_path / "library"
    make_library(root)
    return root


def test_scan_marks_files_done_and_prints_a_summary(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path)
    r = run(cfg, "scan", str(lib))
    assert r.returncode == 0, r.stderr
    assert "37 files, 30 videos: marked 30 done (30 new)" in r.stdout and "1 partial" in r.stdout
    got = rows(tmp_path)
    assert len(got) == 30 and {g["status"] for g in got.values()} == {"done"}
    assert got["vid0000xyz"]["found_by"] == "info.json" and got["vid0001xyz"]["found_by"] == "filename"
    assert got["vid0001xyz"]["file_path"] == str(lib / "channel 1" / "title 1 [vid0001xyz].mp4")
    r = run(cfg, "scan", str(lib), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["already_done"], report["marked_done"], report["missing"]) == (30, 0, 0)


def test_scan_dry_run_and_config_directories(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path, directories=[str(lib)])
    r = run(cfg, "scan", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["marked_done"] == 30 and json.loads(r.stdout)["dry_run"] is True
    assert rows(tmp_path) == {}
    r = run(cfg, "scan")
    assert r.returncode == 0 and len(rows(tmp_path)) == 30


def test_scan_without_directories_is_a_usage_error(tmp_path: Path) -> None:
    r = run(write_config(tmp_path), "scan")
    assert r.returncode == 2 and "scan.directories" in r.stderr


def test_scan_refuses_a_missing_or_unmounted_root(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path)
    r = run(cfg, "scan", str(tmp_path / "not-mounted"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert run(cfg, "scan", str(lib)).returncode == 0
    for f in sorted(lib.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    r = run(cfg, "scan", str(lib))
    assert r.returncode == 1 and "is the disk mounted?" in r.stderr
    assert {g["status"] for g in rows(tmp_path).values()} == {"done"}


def test_scan_reconciles_deleted_files(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path, requeue_missing=True)
    assert run(cfg, "scan", str(lib)).returncode == 0
    (lib / "channel 1" / "title 1 [vid0001xyz].mp4").unlink()
    r = run(cfg, "scan", str(lib), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["requeued_missing"] == 1
    assert rows(tmp_path)["vid0001xyz"]["status"] == "queued"


def test_import_and_export_archive(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path)
    assert run(cfg, "add", "queued00001", "failed00001", "running0001").returncode == 0
    con = vfd.sqlite3.connect(tmp_path / "q.db")
    con.execute("UPDATE videos SET status = 'failed' WHERE video_id = 'failed00001'")
    con.execute("UPDATE videos SET status = 'running', lease_owner = 'x' WHERE video_id = 'running0001'")
    con.commit()
    con.close()
    archive = tmp_path / "archive.txt"
    archive.write_text("youtube queued00001\nyoutube failed00001\nyoutube running0001\n"
                       "# comment\n\nVimeo 76979871\nyoutube vid0001xyz\nbroken-line\n")
    r = run(cfg, "import-archive", str(archive))
    assert r.returncode == 2 and "archive.txt:8" in r.stderr
    assert "imported 4 (2 new)" in r.stdout and "left alone 1" in r.stdout and "refused 1" in r.stdout
    got = rows(tmp_path)
    assert got["queued00001"]["status"] == got["failed00001"]["status"] == "done"
    assert got["running0001"]["status"] == "running"
    assert got["76979871"]["found_by"] == "archive" and got["76979871"]["file_path"] is None
    assert got["76979871"]["extractor"] == "vimeo"
    # a scan then finds the file of an archive row and records where it is
    assert run(cfg, "scan", str(lib)).returncode == 0
    got = rows(tmp_path)
    assert got["vid0001xyz"]["file_path"] and got["vid0001xyz"]["found_by"] == "filename"
    assert got["queued00001"]["status"] == "done"  # no file, no path: reconcile leaves it alone

    out = tmp_path / "export.txt"
    ctl = Path(PY).with_name("videofetchctl")
    cmd = [str(ctl)] if ctl.exists() else [PY, "-m", "videofetchd"]
    r = subprocess.run([*cmd, "export-archive", str(out), "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 4 + 30 - 1 and "vimeo 76979871" in lines and "youtube queued00001" in lines
    assert "youtube vid0000xyz" in lines and "youtube vid0002xyz" in lines
    assert all(len(line.split()) == 2 and line.split()[0].islower() for line in lines)
    r = run(cfg, "export-archive", "-")
    assert r.returncode == 0 and r.stdout.splitlines() == lines
    # the exported file imports cleanly into another queue
    other = tmp_path / "other"
    other.mkdir()
    r = run(write_config(other), "import-archive", "-", "--json", input=out.read_text())
    assert r.returncode == 0 and json.loads(r.stdout)["created"] == len(lines)
    r = run(cfg, "export-archive", str(tmp_path / "no-such-dir" / "a.txt"))
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_fetch_with_existing_videos_dir_downloads_nothing(tmp_path: Path, lib: Path) -> None:
    cfg = write_config(tmp_path)
    ids = [f"vid{i:04d}xyz" for i in range(30)]
    r = run(cfg, "add", *ids)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([PY, "-m", "videofetchd", "fetch", "--existing_videos_dir", str(lib), "--num_workers", "2",
                        "--config", str(cfg)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scan marked 30 existing files done" in r.stdout
    got = rows(tmp_path)
    assert {g["status"] for g in got.values()} == {"done"} and len(got) == 30
    assert {g["found_by"] for g in got.values()} == {"filename", "info.json"}
    assert all(g["attempts"] == 0 for g in got.values())
    assert not (tmp_path / "videos").exists() or not any((tmp_path / "videos").iterdir())


def test_ctrl_c_stops_the_scan_cleanly_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    root = tmp_path / "big"
    video_tree(root, 20, 1000)
    config = write_config(tmp_path)
    proc = subprocess.Popen([PY, "-m", "videofetchd", "scan", str(root), "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    scanner = psutil.Process(proc.pid)
    # stop the whole group the moment the walker exists: its 20,000 files take far longer than
    # that, and while the scanner is stopped the walker soon blocks on a full pipe anyway
    walker = wait_until(lambda: next(iter(scanner.children()), None), timeout=30, interval=0.001)
    os.killpg(proc.pid, signal.SIGSTOP)
    assert walker.status() != psutil.STATUS_ZOMBIE, "the walker finished before it could be stopped"
    scanner.resume()  # the scanner alone: it sets up the database, then waits for the stopped walker

    def schema_ready() -> bool:
        with contextlib.closing(sqlite3.connect(tmp_path / "q.db")) as db:
            return bool(db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'videos'").fetchone()[0])
    wait_until(lambda: (tmp_path / "q.db").exists() and schema_ready(), timeout=30)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "videofetchctl: interrupted" in err and "Traceback" not in err
    assert not psutil.pid_exists(walker.pid)  # killed and reaped
    assert len(rows(tmp_path)) < 20_000
    again = run(config, "scan", str(root))
    assert again.returncode == 0, again.stderr
    assert len(rows(tmp_path)) == 20_000 and all(r["status"] == "done" for r in rows(tmp_path).values())
