"""The yt-dlp stack real sites need: yt-dlp, its JavaScript challenge solvers (yt-dlp-ejs), the
JavaScript runtime that runs them (deno), and ffmpeg/ffprobe for merges and audio extraction.

Everything is asked of yt-dlp itself, so the answer is what a download would meet: the solver
version it expects (``vendor.VERSION``), the runtime it finds (its own ``js_runtimes`` detection,
which looks next to the venv's Python first, then on PATH) and ffmpeg where ``ffmpeg_location``
says. ``probe()`` also makes the runtime evaluate JavaScript through yt-dlp's own invocation of it
(the real solver scripts, then a small expression), which is what a sandbox that forbids the JIT
breaks. yt-dlp is imported lazily: the daemon runs ``python -m videofetchd.workers.stack`` in a
subprocess (``probe_in_subprocess``), so it never loads yt-dlp itself and sees what is installed
now, while a worker child reports the version it has loaded (``loaded_version``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any

#: the distributions `make upgrade-ytdlp` keeps current together
DISTS = ("yt-dlp", "yt-dlp-ejs", "deno")
#: YoutubeDL params that decide which runtime and ffmpeg are found (the rest do not matter here)
PROBE_PARAMS = ("js_runtimes", "ffmpeg_location", "extractor_args", "remote_components")
#: evaluated after the solver scripts: proves they loaded and that the runtime computes
JS_PROBE = ("console.log(JSON.stringify({jsc: typeof jsc, "
            "answer: [1, 2, 3, 4].map(x => x * x).reduce((a, b) => a + b)}));")
JS_EXPECTED = {"jsc": "function", "answer": 30}
PROBE_TIMEOUT_S = 60.0


def installed_versions() -> dict[str, str]:
    """Versions of DISTS as installed now ("" when absent), read from their metadata on disk."""
    found = {}
    for name in DISTS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = ""
    return found


def loaded_version() -> str:
    """The yt-dlp version this process has loaded (a worker child: what its jobs run)."""
    module = sys.modules.get("yt_dlp.version")
    return str(getattr(module, "__version__", "")) if module is not None else ""


def age_days(version: str, today: datetime.date | None = None) -> int | None:
    """Days since a yt-dlp version's date (its versions are dates: 2025.11.12, 2025.6.30.1)."""
    m = re.match(r"(\d{4})\.(\d{1,2})\.(\d{1,2})", version)
    if not m:
        return None
    try:
        released = datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    return ((today or datetime.date.today()) - released).days


