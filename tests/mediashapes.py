"""Real media in the shapes real sites serve, made by ffmpeg at test time, and a server for them.

``make_shapes(root)`` writes, in a few seconds of CPU, from one 4-second 160x120 clip with sound:
an HLS master playlist with two variants (``hls/<name>/master.m3u8``), a DASH manifest with
separate video and audio adaptation sets (``dash/manifest.mpd``), a plain MP4 with audio, a
WebVTT subtitle file, a JPEG thumbnail, and HTML pages with a ``<video>`` element (one with
``poster`` and a ``<track>``). ``ShapeServer`` serves that tree over HTTP/1.1 with byte ranges,
and can stall a path (headers sent, then nothing) for its first N requests, which is how a
site hangs in the middle of a download. Stdlib and ffmpeg only; importable as ``mediashapes``.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

from sites import QuietServer

SECONDS = 4
SIZE = "160x120"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=120)


def make_clip(path: Path, seconds: int = SECONDS, size: str = SIZE) -> Path:
    """An H.264/AAC MP4 of ``seconds`` of a test pattern and a tone (keyframe every second)."""
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=10:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "32k", "-shortest", "-movflags", "+faststart", str(path))
    return path


def make_hls(clip: Path, out: Path) -> Path:
    """Two variants (160x120 and 80x60) of ``clip`` in 1-second MPEG-TS segments, and a master."""
    out.mkdir(parents=True, exist_ok=True)
    variants = [("hi", "160x120", 200_000), ("lo", "80x60", 100_000)]
    for name, size, _ in variants:
        (out / name).mkdir(exist_ok=True)
        _ffmpeg("-i", str(clip), "-vf", f"scale={size.replace('x', ':')}", "-c:v", "libx264", "-preset",
                "ultrafast", "-g", "10", "-c:a", "aac", "-b:a", "32k", "-f", "hls", "-hls_time", "1",
                "-hls_list_size", "0", "-hls_segment_filename", str(out / name / "seg%02d.ts"),
                str(out / name / "index.m3u8"))
    lines = ["#EXTM3U"]
    for name, size, bandwidth in variants:
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={size},CODECS="avc1.42c00d,mp4a.40.2"',
                  f"{name}/index.m3u8"]
    master = out / "master.m3u8"
    master.write_text("\n".join(lines) + "\n")
    return master


def make_dash(clip: Path, out: Path) -> Path:
    """A DASH manifest whose video and audio are separate adaptation sets (yt-dlp merges bv+ba)."""
    out.mkdir(parents=True, exist_ok=True)
    _ffmpeg("-i", str(clip), "-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "dash", "-seg_duration", "1",
            "-use_template", "1", "-use_timeline", "1", "-adaptation_sets", "id=0,streams=v id=1,streams=a",
            str(out / "manifest.mpd"))
    return out / "manifest.mpd"


def make_shapes(root: Path) -> Path:
    """Every shape under ``root`` (see the module docstring); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    clip = make_clip(root / "clip.mp4")
    make_hls(clip, root / "hls")
    make_dash(clip, root / "dash")
    (root / "subs.vtt").write_text("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello\n\n"
                                   "00:00:02.000 --> 00:00:04.000\nworld\n")
    _ffmpeg("-i", str(clip), "-frames:v", "1", "-update", "1", str(root / "thumb.jpg"))
    return root


def video_page(title: str, src: str, *, poster: str | None = None, track: str | None = None) -> str:
    """An HTML page with one ``<video>``, as a blog or a small site embeds one."""
    extra = f' poster="{poster}"' if poster else ""
    track_tag = f'<track kind="subtitles" src="{track}" srclang="en" label="English">' if track else ""
    return (f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
            f'<video controls{extra}><source src="{src}" type="video/mp4">{track_tag}</video></body></html>')


_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".mpd": "application/dash+xml",
          ".m4s": "video/iso.segment", ".mp4": "video/mp4", ".vtt": "text/vtt", ".jpg": "image/jpeg",
          ".html": "text/html; charset=utf-8"}


class _Server(QuietServer):
    shapes: ShapeServer


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.server.shapes.handle(self, head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self.server.shapes.handle(self, head=True)


class ShapeServer:
    """Serves the files under ``root`` (URL path = file path; ``alias`` maps more paths to files)."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root.resolve()
        self.host = host
        self.alias: dict[str, Path] = {}  # URL path -> file
        self.mounts: dict[str, Path] = {}  # URL path prefix ("/hls/a1/") -> directory
        self.pages: set[str] = set()  # paths served as text/html whatever their name
        self.stalls: dict[str, int] = {}  # path -> requests still to stall
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        self._httpd: _Server | None = None

    def start(self) -> ShapeServer:
        self._httpd = _Server((self.host, 0), _Handler)
        self._httpd.shapes = self
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ShapeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str) -> str:
        assert self._httpd is not None
        return f"http://{self.host}:{self._httpd.server_port}/{path.lstrip('/')}"

    def page(self, path: str, html: str) -> str:
        """Publish an HTML page at ``path`` (written under root); returns its URL."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html)
        self.pages.add("/" + path.lstrip("/"))
        return self.url(path)

    def mount(self, prefix: str, directory: Path) -> str:
        """Serve ``directory`` under the URL path ``prefix`` too; returns the prefix's URL."""
        prefix = "/" + prefix.strip("/") + "/"
        self.mounts[prefix] = directory.resolve()
        return self.url(prefix)

    def stall(self, path: str, times: int = 1) -> None:
        """The next ``times`` requests of ``path`` get their headers and then no byte, until the
        connection is dropped or the server stops."""
        with self.lock:
            self.stalls["/" + path.lstrip("/")] = times

    def hits(self, path: str) -> int:
        with self.lock:
            return self.requests.count("/" + path.lstrip("/"))

    def _file(self, path: str) -> Path | None:
        if path in self.alias:
            return self.alias[path]
        base, rest = self.root, path.lstrip("/")
        for prefix, directory in self.mounts.items():
            if path.startswith(prefix):
                base, rest = directory, path[len(prefix):]
        target = (base / rest).resolve()
        if not str(target).startswith(str(base) + os.sep) or not target.is_file():
            return None
        return target

    def handle(self, h: _Handler, *, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append(path)
            stall = self.stalls.get(path, 0) > 0 and not head
            if stall:
                self.stalls[path] -= 1
        target = self._file(path)
        if target is None:
            h.send_error(404)
            return
        data = target.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", h.headers.get("Range") or "")
        if m and (m[1] or m[2]):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            else:
                start = max(0, len(data) - int(m[2]))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        h.send_response(status)
        kind = _TYPES[".html"] if path in self.pages else _TYPES.get(target.suffix, "application/octet-stream")
        h.send_header("Content-Type", kind)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        h.end_headers()
        if head:
            return
        if stall:  # hold the connection open with nothing sent, as a hung site does
            h.wfile.flush()
            self.released.wait(120)
            return
        h.wfile.write(data[start:end + 1])


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def probe(path: Path) -> dict[str, object]:
    """ffprobe's view of a file: its streams' codec types and its duration; raises if invalid."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type",
                          "-of", "default=noprint_wrappers=1", str(path)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    kinds = re.findall(r"codec_type=(\w+)", out)
    duration = re.search(r"duration=([\d.]+)", out)
    return {"streams": kinds, "duration": float(duration[1]) if duration else 0.0}
