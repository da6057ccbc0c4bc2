"""Disk-full detection after a failed job (workers/hostprobe.py): from the errno of the OSError
behind the failure, found through yt-dlp's wrapping, never from the error's text.

The exceptions are real: OSErrors as the kernel reports them, wrapped by a real ``YoutubeDL``'s
``report_error`` inside the ``except`` block, as yt-dlp does when it cannot write a file.
"""

from __future__ import annotations

import errno
import urllib.error
from pathlib import Path

import pytest
import yt_dlp
from yt_dlp.utils import DownloadError

from videofetchd.queue.jobs import ErrorKind, Outcome
from videofetchd.workers.health import DISK_SPACE
from videofetchd.workers.hostprobe import host_outcome, os_errno


def wrapped(cause: BaseException, message: str) -> DownloadError:
    """``cause`` reported by yt-dlp the way it reports a failed write: message text of its own,
    the error itself in ``exc_info``."""
    ydl = yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True})
    try:
        try:
            raise cause
        except OSError:
            ydl.report_error(message)
    except DownloadError as exc:
        return exc
    raise AssertionError("report_error did not raise")


def full_disk(path: Path) -> OSError:
    """A real ENOSPC from the kernel's point of view, with the message a German locale gives."""
    return OSError(errno.ENOSPC, "Auf dem Gerät ist kein Speicherplatz mehr verfügbar", str(path))


def test_the_errno_is_found_through_yt_dlps_exc_info_cause_and_context(tmp_path: Path) -> None:
    exc = wrapped(full_disk(tmp_path / "v.description"), "Cannot write video description file")
    assert "Errno" not in str(exc) and "space" not in str(exc)  # nothing in the text to go by
    assert os_errno(exc) == errno.ENOSPC
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as inner:
            raise RuntimeError("postprocessing failed") from inner
    except RuntimeError as outer:
        assert os_errno(outer) == errno.EDQUOT
    try:
        try:
            open(tmp_path / "missing" / "x", "rb")
        except OSError:
            raise ValueError("while reading")  # implicit chaining: __context__
    except ValueError as ctx:
        assert os_errno(ctx) == errno.ENOENT
    assert os_errno(urllib.error.URLError(OSError(errno.ENOSPC, "x"))) == errno.ENOSPC
    assert os_errno(DownloadError("ERROR: HTTP Error 500: [Errno 28] No space left on device")) is None


@pytest.mark.parametrize("message", [
    "Cannot write video description file",                       # yt-dlp's words, no errno in them
    "unable to write data: [Errno 28] Auf dem Gerät ist kein Speicherplatz mehr verfügbar",
])
def test_a_full_disk_is_a_host_condition_whatever_the_text(tmp_path: Path, message: str) -> None:
    exc = wrapped(full_disk(tmp_path / "v.mp4.part"), message)
    outcome = Outcome(False, error=message, kind=ErrorKind.TRANSIENT, errno=os_errno(exc))
    result = host_outcome(outcome, str(tmp_path), 0)
    assert result.condition == DISK_SPACE and result.kind is None, result  # the row is not charged
    assert result.error is not None and message in result.error


def test_a_sites_text_that_quotes_enospc_is_the_rows_failure_not_the_disks(tmp_path: Path) -> None:
    """A hostile or confused site cannot pause every download by writing "[Errno 28]"."""
    message = "HTTP Error 503: upstream says [Errno 28] No space left on device"
    outcome = Outcome(False, error=message, kind=ErrorKind.TRANSIENT, errno=None)
    assert host_outcome(outcome, str(tmp_path), 0) == outcome
