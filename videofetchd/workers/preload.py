"""Imported once by the forkserver (``set_forkserver_preload``), never by the daemon itself.

Loads yt-dlp and compiles every extractor's URL pattern up front, so that each worker child
forked afterwards inherits them instead of spending ~0.3 s of CPU on its first job (and again
after every recycle).
"""

from __future__ import annotations

from . import child, download  # noqa: F401  (loaded here so that children inherit them)

download.warm_imports()
