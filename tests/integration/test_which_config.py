"""Which config, which database: a command that touches the queue never falls back to the built-in
defaults (a database no daemon reads); it says what to do instead, and it can say which database
it uses. ``Fetcher()`` keeps its documented defaults. The README's API example is run as a script,
with its main guard and without.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

import vfd
from helpers import video_tree
from mediaserver import MediaServer
from vfd import running
from videofetchd import Fetcher, config as config_mod

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DB = Path("/var/lib/videofetchd/videofetchd.db")


def bare(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m videofetchd ARGS`` with neither --config nor VIDEOFETCHD_CONFIG."""
    clean = {k: v for k, v in os.environ.items() if k != "VIDEOFETCHD_CONFIG"}
    return subprocess.run([vfd.PY, "-m", "videofetchd", *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})}, cwd=cwd)


@pytest.fixture
def no_default_config() -> None:
    if Path(config_mod.DEFAULT_CONFIG_PATH).exists():
        pytest.skip("this machine has the default config file")


@pytest.mark.parametrize("args", [["add", "forgot-config"], ["list"], ["retry", "--failed"],
                                  ["fetch", "--num-workers", "1"], ["scan", "/nonexistent-dir"],
                                  ["export-archive", "-"]])
def test_database_commands_without_a_config_stop_and_say_how(no_default_config: None, tmp_path: Path,
                                                             args: list[str]) -> None:
    existed = DEFAULT_DB.exists()
    r = bare(*args, cwd=tmp_path)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert config_mod.DEFAULT_CONFIG_PATH in lines[0] and "--config" in lines[0] and "VIDEOFETCHD_CONFIG" in lines[0]
    assert DEFAULT_DB.exists() == existed, "a database was created with the built-in defaults"


def test_a_missing_file_named_by_the_environment_is_an_error(tmp_path: Path) -> None:
    r = bare("add", "x", env={"VIDEOFETCHD_CONFIG": str(tmp_path / "typo.yaml")})
    assert r.returncode == 78 and f"{tmp_path / 'typo.yaml'} (from $VIDEOFETCHD_CONFIG): no such file" in r.stderr


def test_verbose_and_status_say_which_database(tmp_path: Path) -> None:
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4")
    r = vfd.ctl(cfg, "list", "-v")
    assert r.returncode == 0 and f"config {cfg}, database sqlite:///{tmp_path}/queue.db" in r.stderr, r.stderr
    with running(cfg) as d:
        r = vfd.ctl(cfg, "status")
        assert f"database: sqlite:///{tmp_path}/queue.db" in r.stdout.splitlines()[2], r.stdout
        assert vfd.status(cfg)["database"]["url"] == f"sqlite:///{tmp_path}/queue.db"
        assert d.stop() == 0


def test_fetcher_keeps_its_documented_defaults(no_default_config: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIDEOFETCHD_CONFIG", raising=False)
    fetcher = Fetcher()
    assert fetcher.config.database == config_mod.DatabaseConfig()
    # the defaults, with download.cache_dir decided as for any config (next to the default database)
    assert fetcher.config.download == config_mod.Config().download


# -- the README's API example as a script ---------------------------------------------------------------

def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if "Fetcher()" in b]
    return block


def run_script(tmp_path: Path, source: str, config: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    script = tmp_path / "example.py"
    script.write_text(source)
    t0 = time.monotonic()
    r = subprocess.run([vfd.PY, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path,
                       env={**os.environ, "VIDEOFETCHD_CONFIG": str(config)})
    return r, time.monotonic() - t0


def test_the_readme_example_runs_as_a_script_with_its_guard(tmp_path: Path) -> None:
    example = readme_example()
    assert 'if __name__ == "__main__":' in example, example
    library = tmp_path / "library"
    video_tree(library, 1, 3, "lib")
    with MediaServer(default_size=32 * 1024) as srv:
        cfg = vfd.write_config(tmp_path, url_template=srv.url_template)
        assert vfd.ctl(cfg, "add", "new-1", "new-2", "lib00x0001").returncode == 0
        r, _ = run_script(tmp_path, example.replace("/srv/videos", str(library)), cfg)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = {row["video_id"]: row for row in vfd.rows(tmp_path / "queue.db")}
        assert {v: row["status"] for v, row in rows.items()} == {
            "new-1": "done", "new-2": "done", "lib00x0000": "done", "lib00x0001": "done", "lib00x0002": "done"}
        assert rows["lib00x0001"]["found_by"] == "filename" and srv.body_requests("lib00x0001") == 0
        assert Path(rows["new-2"]["file_path"]).read_bytes() == srv.content("new-2")


def test_the_readme_example_without_its_guard_stops_with_one_clear_message(tmp_path: Path) -> None:
    example = readme_example()
    head, _, body = example.partition('if __name__ == "__main__":\n')
    unguarded = head + textwrap.dedent(body)
    assert "__main__" not in unguarded
    cfg = vfd.write_config(tmp_path, url_template="http://127.0.0.1:9/v/{id}.mp4")
    assert vfd.ctl(cfg, "add", "waits-1").returncode == 0
    (tmp_path / "srv").mkdir()
    r, took = run_script(tmp_path, unguarded.replace("/srv/videos", str(tmp_path / "srv")), cfg)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert took < 60
    err = r.stderr
    assert f"worker processes cannot start: {tmp_path / 'example.py'} calls videofetchd when it is imported" in err
    assert 'if __name__ == "__main__":' in err, err
    # one message: no traceback per worker, no leaked semaphores, no loop
    assert err.count("Traceback") == 1 and "leaked" not in err and "Exception ignored" not in err, err
    assert "bootstrapping phase" not in err, err
    assert vfd.counts(tmp_path / "queue.db") == {"queued": 1}
    assert [r["attempts"] for r in vfd.rows(tmp_path / "queue.db")] == [0]


@pytest.mark.parametrize("text, error", [
    ("download:\n  workers: [1, 2\n  directory: /x\n",
     "line 3, column 12: expected ',' or ']', but got ':' (YAML syntax error while parsing a flow sequence "
     "that starts at line 2, column 12)"),
    ("download: a: b\n", "line 1, column 12: mapping values are not allowed here (YAML syntax error)"),
    ("download:\n\tworkers: 2\n", "line 2, column 1: found character '\\t' that cannot start any token "
                                  "(YAML syntax error while scanning for the next token)"),
    ('download: "\x01"\n', "line 1, column 12: character #x0001 is not allowed (YAML syntax error)"),
])
def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path: Path, text: str, error: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    bin_dir = Path(vfd.PY).parent  # the console scripts the package installs
    for argv, prog in (([str(bin_dir / "videofetchd"), "--config", str(bad)], "videofetchd"),
                       ([str(bin_dir / "videofetchd"), "--check-config", "--config", str(bad)], "videofetchd"),
                       ([str(bin_dir / "videofetchctl"), "list", "--config", str(bad)], "videofetchctl")):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 78, (argv, r.returncode, r.stderr)
        assert r.stderr.splitlines() == [f"{prog}: config {bad}: {error}"], r.stderr  # once, one line
