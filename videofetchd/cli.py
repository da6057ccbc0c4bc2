"""``videofetchd``: the daemon's command line. The only place its exceptions become exit codes."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import sys

from . import __version__
from . import config as config_mod
from .errors import EXIT_FAILURE, EXIT_OK, VideofetchdError
from .logs import setup_logging
from .text import printable, printable_block

log = logging.getLogger("videofetchd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videofetchd", description="Keep a video library complete: "
                                "download what the database queue lacks with supervised yt-dlp workers.")
    p.add_argument("--config", metavar="PATH",
                   help=f"YAML config (default {config_mod.DEFAULT_CONFIG_PATH}, or ${config_mod.CONFIG_ENV})")
    p.add_argument("--check-config", action="store_true", help="validate the config and exit (0 valid, 78 invalid)")
    p.add_argument("--check", action="store_true",
                   help="the doctor: check config, database, directories and socket, one line each (exit 1 on errors)")
    p.add_argument("--json", action="store_true", help="with --check: print the checks as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"videofetchd {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faulthandler.enable()  # a watchdog SIGABRT then dumps every thread's stack to the journal
    if args.check:
        return check(args.config, as_json=args.json)
    try:
        cfg = config_mod.load(args.config)
        from .workers.hostprobe import check_sources
        check_sources(cfg)  # an identity's source_address this host does not have: 78, not failed jobs
        if args.check_config:
            print(f"{cfg.path}: configuration is valid")
            return EXIT_OK
        setup_logging(cfg.logging.level, verbose=args.verbose)
        # before the forkserver starts, whose children write the videos: the queue, the videos and
        # the socket directory are never world-readable, with or without the unit's UMask=
        os.umask(config_mod.PRIVATE_UMASK)
        from .workers.slots import start_forkserver
        start_forkserver(cfg.download)  # its yt-dlp preload overlaps our imports and the database opening
        from .daemon import Daemon  # imported late: --check-config must not need the database driver
        return asyncio.run(Daemon(cfg).run())
    except VideofetchdError as exc:
        log.debug("details", exc_info=exc)
        print(f"videofetchd: {printable(exc)}", file=sys.stderr)
        return exc.exit_code


def check(path: str | None, *, as_json: bool) -> int:
    """``videofetchd --check``: exit 0 when no check is an error, 1 otherwise."""
    from .control import doctor
    checks = doctor.run_checks(doctor.context(path))
    print(doctor.to_json(checks) if as_json else printable_block(doctor.format_checks(checks)))
    return EXIT_FAILURE if doctor.failed(checks) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
