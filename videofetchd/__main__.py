"""``python -m videofetchd``: the daemon, or a videofetchctl command such as ``fetch``."""

from __future__ import annotations

import sys

from .ctl import COMMANDS


def main() -> int:
    argv = sys.argv[1:]
    if argv and (argv[0] in COMMANDS or argv[0] in ("scan", "import-archive", "export-archive")):
        from .ctl import main as ctl_main
        return ctl_main(argv)
    from .cli import main as daemon_main
    return daemon_main(argv)


sys.exit(main())
