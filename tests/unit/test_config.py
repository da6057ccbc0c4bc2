"""Configuration: the shipped example, units, and errors that name the file and the key path.

Configs are real YAML files under tmp_path; ``--check-config`` and ``--version`` run as real
processes through the installed console scripts.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from videofetchd import config, configload
from videofetchd.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "videofetchd.yaml"
BIN = Path(sys.executable).parent


def write(tmp_path: Path, data: Any, name: str = "vfd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def load_error(tmp_path: Path, data: Any) -> tuple[str, Path]:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return str(info.value), path


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted key paths of every user-facing field of a config dataclass, recursively."""
    paths = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        dotted = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            paths += field_paths(type(default), dotted + ".")
        else:
            paths.append(dotted)
    return paths


# -- the shipped example ------------------------------------------------------------------------

def test_example_config_is_valid() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.path == str(EXAMPLE)
    assert cfg.download.workers >= 1


def test_example_config_mentions_every_setting() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    paths = field_paths(config.Config)
    assert len(paths) > 20  # guards against a walk that finds nothing
    missing = []
    for dotted in paths:
        node: Any = data
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                missing.append(dotted)
                break
            node = node[key]
    assert missing == [], f"etc/videofetchd.yaml lacks {missing}"


#: where the shipped example deliberately differs from the built-in default, and what it sets
SHIPPED_NOT_DEFAULT = {"metrics.listen": "127.0.0.1:9464"}  # off without a config: tests never take a port


def test_example_config_values_are_the_defaults_for_scalars() -> None:
    # the example documents the defaults; a drift between the two misleads whoever reads it
    cfg, defaults = config.load(EXAMPLE), config.Config()
    for dotted in field_paths(config.Config):
        section, key = dotted.split(".")
        expected = SHIPPED_NOT_DEFAULT.get(dotted, getattr(getattr(defaults, section), key))
        assert getattr(getattr(cfg, section), key) == expected, dotted
    assert config.Config().metrics.listen == ""


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)),
                                            ("localhost:1", ("localhost", 1)), (" 0.0.0.0:65535 ", ("0.0.0.0", 65535))])
def test_metrics_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert config.parse_listen(text) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "::1:9464", "a b:1"])
def test_metrics_listen_refuses_what_cannot_be_bound(tmp_path: Path, value: str) -> None:
    message, path = load_error(tmp_path, {"metrics": {"listen": value}})
    assert f"{path}: metrics.listen: " in message and "port" in message, message


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, ""))
    assert dataclasses.replace(cfg, path="") == config.Config()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.yaml")
    cfg = config.load(tmp_path / "absent.yaml", missing_ok=True)
    assert cfg.download == config.Config().download  # the defaults, cache_dir decided as always


# -- units --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("6h", 21600.0), ("1d", 86400.0),
    ("500ms", 0.5), ("1h30m", 5400.0), ("2.5s", 2.5), (" 2M ", 120.0), ("1m 30s", 90.0)])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert configload.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten", "5x", "s", "", "-5s", "5s!", True, "1w"])
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        configload.parse_duration(text)


@pytest.mark.parametrize("text, size", [
    (1024, 1024), ("1024", 1024), ("512MiB", 512 * 1024**2), ("2GiB", 2 * 1024**3), ("1kb", 1000),
    ("1KiB", 1024), ("1.5MiB", int(1.5 * 1024**2)), ("3 MB", 3_000_000), ("2TiB", 2 * 1024**4),
    ("1.5tib", int(1.5 * 1024**4)), ("4TB", 4 * 1000**4), ("1t", 1000**4)])
def test_parse_size(text: Any, size: int) -> None:
    assert configload.parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "5 parsecs", "MiB", False, "-1MiB"])
def test_parse_size_refuses(text: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        configload.parse_size(text)


def test_units_in_a_file(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {
        "database": {"poll_interval": "500ms", "lease_duration": "2m"},
        "download": {"stall_timeout": "90s", "job_timeout": "6h", "retry_backoff": 30, "recycle_rss": "1GiB"}}))
    assert cfg.database.poll_interval == 0.5
    assert cfg.database.lease_duration == 120.0
    assert cfg.download.stall_timeout == 90.0
    assert cfg.download.job_timeout == 6 * 3600.0
    assert cfg.download.retry_backoff == 30.0
    assert cfg.download.recycle_rss == 1024**3


