"""Control-socket wire format: one JSON object per line, each way. Standard library only.

Requests are ``{"cmd": NAME, ...}``; replies carry ``"v": PROTOCOL_VERSION`` and either the
answer or ``{"error": "..."}``. Newline-delimited JSON keeps the socket debuggable with
``socat - UNIX-CONNECT:/run/videofetchd/control.sock``.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  #: bytes; a longer request is refused
COMMANDS = ("status", "reload", "pause", "resume", "nudge", "ping")
#: commands that change the daemon; allowed only for root, the daemon's user or the socket's group
PRIVILEGED = frozenset({"reload", "pause", "resume"})


class ProtocolError(ValueError):
    """A request that is not valid JSON, not an object, or names no known command."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


MAX_DEPTH = 8  #: arrays/objects inside a request, at most (requests are flat: {"cmd": "status"})


def decode_request(line: bytes) -> dict[str, Any]:
    """A request, or ProtocolError saying what is wrong with it: every JSON that parses but has
    the wrong shape (a list, a non-string command, deep nesting) is refused here, so that no
    handler ever sees it and no exception other than ProtocolError leaves."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed request: {exc}") from None
    except RecursionError:  # "[[[[...": 64 KiB of brackets is deeper than the parser goes
        raise ProtocolError(f"request nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"request must be a JSON object, got {_kind(message)}")
    if _depth(message) > MAX_DEPTH:
        raise ProtocolError(f"request nested more than {MAX_DEPTH} levels deep")
    cmd = message.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(f'"cmd" must be a string naming a command, got {_kind(cmd)}; known: {", ".join(COMMANDS)}')
    if cmd not in COMMANDS:
        shown = cmd if len(cmd) <= 40 else cmd[:37] + "..."
        raise ProtocolError(f"unknown command {shown!r}; known: {', '.join(COMMANDS)}")
    return message


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words (never the value: it may be 64 KiB of anything)."""
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in ``value`` (iterative: no recursion to exhaust)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, level = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            todo += [(x, level + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def decode_reply(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("reply must be a JSON object")
    return message


def error_reply(message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "error": message}
