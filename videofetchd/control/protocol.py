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


def decode_request(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request longer than {MAX_LINE} bytes")
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed request: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("request must be a JSON object")
    cmd = message.get("cmd")
    if cmd not in COMMANDS:
        raise ProtocolError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    return message


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
