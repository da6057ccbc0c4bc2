"""Constants and helpers shared by the e2e fixtures and tests."""
from __future__ import annotations

from typing import Any

import yaml

import nspawn

UNIT = "videofetchd.service"
CONFIG = "/etc/videofetchd/videofetchd.yaml"
SRC_IN_CONTAINER = "/opt/videofetchd-src"


def read_config(c: nspawn.Container) -> dict[str, Any]:
    return yaml.safe_load(c.path(CONFIG).read_text()) or {}


def write_config(c: nspawn.Container, data: dict[str, Any]) -> None:
    """Rewrite the installed config in place (keeps its owner and mode)."""
    c.path(CONFIG).write_text(yaml.safe_dump(data, sort_keys=False))


def update_config(c: nspawn.Container, **sections: dict[str, Any]) -> dict[str, Any]:
    data = read_config(c)
    for name, values in sections.items():
        if not isinstance(data.get(name), dict):
            data[name] = {}
        data[name].update(values)
    write_config(c, data)
    return data
