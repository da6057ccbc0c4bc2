"""``python -m videofetchd``: the daemon, or a videofetchctl command such as ``fetch``."""

from __future__ import annotations

import sys

from .ctl import COMMANDS


def _first_word(argv: list[str]) -> str | None:
    """The first argument that is neither an option nor the value of --config."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> int:
    argv = sys.argv[1:]
    if _first_word(argv) in (*COMMANDS, "list", "export", "scan", "import-archive", "export-archive"):
        from .ctl import main as ctl_main
        return ctl_main(argv)
    from .cli import main as daemon_main
    return daemon_main(argv)


sys.exit(main())
