"""Imported once by the forkserver (``set_forkserver_preload``), never by the daemon itself.

Loads yt-dlp and readies the extractor that will take the configured URLs (every extractor's URL
pattern compiled, or the answer from the cache of an earlier start); asks ffmpeg its version; and,
given the config (``PREBUILD_ENV``, set by ``slots.start_forkserver``), builds the first
generation's ``YoutubeDL`` with its TLS contexts. Every worker child forked afterwards inherits
all of it instead of spending ~0.5 s of CPU on its first job (and again after every recycle). A
failed prebuild costs nothing but speed: each child then builds its own, and its warm-up reports
the error.
"""

from __future__ import annotations

import atexit
import base64
import os
import pickle

from . import child, download, warmup  # noqa: F401  (download: loaded here for the children)
from ..config import PRIVATE_UMASK, DownloadConfig, load
from .forkstart import PREBUILD_ENV, PREBUILD_FILE, prebuildable


def _config() -> DownloadConfig | None:
    raw = os.environ.pop(PREBUILD_ENV, None)  # not inherited by the children's ffmpeg
    if not raw:
        return None
    try:
        if raw.startswith(PREBUILD_FILE):  # started before the parent read the file (``__main__``)
            cfg = load(raw[len(PREBUILD_FILE):] or None).download
            return cfg if prebuildable(cfg) else None
        cfg = pickle.loads(base64.b64decode(raw))
    except Exception:  # noqa: BLE001 - never let the forkserver die of it (the parent reports a bad config)
        return None
    return cfg if isinstance(cfg, DownloadConfig) else None


def _cache_dir(cfg: DownloadConfig | None) -> str | None:
    """``download.cache_dir`` (yt-dlp's cache too), else systemd's CacheDirectory=."""
    if cfg is not None and cfg.cache_dir:
        return cfg.cache_dir
    return os.environ.get("CACHE_DIRECTORY", "").split(":")[0] or None


# The forkserver exits when the parent's "alive" pipe closes, and the parent waits for it
# (slots.stop_helpers). Tearing down yt-dlp's objects one by one took ~50 ms of that wait, and
# nothing of them needs cleaning up: leave at once. (Children never run atexit: multiprocessing
# ends them with os._exit.)
atexit.register(os._exit, 0)

# The children write the videos: with the umask the daemon sets for itself (``cli.main``), also
# when ``python -m videofetchd`` started us before it had set it (``__main__``).
os.umask(PRIVATE_UMASK)
_cfg = _config()
_location = _cfg.ytdlp.get("ffmpeg_location") if _cfg is not None else None
_prober = warmup.probe_ffmpeg(_location if isinstance(_location, str) else None)
_key = warmup.warm_imports(_cfg.url_template if _cfg is not None else None, _cache_dir(_cfg))
_prober.join(timeout=10.0)
if _cfg is not None:
    try:
        child.prebuild(_cfg, _key)
    except Exception:  # noqa: BLE001 - the forkserver must live; the children's warm-up reports it
        pass
