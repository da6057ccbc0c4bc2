"""Real file-system faults for tests: a tmpfs of a chosen size, an immutable directory.

Importable as the top-level module ``hostfs`` (tests/ is on sys.path). Needs root, as CI runs;
without it (a developer's own account) the tests that use it skip, under ``CI=true`` they fail.
Everything mounted or flagged here is undone in a ``finally``, whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{what} needs root, and CI runs as root")
        pytest.skip(f"{what} needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount`` syntax: 20m) mounted on ``path`` for the block."""
    need_root("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "vfd-test", str(path)], check=True)
    try:
        yield path
    finally:
        # lazy: a daemon the test failed to stop may still hold a file open in it
        subprocess.run(["umount", "-l", str(path)], check=False)


def resize(path: Path, size: str) -> None:
    """Grow (or shrink) the tmpfs on ``path`` while it is in use."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``chattr +i path`` for the block (skips where the file system has no such flag)."""
    need_root("chattr +i")
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)
