"""Human-readable rendering of a status snapshot (the dict the control socket returns).

Pure functions of the snapshot, shared by ``videofetchctl status`` (once or ``--watch``) and the
one-shot ``fetch`` live view, plus the two ways of redrawing on a terminal. Given a width, every
line fits it: long fields are shortened (an ellipsis marks the cut), columns are dropped on a
narrow terminal, and a terminal never wraps a line, because a wrapped line breaks the redraw
(repeated headers, leftover fragments). Text from outside (IDs, errors, paths) is shown with
control characters escaped, so a hostile ID or error message cannot move the cursor or retitle
the terminal. Standard library only, so the control client stays fast to start.
"""

from __future__ import annotations

import os
import shutil
import textwrap
import threading
import unicodedata
from typing import Any, TextIO

from ..text import printable

BAR_WIDTH = 20
#: no progress for this long: a worker shows its stall age instead of its last speed and ETA
STALE_PROGRESS_S = 5.0
ELLIPSIS = "\u2026"


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide (CJK) characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def fit(text: str, width: int | None) -> str:
    """``text`` cut to ``width`` cells, the cut marked with an ellipsis (None: as it is)."""
    if width is None or cell_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for c in text:
        w = cell_width(c)
        if used + w > width - 1:
            break
        out.append(c)
        used += w
    return "".join(out) + ELLIPSIS