# -- errors name the file and the key path ------------------------------------------------------

def test_unknown_key_did_you_mean(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, {"download": {"wrokers": 2}})
    assert str(path) in msg
    assert "download.wrokers" in msg
    assert "did you mean 'workers'" in msg


def test_unknown_section_did_you_mean(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, {"databse": {"url": "sqlite:////tmp/x.db"}})
    assert str(path) in msg and "databse" in msg and "did you mean 'database'" in msg


def test_unknown_key_far_from_any(tmp_path: Path) -> None:
    msg, _ = load_error(tmp_path, {"download": {"zzzqqq": 1}})
    assert "download.zzzqqq" in msg and "unknown key" in msg and "did you mean" not in msg


@pytest.mark.parametrize("value", ["two", True, 2.5, [2]])
def test_wrong_type_names_file_key_and_value(tmp_path: Path, value: Any) -> None:
    msg, path = load_error(tmp_path, {"download": {"workers": value}})
    assert msg == f"{path}: download.workers: expected an integer between 1 and 256, got {value!r}"


@pytest.mark.parametrize("value", [0, -1, 257])
def test_out_of_range_integer(tmp_path: Path, value: int) -> None:
    msg, path = load_error(tmp_path, {"download": {"workers": value}})
    assert msg == f"{path}: download.workers: expected an integer between 1 and 256, got {value!r}"


def test_out_of_range_duration(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, {"download": {"stall_timeout": "100ms"}})
    assert msg.startswith(f"{path}: download.stall_timeout: ")
    assert ">= 0.5" in msg and "'100ms'" in msg


def test_bad_duration_string(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, {"database": {"poll_interval": "soon"}})
    assert msg.startswith(f"{path}: database.poll_interval: expected a duration")
    assert "'soon'" in msg


def test_negative_duration(tmp_path: Path) -> None:
    msg, _ = load_error(tmp_path, {"download": {"retry_backoff": -5}})
    assert "download.retry_backoff" in msg


def test_nan_duration_is_refused(tmp_path: Path) -> None:
    # a NaN stall_timeout would disable stall detection: `age > nan` is never true
    msg, _ = load_error(tmp_path, "download:\n  stall_timeout: .nan\n")
    assert "download.stall_timeout" in msg


def test_bad_size(tmp_path: Path) -> None:
    msg, _ = load_error(tmp_path, {"download": {"recycle_rss": "huge"}})
    assert "download.recycle_rss" in msg and "size" in msg
    msg, _ = load_error(tmp_path, {"download": {"min_free_space": "2 PiB"}})
    assert "download.min_free_space" in msg and "units: B, kB, KiB, MB, MiB, GB, GiB, TB, TiB" in msg, msg


def test_sizes_in_tib_in_a_file(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"download": {"min_free_space": "1.5TiB", "max_filesize": "2TB"}}))
    assert cfg.download.min_free_space == int(1.5 * 1024**4) and cfg.download.max_filesize == 2 * 1000**4


def test_list_of_strings(tmp_path: Path) -> None:
    msg, _ = load_error(tmp_path, {"scan": {"directories": "/srv/videos"}})
    assert "scan.directories" in msg and "list of strings" in msg
    cfg = config.load(write(tmp_path, {"scan": {"directories": ["/a", "/b"]}}, "ok.yaml"))
    assert cfg.scan.directories == ("/a", "/b")


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, {"download": 5})
    assert msg == f"{path}: download: expected a mapping, got 5"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, "- a\n- b\n")
    assert str(path) in msg and "expected a mapping" in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    msg, path = load_error(tmp_path, "download: [unclosed\n")
    assert str(path) in msg and "YAML syntax error" in msg


