"""The YoutubeDL parameters videofetchd sets for speed must not change what yt-dlp does.

``allowed_extractors`` is spelt as a regex with exclusions instead of yt-dlp's ``["default"]``
(quadratic in the number of extractors, ~30 ms per YoutubeDL): both must give the same
extractors in the same order, with the yt-dlp that is installed (an upgrade that changes what
"default" means fails here, not in production)."""

from __future__ import annotations

import yt_dlp

from videofetchd.workers.download import _default_extractors


def _extractors(params: dict) -> list[str]:
    with yt_dlp.YoutubeDL({"quiet": True, **params}) as ydl:
        return list(ydl._ies)


def test_the_fast_spelling_of_the_default_extractors_is_the_default() -> None:
    spelt = _default_extractors()
    assert spelt != ["default"], "the fast spelling fell back to yt-dlp's own default"
    assert _extractors({"allowed_extractors": spelt}) == _extractors({})


def test_a_users_own_choice_of_extractors_is_kept(tmp_path) -> None:
    from videofetchd.config import from_dict
    from videofetchd.workers.download import Downloader

    cfg = from_dict({"download": {"directory": str(tmp_path), "url_template": "https://example.com/{id}",
                                  "ytdlp": {"allowed_extractors": ["generic"]}}}, "test").download

    class Quiet:
        def files(self, paths: list[str]) -> None: ...
        def phase(self, phase: int) -> None: ...
        def progress(self, downloaded: float, total: float, speed: float, eta: float) -> None: ...

    d = Downloader(cfg, Quiet())
    assert list(d.ydl._ies) == ["Generic"]