def human_bytes(n: float | None, *, short: bool = False) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{value:.0f}" + ("" if short else " B")
            return f"{value:.1f}" + (unit[0] if short else f" {unit}")
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def bar(done: float, total: float | None, width: int = BAR_WIDTH) -> str:
    if not total:
        return "[" + "?" * width + "]"
    filled = int(width * min(1.0, done / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


# -- one worker ------------------------------------------------------------------------------------

def _progress(w: dict[str, Any], *, short: bool) -> tuple[str, str, str]:
    """(percent and sizes, speed or stall age, ETA) of a busy worker."""
    done, total = w.get("downloaded_bytes") or 0, w.get("total_bytes")
    pct = f"{100 * done / total:5.1f}%" if total else "    ?%"
    sizes = f"{pct} {human_bytes(done, short=short)}/{human_bytes(total, short=short)}"
    stalled = w.get("stalled_s")
    if stalled is not None:
        return sizes, f"stalled {human_duration(stalled)}", ""
    speed = f"{human_bytes(w.get('speed_bps'), short=short)}/s" if w.get("speed_bps") else "-"
    return sizes, speed, f"eta {human_duration(w.get('eta_s'))}" if w.get("eta_s") is not None else ""


def _layouts(w: dict[str, Any], vid: str, idw: int) -> list[str]:
    """The worker line in each layout, from the richest to the leanest (LAYOUTS of them)."""
    slot, pid, state = w["slot"], w.get("pid") or "-", w["state"]
    if state != "busy":
        retiring = " (retiring)" if w.get("retiring") else ""
        wide, lean = f"  slot {slot:>2}  pid {pid:>7}  {state}{retiring}", f"  {slot:>2} {state}{retiring}"
        return [wide, wide, lean, lean]
    phase = w.get("phase") or ""
    done, total = w.get("downloaded_bytes") or 0, w.get("total_bytes")
    sizes, speed, eta = _progress(w, short=False)
    age = w.get("last_progress_age_s")
    last = f"  last progress {age:.1f}s ago" if age is not None and w.get("stalled_s") is None else ""
    ssizes, sspeed, seta = _progress(w, short=True)
    vid = _pad(fit(vid, idw), idw)
    return [line.rstrip() for line in (
        f"  slot {slot:>2}  pid {pid:>7}  busy  {vid} {phase:<14} {bar(done, total)} {sizes}  {speed:>11}  {eta}{last}",
        f"  slot {slot:>2}  busy  {vid} {phase:<14} {bar(done, total, 10)} {sizes}  {speed:>11}  {eta}",
        f"  {slot:>2} {vid} {phase:<11} {bar(done, total, 10)} {ssizes} {sspeed:>9} {seta}",
        f"  {slot:>2} {vid} {phase:<11} {ssizes} {sspeed:>9} {seta}")]


LAYOUTS = 4


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - cell_width(text))


def format_workers(workers: list[dict[str, Any]], width: int | None = None) -> list[str]:
    """One line per worker, all in the richest layout in which every line fits ``width`` (so the
    columns line up); on a terminal too narrow even for the leanest, the IDs are shortened."""
    vids = [printable(w.get("video_id") or "") for w in workers]
    idw = max([11, *(cell_width(v) for v, w in zip(vids, workers) if w["state"] == "busy")])
    if width is not None:  # on a terminal a long ID (a URL's hash) gives way to the progress columns
        idw = min(24, idw)
    every = [_layouts(w, v, idw) for w, v in zip(workers, vids)]
    for level in range(LAYOUTS):
        if width is None or all(cell_width(lines[level]) <= width for lines in every):
            return [lines[level] for lines in every]
    assert width is not None
    rooms = [width - cell_width(_layouts(w, v, 0)[-1]) for w, v in zip(workers, vids) if w["state"] == "busy"]
    idw = max(8, min(rooms, default=8))
    return [fit(_layouts(w, v, idw)[-1], width) for w, v in zip(workers, vids)]


def format_worker(w: dict[str, Any], width: int | None = None) -> str:
    """One worker's line, fitting ``width``."""
    return format_workers([w], width)[0]


# -- the whole status --------------------------------------------------------------------------------

def _pack(prefix: str, items: list[str], width: int | None) -> list[str]:
    """``prefix`` + items joined by ", ", continued on indented lines rather than past ``width``."""
    lines, line, filled = [], prefix, False
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if filled and width is not None and cell_width(line) + 1 + cell_width(piece) > width:
            lines.append(line)
            line = "  " + piece
        else:
            line = f"{line} {piece}"
        filled = True
    lines.append(line)
    return [fit(x, width) for x in lines]


def format_identity(ident: dict[str, Any]) -> list[str]:
    """An identity's line (address or proxy, running jobs, budget) and one line per site it used."""
    via = printable(ident.get("source_address") or ident.get("proxy") or "default route")
    limit = f"/{ident['max_concurrent']}" if ident.get("max_concurrent") else ""
    budget = (f"budget {ident['max_per_hour']}/h, burst {ident.get('burst', 1)}" if ident.get("max_per_hour")
              else "no budget")
    lines = [f"  {printable(ident['name']):<12} via {via:<22} running {ident.get('running', 0)}{limit:<4} {budget}"]
    for site in (ident.get("sites") or [])[:8]:
        if site.get("paused_s"):
            left = f"PAUSED {human_duration(site['paused_s'])} (strike {site.get('strikes', 1)}: " \
                   f"{printable(site.get('reason') or 'throttled')[:60]})"
        elif site.get("tokens") is None:
            left = "not budgeted"
        else:
            wait = f", next in {human_duration(site.get('next_token_s'))}" if site.get("next_token_s") else ""
            left = f"budget left {site['tokens']:.2f}/{ident.get('burst', 1)}{wait}"
        lines.append(f"      {printable(site['site'])[:30]:<30} {left}; started {site.get('started', 0)}")
    return lines


def _counter_items(c: dict[str, Any]) -> list[str]:
    return [f"downloaded {human_bytes(v)}" if k == "downloaded_bytes" else f"{k} {v}" for k, v in c.items()]


def format_stack(stack: dict[str, Any] | None, workers: list[dict[str, Any]]) -> list[str]:
    """"stack: yt-dlp 2026.10.26 (36 days), ejs 0.8.0, deno 2.9.8, ffmpeg 5.1.6", plus a line while
    the workers still run a yt-dlp other than the one installed (recycled as they go idle)."""
    if not stack:
        return []
    if stack.get("ytdlp") is None:
        return [f"stack: {printable(stack.get('error') or 'not probed yet')}"]
    age = stack.get("ytdlp_age_days")
    runtime = stack.get("js_runtime")
    parts = [f"yt-dlp {stack['ytdlp']}" + (f" ({age} days)" if age is not None else ""),
             f"ejs {stack.get('ejs') or 'MISSING'}" + ("" if stack.get("ejs") == stack.get("ejs_expected")
                                                       else f" (yt-dlp expects {stack.get('ejs_expected')})"),
             f"{runtime} {stack.get('js_runtime_version')}" if runtime else "NO JS RUNTIME",
             f"ffmpeg {stack['ffmpeg']}" if stack.get("ffmpeg") else "NO FFMPEG"]
    lines = ["stack: " + ", ".join(printable(p) for p in parts)]
    running: dict[str, int] = {}
    for x in workers:
        if x.get("ytdlp"):
            running[x["ytdlp"]] = running.get(x["ytdlp"], 0) + 1
    if set(running) - {stack["ytdlp"]}:
        lines.append("workers run yt-dlp " + ", ".join(f"{printable(v)} ({n})" for v, n in sorted(running.items()))
                     + ": recycled to the installed one as they go idle")
    return lines


def format_status(st: dict[str, Any], width: int | None = None, height: int | None = None) -> str:
    """The text of ``videofetchctl status``; with ``width``/``height``, it fits a terminal that size."""
    w = width
    lines = [fit(f"videofetchd {st.get('version', '')} pid {st.get('pid')} on {printable(st.get('node', '?'))}: "
                 f"{st.get('state')}, up {human_duration(st.get('uptime_s'))}", w)]
    cfg = st.get("config") or {}
    if cfg:
        lines.append(fit(f"config: {printable(cfg.get('path'))} (generation {cfg.get('generation')}, "
                         f"loaded {cfg.get('loaded_at')})", w))
        if cfg.get("last_reload_error"):
            lines.append(fit(f"last reload FAILED: {printable(cfg['last_reload_error'])}", w))
        if cfg.get("restart_required"):
            lines.append(fit("changed keys that need a restart: " + ", ".join(cfg["restart_required"]), w))
    db = st.get("database") or {}
    if db.get("url"):
        lines.append(fit(f"database: {printable(db['url'])}", w))
    lines.extend(fit(x, w) for x in format_stack(st.get("stack"), st.get("workers") or []))
    if db and not db.get("ok", True):
        lines.append(fit(f"database UNAVAILABLE: {printable(db.get('error'))} "
                         f"({db.get('pending_results', 0)} results held)", w))
    for cond in (st.get("health") or {}).get("conditions") or []:
        lines.append(fit(f"HOST CONDITION {printable(cond.get('name'))} (since {cond.get('since')}): "
                         f"{printable(cond.get('detail'))}; no new jobs until it clears", w))
    for note in st.get("notes") or []:
        lines.append(fit(f"note: {printable(note)}", w))
    scan = st.get("scan") or {}
    if scan.get("last_result"):
        verdict = "last scan" if scan.get("last_ok", True) else "last scan FAILED"
        lines.append(fit(f"{verdict} ({scan.get('last_finished')}): {printable(scan['last_result'])}", w))
    q = st.get("queue") or {}
    lines += _pack("queue:", [f"{k} {v}" for k, v in q.items()], w)
    lines += _pack("counters:", _counter_items(st.get("counters") or {}), w)
    identities = st.get("identities") or []
    if identities:
        lines.append(f"identities ({len(identities)}):")
        for ident in identities:
            lines.extend(fit(x, w) for x in format_identity(ident))
    workers = st.get("workers") or []
    shown = workers
    if height is not None and len(lines) + 1 + len(workers) > height:
        shown = workers[:max(0, height - len(lines) - 2)]
    lines.append(f"workers ({len(workers)}):")
    lines.extend(format_workers(shown, w))
    if len(shown) < len(workers):
        busy = sum(1 for x in workers[len(shown):] if x.get("state") == "busy")
        lines.append(fit(f"  ... {len(workers) - len(shown)} more ({busy} busy): a taller terminal shows them", w))
    return "\n".join(lines)


# -- drawing on a terminal ---------------------------------------------------------------------------

def terminal_size(stream: TextIO) -> tuple[int, int]:
    """(columns, lines) of the terminal behind ``stream`` ($COLUMNS/$LINES or 80x24 when it cannot say)."""
    try:
        size = os.get_terminal_size(stream.fileno())
        if size.columns > 0 and size.lines > 0:  # a fresh pseudo-terminal may say 0x0
            return size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        pass
    fallback = shutil.get_terminal_size((80, 24))
    return fallback.columns, fallback.lines


class Screen:
    """Full-screen redraw for ``status --watch``: home, each line erased to its end, the rest erased.

    Lines are cut one cell short of the width, so the terminal never reaches its last column (whose
    pending wrap would swallow the erase), and the last line gets no newline, so nothing scrolls.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        out.write("\x1b[?25l\x1b[H\x1b[2J")  # hide the cursor; start on a clean screen

    def size(self) -> tuple[int, int]:
        cols, rows = terminal_size(self.out)
        return max(cols - 1, 10), max(rows, 3)

    def draw(self, lines: list[str]) -> None:
        cols, rows = self.size()
        body = "\x1b[K\n".join(fit(x, cols) for x in lines[:rows])
        self.out.write("\x1b[H" + body + "\x1b[K\x1b[J")
        self.out.flush()

    def close(self) -> None:
        self.out.write("\x1b[?25h\n")
        self.out.flush()


class LiveBlock:
    """A block of lines redrawn in place below what a program printed before (``fetch``).

    Each redraw moves up over the lines drawn last time, rewrites them and erases what is left
    below, so a block that shrinks leaves nothing behind. Lines never wrap and the block never
    grows taller than the terminal, because the cursor cannot move up past the top: both would
    repeat the header. ``message()`` prints a line (a log record) above the block.
    Thread-safe: the database thread logs too.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.shown = 0
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def _render(self, lines: list[str]) -> str:
        cols, rows = terminal_size(self.out)
        cols, rows = max(cols - 1, 10), max(rows - 1, 2)
        if len(lines) > rows:
            lines = lines[:rows - 1] + [f"  ... {len(lines) - rows + 1} more lines: a taller terminal shows them"]
        text = "".join("\x1b[2K" + fit(x, cols) + "\n" for x in lines)
        up = "\x1b[F" * self.shown
        self.shown = len(lines)
        return up + text + "\x1b[J"

    def draw(self, lines: list[str]) -> None:
        with self._lock:
            self.lines = list(lines)
            self.out.write(self._render(self.lines))
            self.out.flush()

    def message(self, text: str) -> None:
        """Print ``text`` above the block, broken into lines that fit (nothing cut, nothing wrapped)."""
        cols = max(terminal_size(self.out)[0] - 1, 10)
        lines = [piece for line in text.split("\n")
                 for piece in textwrap.wrap(printable(line), cols, subsequent_indent="    ", break_on_hyphens=False,
                                            drop_whitespace=True) or [""]]
        with self._lock:
            up, self.shown = "\x1b[F" * self.shown, 0
            body = "".join(fit(line, cols) + "\n" for line in lines)
            self.out.write(up + "\x1b[J" + body + self._render(self.lines))
            self.out.flush()