@pytest.mark.parametrize("section, key, value", [
    ("logging", "level", "chatty"),
    ("control", "mode", "rw-rw----"),
    ("database", "url", "mysql://x/y"),
    ("download", "url_template", "https://example.com/watch"),
    ("download", "url_template", "ftp://example.com/{id}"),
    ("download", "url_template", "https://example.com/{id}/{other}"),
    ("download", "output_template", "/etc/%(id)s.%(ext)s"),
    ("download", "output_template", "../%(id)s.%(ext)s"),
    ("scan", "id_pattern", "([a-z]+"),
    ("scan", "id_pattern", "(?P<vid>[a-z]+)"),
])
def test_cross_checks_name_the_key(tmp_path: Path, section: str, key: str, value: str) -> None:
    msg, path = load_error(tmp_path, {section: {key: value}})
    assert msg.startswith(f"{path}: {section}.{key}: "), msg


@pytest.mark.parametrize("text", ['"0660"', "'660'", '"0640"'])
def test_quoted_socket_mode(tmp_path: Path, text: str) -> None:
    cfg = config.load(write(tmp_path, f"control:\n  mode: {text}\n"))
    assert int(cfg.control.mode, 8) == int(text.strip("'\""), 8)


def test_unquoted_socket_mode_is_not_misread(tmp_path: Path) -> None:
    # the natural way to write a mode; it must mean 0660 or be refused, never silently 0432
    path = write(tmp_path, "control:\n  mode: 0660\n")
    try:
        cfg = config.load(path)
    except ConfigError as exc:
        assert "control.mode" in str(exc)
        return
    assert int(cfg.control.mode, 8) == 0o660, cfg.control.mode


def test_postprocess_timeout_not_below_stall_timeout(tmp_path: Path) -> None:
    msg, _ = load_error(tmp_path, {"download": {"stall_timeout": "10m", "postprocess_timeout": "1m"}})
    assert "download.postprocess_timeout" in msg


def test_ytdlp_params_pass_through(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"download": {"ytdlp": {"format": "b", "ratelimit": 5000000}}}))
    assert cfg.download.ytdlp == {"format": "b", "ratelimit": 5000000}


def test_identities_are_frozen_and_their_ytdlp_goes_over_the_shared_one(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"download": {
        "ytdlp": {"format": "b", "proxy": "http://shared:3128"},
        "identities": [{"name": "v4-home", "source_address": "192.0.2.10", "max_per_hour": 300},
                       {"name": "acct.2", "ytdlp": {"proxy": "socks5://p:1080", "cookiefile": "/c.txt"},
                        "burst": 3, "max_concurrent": 2}]}}))
    a, b = cfg.download.identities
    assert (a.name, a.max_per_hour, a.burst, a.max_concurrent) == ("v4-home", 300, 1, 0)
    assert cfg.download.ytdlp_params("v4-home") == {"format": "b", "proxy": "http://shared:3128",
                                                    "source_address": "192.0.2.10"}
    assert cfg.download.ytdlp_params("acct.2") == {"format": "b", "proxy": "socks5://p:1080", "cookiefile": "/c.txt"}
    assert cfg.download.ytdlp_params(None) == cfg.download.ytdlp
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.max_per_hour = 1  # type: ignore[misc]


@pytest.mark.parametrize("identities, where, problem", [
    ({"a": {}}, "download.identities", "expected a list of mappings"),
    (["a"], "download.identities[0]", "expected a mapping"),
    ([{"source_address": "127.0.0.2"}], "download.identities[0].name", "is required"),
    ([{"name": "a"}, {"name": "a"}], "download.identities[1].name", "duplicate identity name 'a'"),
    ([{"name": "a b"}], "download.identities[0].name", "expected letters, digits"),
    ([{"name": "a", "source_address": "eth0"}], "download.identities[0].source_address", "a local IP address"),
    ([{"name": "a", "max_per_hour": -1}], "download.identities[0].max_per_hour", "an integer >= 0"),
    ([{"name": "a", "burst": 0}], "download.identities[0].burst", "an integer >= 1"),
    ([{"name": "a", "max_per_hour": "lots"}], "download.identities[0].max_per_hour", "expected an integer"),
    ([{"name": "a", "ytdlp": {"source_address": "10.0.0.1"}}], "download.identities[0].ytdlp.source_address",
     "set download.identities[0].source_address instead"),
    ([{"name": "a", "max_per_hr": 5}], "download.identities[0].max_per_hr", "did you mean 'max_per_hour'"),
])
def test_bad_identities_name_the_key_path(tmp_path: Path, identities: Any, where: str, problem: str) -> None:
    msg, path = load_error(tmp_path, {"download": {"identities": identities}})
    assert msg.startswith(f"{path}: {where}: "), msg
    assert problem in msg


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.download.workers = 9  # type: ignore[misc]


