"""Human-readable rendering of a status snapshot (the dict the control socket returns).

Pure functions of the snapshot, shared by ``videofetchctl status`` and the one-shot ``fetch``
progress display. Standard library only, so the control client stays fast to start.
"""

from __future__ import annotations

from typing import Any

BAR_WIDTH = 20


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def bar(done: float, total: float | None) -> str:
    if not total:
        return "[" + "?" * BAR_WIDTH + "]"
    filled = int(BAR_WIDTH * min(1.0, done / total))
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def format_worker(w: dict[str, Any]) -> str:
    head = f"  slot {w['slot']:>2}  pid {w.get('pid') or '-':>7}  {w['state']:<10}"
    if w["state"] != "busy":
        return head
    done, total = w.get("downloaded_bytes") or 0, w.get("total_bytes")
    pct = f"{100 * done / total:5.1f}%" if total else "    ?%"
    speed = f"{human_bytes(w.get('speed_bps'))}/s" if w.get("speed_bps") else "-"
    return (f"{head} {w.get('video_id', '')[:24]:<24} {w.get('phase', ''):<14} {bar(done, total)} {pct} "
            f"{human_bytes(done)}/{human_bytes(total)}  {speed:>11}  eta {human_duration(w.get('eta_s'))}  "
            f"last progress {w.get('last_progress_age_s', 0):.1f}s ago")


def format_identity(ident: dict[str, Any]) -> list[str]:
    """An identity's line (address or proxy, running jobs, budget) and one line per site it used."""
    via = ident.get("source_address") or ident.get("proxy") or "default route"
    limit = f"/{ident['max_concurrent']}" if ident.get("max_concurrent") else ""
    budget = (f"budget {ident['max_per_hour']}/h, burst {ident.get('burst', 1)}" if ident.get("max_per_hour")
              else "no budget")
    lines = [f"  {ident['name']:<12} via {via:<22} running {ident.get('running', 0)}{limit:<4} {budget}"]
    for site in (ident.get("sites") or [])[:8]:
        if site.get("paused_s"):
            left = f"PAUSED {human_duration(site['paused_s'])} (strike {site.get('strikes', 1)}: " \
                   f"{(site.get('reason') or 'throttled')[:60]})"
        elif site.get("tokens") is None:
            left = "not budgeted"
        else:
            wait = f", next in {human_duration(site.get('next_token_s'))}" if site.get("next_token_s") else ""
            left = f"budget left {site['tokens']:.2f}/{ident.get('burst', 1)}{wait}"
        lines.append(f"      {site['site'][:30]:<30} {left}; started {site.get('started', 0)}")
    return lines


def format_status(st: dict[str, Any]) -> str:
    """The multi-line text of ``videofetchctl status``."""
    lines = [f"videofetchd {st.get('version', '')} pid {st.get('pid')} on {st.get('node', '?')}: "
             f"{st.get('state')}, up {human_duration(st.get('uptime_s'))}"]
    cfg = st.get("config") or {}
    if cfg:
        lines.append(f"config: {cfg.get('path')} (generation {cfg.get('generation')}, "
                     f"loaded {cfg.get('loaded_at')})")
        if cfg.get("last_reload_error"):
            lines.append(f"last reload FAILED: {cfg['last_reload_error']}")
        if cfg.get("restart_required"):
            lines.append("changed keys that need a restart: " + ", ".join(cfg["restart_required"]))
    db = st.get("database") or {}
    if db.get("url"):
        lines.append(f"database: {db['url']}")
    if db and not db.get("ok", True):
        lines.append(f"database UNAVAILABLE: {db.get('error')} ({db.get('pending_results', 0)} results held)")
    for cond in (st.get("health") or {}).get("conditions") or []:
        lines.append(f"HOST CONDITION {cond.get('name')} (since {cond.get('since')}): {cond.get('detail')}; "
                     "no new jobs until it clears")
    for note in st.get("notes") or []:
        lines.append(f"note: {note}")
    scan = st.get("scan") or {}
    if scan.get("last_result"):
        verdict = "last scan" if scan.get("last_ok", True) else "last scan FAILED"
        lines.append(f"{verdict} ({scan.get('last_finished')}): {scan['last_result']}")
    q = st.get("queue") or {}
    lines.append("queue: " + ", ".join(f"{k} {v}" for k, v in q.items()))
    c = st.get("counters") or {}
    lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    identities = st.get("identities") or []
    if identities:
        lines.append(f"identities ({len(identities)}):")
        for ident in identities:
            lines.extend(format_identity(ident))
    workers = st.get("workers") or []
    lines.append(f"workers ({len(workers)}):")
    lines.extend(format_worker(w) for w in workers)
    return "\n".join(lines)
