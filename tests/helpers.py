"""Small helpers shared by videofetchd's tests (importable as the top-level module ``helpers``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

__all__ = ["video_tree", "wait_until"]


def wait_until(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05,
               message: str = "") -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Tests wait on conditions with this instead of sleeping a fixed time.  The predicate is called
    at least once, then every ``interval`` seconds; after ``timeout`` seconds an AssertionError is
    raised carrying ``message`` and the last value the predicate returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message or 'condition not met'} (timed out after {timeout}s; "
                                 f"last value: {value!r})")
        time.sleep(interval)


def video_tree(root: Path, dirs: int, per_dir: int, tag: str = "id") -> int:
    """``dirs`` directories of ``per_dir`` one-byte videos named yt-dlp style
    (``d03/clip 7 [id03x0007].mp4``); returns how many files it wrote."""
    for d in range(dirs):
        (root / f"d{d:02d}").mkdir(parents=True)
        for i in range(per_dir):
            (root / f"d{d:02d}" / f"clip {i} [{tag}{d:02d}x{i:04d}].mp4").write_bytes(b"v")
    return dirs * per_dir