def test_restart_required() -> None:
    a = config.Config()
    b = dataclasses.replace(a, database=dataclasses.replace(a.database, url="sqlite:////x.db"),
                            download=dataclasses.replace(a.download, workers=9))
    assert config.restart_required(a, b) == ["database.url"]


# -- the command line ---------------------------------------------------------------------------

def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=str(ROOT))


def test_check_config_valid(tmp_path: Path) -> None:
    path = write(tmp_path, {"database": {"url": f"sqlite:///{tmp_path}/q.db"}, "download": {"workers": 3}})
    r = run(str(BIN / "videofetchd"), "--check-config", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert str(path) in r.stdout
    assert not (tmp_path / "q.db").exists()  # validating does not open the database


def test_check_config_invalid_exits_78_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"download": {"workers": "two"}})
    r = run(str(BIN / "videofetchd"), "--check-config", "--config", str(path))
    assert r.returncode == EXIT_CONFIG == 78
    assert str(path) in r.stderr
    assert "download.workers: expected an integer between 1 and 256, got 'two'" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_typo_exits_78_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, {"download": {"stall_timout": "30s"}})
    r = run(sys.executable, "-m", "videofetchd", "--check-config", "--config", str(path))
    assert r.returncode == 78
    assert "download.stall_timout" in r.stderr and "did you mean 'stall_timeout'" in r.stderr


def test_check_config_missing_file_exits_78(tmp_path: Path) -> None:
    r = run(str(BIN / "videofetchd"), "--check-config", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 78
    assert "nope.yaml" in r.stderr


def test_check_config_reads_the_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path, {"logging": {"level": "loud"}})
    r = run(str(BIN / "videofetchd"), "--check-config", env={config.CONFIG_ENV: str(path)})
    assert r.returncode == 78
    assert str(path) in r.stderr and "logging.level" in r.stderr


@pytest.mark.parametrize("url", ["postgresql://vfd@db.example:notaport/queue", "sqlite:///"])
def test_check_config_refuses_a_database_url_the_daemon_cannot_open(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, {"database": {"url": url}})
    r = run(str(BIN / "videofetchd"), "--check-config", "--config", str(path))
    assert r.returncode == 78, r.stdout
    assert "database.url" in r.stderr


def test_check_config_on_the_example() -> None:
    r = run(str(BIN / "videofetchd"), "--check-config", "--config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("program", ["videofetchd", "videofetchctl"])
def test_version(program: str) -> None:
    from videofetchd import __version__
    r = run(str(BIN / program), "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{program} {__version__}"


# -- hostile input (issue 13) ----------------------------------------------------------------------

def test_download_limits_have_safe_defaults() -> None:
    d = config.DownloadConfig()
    assert d.allow_addresses == () and d.expand_playlists is False
    assert d.max_filesize == 32 * 1024**3


def test_allow_addresses_and_max_filesize_are_read(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, {"download": {"allow_addresses": ["192.168.1.0/24", "fd00::1"],
                                                    "max_filesize": "2GiB", "expand_playlists": True}}))
    assert cfg.download.allow_addresses == ("192.168.1.0/24", "fd00::1")
    assert cfg.download.max_filesize == 2 * 1024**3 and cfg.download.expand_playlists


def test_allow_addresses_must_be_cidr_ranges(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, {"download": {"allow_addresses": ["10.0.0.0/8", "nas.local"]}})
    assert message.startswith(f"{path}: download.allow_addresses[1]: expected an address or CIDR range")


def test_ytdlp_max_filesize_is_refused_for_ours(tmp_path: Path) -> None:
    """yt-dlp's max_filesize checks only a declared length and looks like success when it refuses."""
    message, _ = load_error(tmp_path, {"download": {"ytdlp": {"max_filesize": 1000}}})
    assert "download.ytdlp.max_filesize: use download.max_filesize" in message
