"""videofetchd: keep a video library complete with supervised yt-dlp workers."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Fetcher", "__version__"]


def __getattr__(name: str) -> Any:
    # Fetcher pulls in the database layer; keep `import videofetchd` (and videofetchctl) light
    if name == "Fetcher":
        from .fetch import Fetcher
        return Fetcher
    raise AttributeError(f"module 'videofetchd' has no attribute {name!r}")
