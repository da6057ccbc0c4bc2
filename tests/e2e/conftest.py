"""Fixtures for the end-to-end suite: the package installed with `make install` inside a Debian
container that runs a real systemd (systemd-nspawn), see nspawn.py.

Needs Linux and root. Elsewhere the suite is skipped, except under CI=true, where it fails: CI
must not report green for a suite it did not run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import nspawn
from e2e_support import SRC_IN_CONTAINER, UNIT

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))      # for `from mediaserver import MediaServer`
# Keep the copy of the checkout small: no venvs, VCS data, build output or caches.
COPY_IGNORE = shutil.ignore_patterns(".venv", "venv", ".git", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".mypy_cache", ".run",
                                     "bench", "*.pyc")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _is_e2e(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).parent)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = nspawn.unavailable_reason()
    if reason is None or _in_ci():
        return          # under CI=true, pytest_runtest_setup fails them instead
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = nspawn.unavailable_reason()
    if reason is not None and _in_ci() and _is_e2e(item):
        pytest.fail(f"CI=true and the e2e suite cannot run here: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="videofetchd-e2e-host-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def source_copy(workdir: Path) -> Path:
    """A private copy of the checkout, so building never writes into the shared tree."""
    dst = workdir / "src"
    shutil.copytree(REPO, dst, ignore=COPY_IGNORE, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def wheels(workdir: Path, source_copy: Path) -> Path:
    """Wheels for the package, its dependencies and the build backend, built with the host's pip
    (which is configured for this machine's package index); the container installs offline."""
    out = workdir / "wheels"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "--wheel-dir", str(out), f"{source_copy}[sites,postgres]", "setuptools>=61", "wheel"],
                   check=True, cwd=workdir)
    nspawn.log(f"wheels built in {time.monotonic() - t0:.1f}s")
    return out


@pytest.fixture(scope="session")
def container(wheels: Path) -> Iterator[nspawn.Container]:
    nspawn.ensure_rootfs_tarball()
    c = nspawn.Container(binds_ro={str(wheels): "/wheels"})
    c.start()
    try:
        yield c
    finally:
        if os.environ.get("VIDEOFETCHD_E2E_JOURNAL"):     # debugging aid: the whole unit journal
            print(f"\n----- journalctl -u {UNIT}\n{c.journal(UNIT, lines=2000)}", file=sys.stderr)
        c.stop()


@pytest.fixture(scope="session")
def installed(container: nspawn.Container, source_copy: Path) -> nspawn.Container:
    """`make install` run inside the container, as an administrator would (PREFIX=/usr/local)."""
    shutil.copytree(source_copy, container.path(SRC_IN_CONTAINER), symlinks=True)
    t0 = time.monotonic()
    r = container.C("make", "-C", SRC_IN_CONTAINER, "install", "PYTHON=/usr/bin/python3",
                    check=False, timeout=300,
                    env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"})
    assert r.returncode == 0, f"make install failed:\n{r.stdout}\n{r.stderr}"
    nspawn.log(f"make install inside the container took {time.monotonic() - t0:.1f}s")
    return container


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the unit's journal (and status) from the container to the report."""
    outcome: Any = yield
    report = outcome.get_result()
    if report.when == "teardown" or not report.failed:
        return
    c = item.funcargs.get("installed") or item.funcargs.get("container")  # type: ignore[attr-defined]
    if isinstance(c, nspawn.Container) and c.leader is not None:
        try:
            status = c.C("systemctl", "status", UNIT, "--no-pager", "-l", check=False).stdout
            report.sections.append(("systemctl status " + UNIT, status))
            report.sections.append(("journalctl -u " + UNIT, c.journal(UNIT, lines=150)))
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
            report.sections.append(("journal", f"could not read the journal: {exc!r}"))
