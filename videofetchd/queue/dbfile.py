"""Which SQLite file the store opened, so that a file deleted or replaced under us is noticed.

SQLite keeps writing into a file that was unlinked (its directory removed, a restore that
replaced it): every result from then on would be lost at the next start while status still
counted it done. Comparing the (device, inode) we opened with the path's answers that in one
``stat``. PostgreSQL needs nothing of this: its server owns the files.
"""

from __future__ import annotations

import os

from ..config import parse_database_url
from ..errors import DatabaseGone


class DbFile:
    def __init__(self, url: str, backend: str) -> None:
        self.path: str | None = None
        self.opened: tuple[int, int] | None = None  # (st_dev, st_ino)
        if backend == "sqlite":
            path = parse_database_url(url)[1]["path"]
            if path != ":memory:":
                self.path = os.path.abspath(path)

    def remember(self) -> None:
        """Note the file now at the path (call once it is open)."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:  # not created (nothing written yet): nothing to compare with
            return
        self.opened = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """DatabaseGone when the file we opened is no longer the one at its path."""
        if self.path is None or self.opened is None:
            return
        try:
            st = os.stat(self.path)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        if now != self.opened:
            what = "deleted" if now is None else "replaced by another file"
            raise DatabaseGone(f"the database file {self.path} was {what} while videofetchd had it open; "
                               "stopping so that no result is written where nobody can read it "
                               "(a restart opens the file at that path, or creates a fresh one)")
