"""Where the daemon's control socket is, even when the config file no longer parses.

``videofetchctl status``/``reload`` must find a running daemon precisely when an edit broke the
file (that is when "last reload FAILED" has something to say): the file is then read as YAML if
it parses, and line by line if it does not. Nothing here opens the database.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from ..config import ControlConfig, default_path, load
from ..errors import ConfigError


def control_socket(path: str | os.PathLike[str] | None = None) -> tuple[str, str | None]:
    """The control socket path even when the file is invalid (so ``videofetchctl status`` can
    still show a daemon's reload error); returns (socket, problem or None)."""
    try:
        return load(path, missing_ok=path is None).control.socket, None
    except ConfigError as exc:
        problem = str(exc)
    try:
        text = Path(str(path or default_path())).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ControlConfig().socket, problem
    try:
        value = yaml.safe_load(text)["control"]["socket"]
    except (yaml.YAMLError, KeyError, TypeError):
        value = _socket_from_lines(text)  # not YAML any more (an edit half done): read it line by line
    if isinstance(value, str) and value:
        return value, problem
    return ControlConfig().socket, problem


def _socket_from_lines(text: str) -> str | None:
    """``control.socket`` from block-style YAML that does not parse as a whole."""
    section = None
    for line in text.splitlines():
        top = re.match(r"([A-Za-z_][\w-]*)\s*:", line)
        if top:
            section = top.group(1)
            continue
        m = re.match(r"\s+socket\s*:\s*(['\"]?)([^'\"#]+?)\1\s*(?:#.*)?$", line)
        if section == "control" and m:
            return m.group(2).strip()
    return None
