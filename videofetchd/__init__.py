"""videofetchd: keep a video library complete with supervised yt-dlp workers."""

__version__ = "0.1.0"
