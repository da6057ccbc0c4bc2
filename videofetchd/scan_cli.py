"""Placeholder until the scanner lands (being written now)."""

from __future__ import annotations

import argparse
from typing import Any

SCAN_COMMANDS: dict[str, Any] = {}


def add_scan_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    return None