class _Quiet:
    """yt-dlp's logger for the probe: keeps warnings and errors, which are the answer."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    def info(self, msg: str) -> None:
        pass

    def warning(self, msg: str) -> None:
        self.lines.append(msg)

    def error(self, msg: str) -> None:
        self.lines.append(msg)


def _ytdlp(params: dict[str, Any]) -> Any:
    import yt_dlp
    chosen = {k: v for k, v in params.items() if k in PROBE_PARAMS}
    return yt_dlp.YoutubeDL({**chosen, "quiet": True, "no_warnings": True, "cachedir": False, "logger": _Quiet()})


def _ejs(found: dict[str, Any]) -> None:
    try:
        from yt_dlp.extractor.youtube.jsc._builtin.vendor import VERSION
        found["ejs_expected"] = str(VERSION)
    except ImportError:
        found["ejs_expected"] = ""  # a yt-dlp from before the JavaScript challenge solvers
    try:
        import yt_dlp_ejs
        found["ejs"] = str(yt_dlp_ejs.version)
    except ImportError:
        found["ejs"] = ""


def _runtime(ydl: Any, evaluate: bool) -> dict[str, Any]:
    """The runtime yt-dlp's YouTube extractor would use, found and invoked by yt-dlp itself."""
    try:
        from yt_dlp.extractor.youtube.jsc._director import initialize_jsc_director
    except ImportError:
        return {"error": "this yt-dlp predates JavaScript runtimes (2025.11.12 and later have them)"}
    enabled = sorted(ydl.params.get("js_runtimes") or {})
    director = initialize_jsc_director(ydl.get_info_extractor("Youtube"))
    usable = [p for p in director.providers.values() if getattr(p, "runtime_info", None) is not None
              and p.is_available()]
    if not usable:
        detected = [f"{name} {rt.info.version} (unsupported)" for name, rt in ydl._js_runtimes.items()
                    if rt is not None and rt.info is not None]
        return {"enabled": enabled, "error": "no usable JavaScript runtime"
                + (f"; found {', '.join(detected)}" if detected else "")}
    provider = max(usable, key=lambda p: p.JS_RUNTIME_NAME == "deno")  # yt-dlp prefers deno
    info = provider.runtime_info
    result: dict[str, Any] = {"enabled": enabled, "name": info.name, "version": info.version, "path": info.path}
    if evaluate:
        try:
            script = f"{provider._lib_script.code}\nObject.assign(globalThis, lib);\n{provider._core_script.code}\n"
            out = provider._run_js_runtime(script + JS_PROBE)
            answer = json.loads(out.strip().splitlines()[-1])
            result["evaluated"] = answer == JS_EXPECTED
            if answer != JS_EXPECTED:
                result["eval_error"] = f"unexpected answer {out.strip()[:200]!r}"
        except Exception as exc:  # noqa: BLE001 - whatever fails is the finding
            result["evaluated"] = False
            result["eval_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return result


def _ffmpeg(ydl: Any) -> dict[str, Any]:
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    pp = FFmpegPostProcessor(ydl)
    ffmpeg, ffprobe = pp._version, pp._probe_version
    return {"ffmpeg": ffmpeg or "", "ffmpeg_path": (shutil.which(pp.executable) or pp.executable) if ffmpeg else "",
            "ffprobe": ffprobe or "",
            "ffprobe_path": (shutil.which(pp.probe_executable) or pp.probe_executable) if ffprobe else ""}


def probe(params: dict[str, Any] | None = None, *, evaluate: bool = True) -> dict[str, Any]:
    """The whole stack as yt-dlp sees it with these YoutubeDL params (``download.ytdlp``)."""
    found: dict[str, Any] = {"python": sys.executable, "installed": installed_versions()}
    try:
        import yt_dlp.version
    except ImportError as exc:
        return {**found, "error": f"yt-dlp cannot be imported: {exc}"}
    found["ytdlp"] = str(yt_dlp.version.__version__)
    found["ytdlp_age_days"] = age_days(found["ytdlp"])
    _ejs(found)
    try:
        ydl = _ytdlp(params or {})
    except Exception as exc:  # noqa: BLE001 - bad js_runtimes and the like: the user's params
        return {**found, "error": f"yt-dlp refuses download.ytdlp: {exc}"}
    with ydl:
        found["js_runtime"] = _runtime(ydl, evaluate)
        found.update(_ffmpeg(ydl))
    return found


def probe_in_subprocess(params: dict[str, Any], *, python: str | None = None, evaluate: bool = False,
                        timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """``probe`` in a fresh interpreter: what a child started now would load (for the daemon)."""
    cmd = [python or sys.executable, "-m", "videofetchd.workers.stack"] + ([] if evaluate else ["--no-eval"])
    try:
        r = subprocess.run(cmd, input=json.dumps(params, default=str), capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"the stack probe failed: {exc}"}
    if r.returncode != 0:
        return {"error": f"the stack probe failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}"}
    try:
        answer: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        return {"error": "the stack probe answered no JSON"}
    return answer


def summary(found: dict[str, Any]) -> str:
    """One line: "yt-dlp 2026.10.26 (36 days), ejs 0.8.0, deno 2.9.8, ffmpeg 5.1.6"."""
    if "ytdlp" not in found:
        return str(found.get("error") or "unknown")
    rt = found.get("js_runtime") or {}
    age = found.get("ytdlp_age_days")
    parts = [f"yt-dlp {found['ytdlp']}" + (f" ({age} days)" if age is not None else ""),
             f"ejs {found.get('ejs') or 'missing'}",
             f"{rt['name']} {rt['version']}" if rt.get("name") else "no JS runtime",
             f"ffmpeg {found['ffmpeg']}" if found.get("ffmpeg") else "no ffmpeg"]
    return ", ".join(parts)


def troubles(found: dict[str, Any]) -> list[str]:
    """What would make real sites fail, in a few words each (the daemon's log line)."""
    runtime = found.get("js_runtime") or {}
    found_ejs, expected = found.get("ejs"), found.get("ejs_expected")
    return [x for x in (found.get("error"), runtime.get("error"),
                        None if found.get("ffmpeg") else "no ffmpeg: merges and audio extraction fail",
                        None if found_ejs == expected else
                        f"yt-dlp-ejs {found_ejs or 'missing'}, yt-dlp expects {expected}")
            if x]


def main() -> int:
    """``python -m videofetchd.workers.stack [--no-eval]``: YoutubeDL params as JSON on stdin."""
    text = sys.stdin.read() if not sys.stdin.isatty() else ""
    params = json.loads(text) if text.strip() else {}
    print(json.dumps(probe(params, evaluate="--no-eval" not in sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
