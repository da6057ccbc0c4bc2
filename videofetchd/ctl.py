"""``videofetchctl``: talk to the daemon over its control socket, or to the queue directly.

``status``/``reload``/``pause``/``resume`` speak the socket protocol only, so they start fast and
need no database driver. Queue commands (``add``, ``list``, ``retry``, ``scan``, ``fetch``,
archives) open the database named in the config themselves and work without a daemon; ``add``
then nudges a running daemon so new rows start at once. The only place ctl errors become exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from typing import Any, TextIO

from . import __version__
from . import config as config_mod
from .control.display import Screen, format_status, terminal_size
from .errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ControlError, InvalidVideoId, NotRunning,
                     VideofetchdError, exit_now)
from .control.protocol import ProtocolError, decode_reply, encode
from .text import printable

log = logging.getLogger("videofetchctl")
SOCKET_TIMEOUT_S = 10.0


def _connect(socket_path: str, deadline: float) -> socket.socket:
    """A connected socket; a full listen queue (EAGAIN: a burst of clients) is waited out."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(socket_path)
            return sock
        except FileNotFoundError:
            sock.close()
            raise NotRunning(f"videofetchd is not running (no socket at {socket_path})") from None
        except ConnectionRefusedError:
            sock.close()
            raise NotRunning(f"videofetchd is not running (nobody listens on {socket_path})") from None
        except PermissionError:
            sock.close()
            raise ControlError(f"permission denied on {socket_path} (are you in its group?)") from None
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise socket.timeout() from None
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise


def request(socket_path: str, message: dict[str, Any], timeout: float = SOCKET_TIMEOUT_S) -> dict[str, Any]:
    """One request/reply on the control socket; NotRunning if nobody answers."""
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with _connect(socket_path, deadline) as sock:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(encode(message))
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except socket.timeout:
        raise ControlError(f"videofetchd did not answer within {timeout:.0f}s on {socket_path}") from None
    except OSError as exc:  # reset, broken pipe: the daemon dropped us (stopping, or too busy)
        if not data:
            raise ControlError(f"videofetchd dropped the connection on {socket_path} "
                               f"({exc.strerror or type(exc).__name__}); try again") from None
    if not data:
        raise NotRunning(f"videofetchd closed the connection on {socket_path}")
    try:
        reply = decode_reply(data)
    except ProtocolError as exc:
        raise ControlError(str(exc)) from None
    if "error" in reply and "ok" not in reply:  # refused; {"ok": false, "error"} is an answer (reload)
        raise ControlError(reply["error"])
    return reply


# -- commands -------------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    if args.watch is not None:
        return _watch(args, cfg, out)
    reply = request(cfg.control.socket, {"cmd": "status"})
    if args.json:
        out.write(json.dumps(reply, indent=2) + "\n")
    else:  # on a terminal every line fits its width; into a pipe nothing is shortened
        width = terminal_size(out)[0] if out.isatty() else None
        out.write(format_status(reply, width) + "\n")
    return EXIT_OK


def _watch(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    """``status --watch``: redraw in place every ``args.watch`` seconds until Ctrl-C (exit 0).

    Not on a terminal, each status is printed in full (``--json``: one object per line), so the
    output can be logged. A daemon that goes away shows as such; the watch goes on and picks it up
    again when it comes back.
    """
    if not args.watch > 0:
        raise ValueError(f"status --watch: SECONDS must be a positive number, got {args.watch:g}")
    screen = Screen(out) if out.isatty() and not args.json else None
    try:
        while True:
            try:
                reply: dict[str, Any] | None = request(cfg.control.socket, {"cmd": "status"})
                problem = ""
            except (NotRunning, ControlError) as exc:
                reply, problem = None, str(exc)
            if screen is not None:
                cols, rows = screen.size()
                text = format_status(reply, cols, rows - 1) if reply else problem
                stamp = time.strftime("%H:%M:%S")
                screen.draw([*text.split("\n"), f"every {args.watch:g}s at {stamp}; Ctrl-C to quit"])
            elif args.json:
                out.write(json.dumps(reply if reply else {"error": problem}) + "\n")
            else:
                out.write((format_status(reply) if reply else problem) + "\n\n")
            out.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:  # the way to leave a watch: not an error
        return EXIT_OK
    finally:
        if screen is not None:
            screen.close()


def cmd_simple(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    reply = request(cfg.control.socket, {"cmd": args.command})
    if args.command == "reload" and not reply.get("ok", True):
        raise ControlError(f"reload refused, old configuration kept: {reply.get('error')}")
    detail = f" (generation {reply['generation']})" if "generation" in reply else ""
    out.write(f"{args.command}: ok{detail}\n")
    for key in reply.get("restart_required") or []:
        out.write(f"note: {key} changed; restart videofetchd to apply it\n")
    return EXIT_OK


def _read_inputs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(where, text) for every ID or URL given on the command line or in --file."""
    items = [(f"argument {i + 1}", a) for i, a in enumerate(args.items)]
    if args.file:
        name = "stdin" if args.file == "-" else args.file
        try:
            stream = contextlib.nullcontext(sys.stdin) if args.file == "-" else \
                open(args.file, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InvalidVideoId(f"cannot read {args.file}: {exc.strerror}") from None
        with stream as lines:
            for n, line in enumerate(lines, 1):
                text = line.strip()
                if text and not text.startswith("#"):
                    items.append((f"{name}:{n}", text))
    return items


def parse_inputs(items: list[tuple[str, str]]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Split inputs into valid (video_id, url) pairs and error messages naming their source."""
    from .queue.jobs import is_url, validate_url, validate_video_id
    good: list[tuple[str, str | None]] = []
    bad: list[str] = []
    for where, text in items:
        try:
            if is_url(text):
                url = validate_url(text)
                from .workers.download import key_for_url
                good.append((key_for_url(url), url))
            else:
                good.append((validate_video_id(text), None))
        except InvalidVideoId as exc:
            bad.append(f"{where}: {exc}")
    return good, bad


def cmd_add(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    good, bad = parse_inputs(_read_inputs(args))
    for msg in bad:
        print(f"videofetchctl: refused {printable(msg)}", file=sys.stderr)
    if not good and not bad:
        raise InvalidVideoId("nothing to add: give IDs or URLs, or --file F (- for stdin)")
    added = known = 0
    if good:
        store = _open(cfg)
        added, known = store.add(good)
        store.close()
        try:
            request(cfg.control.socket, {"cmd": "nudge"}, timeout=2.0)
        except VideofetchdError:
            pass  # no daemon: the rows wait for the next one, or for `videofetchctl fetch`
    out.write(f"added {added}, already known {known}, refused {len(bad)}\n")
    return EXIT_USAGE if bad else EXIT_OK


def cmd_retry(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    if not args.failed and not args.ids:
        raise InvalidVideoId("retry: give video IDs or --failed")
    store = _open(cfg)
    n = store.retry_failed(None if args.failed else args.ids)
    store.close()
    try:
        request(cfg.control.socket, {"cmd": "nudge"}, timeout=2.0)
    except VideofetchdError:
        pass
    out.write(f"requeued {n}\n")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace, cfg: config_mod.Config, out: TextIO) -> int:
    import os
    os.umask(config_mod.PRIVATE_UMASK)  # before the forkserver, whose children write the videos (see cli.main)
    from .workers.slots import start_forkserver
    start_forkserver(cfg.download)  # first: its yt-dlp preload overlaps the imports below
    import asyncio

    from .fetch import run_fetch
    from .logs import setup_logging
    setup_logging(cfg.logging.level, verbose=args.verbose)
    live = sys.stderr if sys.stderr.isatty() and not args.verbose else None
    if live is not None:
        logging.getLogger().setLevel(logging.WARNING)  # the live view replaces per-job info lines
    listen = None
    if args.metrics is not None:
        listen = args.metrics or cfg.metrics.listen
        if not listen:
            raise ValueError("fetch --metrics: give HOST:PORT, or set metrics.listen in the configuration")
        try:
            config_mod.parse_listen(listen)
        except ValueError as exc:
            raise ValueError(f"fetch --metrics: {exc}") from None
    summary = asyncio.run(run_fetch(cfg, num_workers=args.num_workers, existing_videos_dir=args.existing_videos_dir,
                                    live=live, metrics_listen=listen))
    text = summary.text()
    if out.isatty():  # long failure reasons are broken into lines that fit, not cut
        import textwrap
        cols = terminal_size(out)[0] - 1
        text = "\n".join(piece for line in text.split("\n")
                         for piece in textwrap.wrap(line, cols, subsequent_indent="    ", break_on_hyphens=False))
    out.write(text + "\n")
    return EXIT_OK if summary.ok else EXIT_FAILURE


def _open(cfg: config_mod.Config) -> Any:
    from .queue.store import open_store
    return open_store(cfg.database.url)


# -- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"config file (default ${config_mod.CONFIG_ENV} or {config_mod.DEFAULT_CONFIG_PATH})")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="videofetchctl", parents=[common],
                                description="Control videofetchd and its queue.")
    p.add_argument("--version", action="version", version=f"videofetchctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("status", parents=[common], help="daemon state, per-worker progress, queue counts")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until Ctrl-C")
    for name, text in (("reload", "re-read the config (like SIGHUP); exit 0 loaded, 1 refused (the old config "
                                  "stays), 3 not running"),
                       ("pause", "stop claiming new jobs"), ("resume", "claim jobs again")):
        sub.add_parser(name, parents=[common], help=text, description=text)
    s = sub.add_parser("add", parents=[common], help="queue video IDs or URLs (known IDs are kept as they are)")
    s.add_argument("items", nargs="*", metavar="ID_OR_URL")
    s.add_argument("--file", metavar="F", help="read one ID or URL per line from F (- for stdin)")
    from .control.listing import add_list_commands
    add_list_commands(sub, common)
    s = sub.add_parser("retry", parents=[common], help="put failed rows back in the queue")
    s.add_argument("ids", nargs="*", metavar="ID")
    s.add_argument("--failed", action="store_true", help="every failed row")
    s = sub.add_parser("fetch", parents=[common], help="one-shot: download every queued row, then exit")
    s.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, metavar="N")
    s.add_argument("--existing-videos-dir", "--existing_videos_dir", dest="existing_videos_dir", metavar="DIR",
                   help="scan DIR for existing files first and mark their rows done")
    s.add_argument("--metrics", nargs="?", const="", metavar="HOST:PORT",
                   help="serve Prometheus metrics while fetching (default address: metrics.listen)")
    from .library.commands import add_scan_commands
    add_scan_commands(sub, common)
    return p


SOCKET_COMMANDS = ("status", "reload", "pause", "resume")
COMMANDS = {"status": cmd_status, "reload": cmd_simple, "pause": cmd_simple, "resume": cmd_simple,
            "add": cmd_add, "retry": cmd_retry, "fetch": cmd_fetch}


#: options whose value is a video ID, which may start with '-' (YouTube's -8LkfJYfx2Q)
ID_OPTIONS = ("--after",)


def _glue_id_values(argv: list[str]) -> list[str]:
    """``--after -8LkfJYfx2Q`` as ``--after=-8LkfJYfx2Q``: argparse takes a value that starts with
    '-' for an option and stops ("expected one argument"). Nothing after ``--`` is touched."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            out += [arg, *it]
            break
        if arg in ID_OPTIONS:
            value = next(it, None)
            if value is not None and value.startswith("-") and not value.startswith("--"):
                out.append(f"{arg}={value}")
                continue
            out += [arg] if value is None else [arg, value]
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(_glue_id_values(sys.argv[1:] if argv is None else list(argv)))
    if extra:
        # YouTube IDs may start with '-' (-8LkfJYfx2Q): for `add` and `retry`, anything argparse
        # does not know is an ID to validate like the others; elsewhere it is a usage error
        if args.command not in ("add", "retry") or any(a.startswith("--") and "=" not in a and len(a) > 2
                                                       for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "add":
            args.items = [*args.items, *extra]
        else:
            args.ids = [*args.ids, *extra]
    args.verbose = getattr(args, "verbose", False)
    out = out or sys.stdout
    path = getattr(args, "config", None)
    try:
        if args.command in SOCKET_COMMANDS:
            from .control.locate import control_socket  # light: config and PyYAML, loaded anyway
            sock, problem = control_socket(path)
            if problem:  # the daemon is found all the same (control.socket read leniently)
                print(f"videofetchctl: warning: {problem.splitlines()[0]} (a running daemon keeps the "
                      "configuration it loaded)", file=sys.stderr)
            cfg = dataclasses.replace(config_mod.Config(), control=config_mod.ControlConfig(socket=sock))
            return COMMANDS[args.command](args, cfg, out)
        cfg = config_mod.load(path)  # never the built-in defaults: a database no daemon reads
        if args.verbose:
            from .queue.store import redact
            print(f"videofetchctl: config {cfg.path}, database {redact(cfg.database.url)}", file=sys.stderr)
        if args.command in ("list", "export"):
            from .control.listing import LIST_COMMANDS
            return LIST_COMMANDS[args.command](args, cfg, out)
        if args.command not in COMMANDS:
            from .library.commands import SCAN_COMMANDS
            return SCAN_COMMANDS[args.command](args, cfg, out)
        return COMMANDS[args.command](args, cfg, out)
    except VideofetchdError as exc:
        log.debug("details", exc_info=exc)
        print(f"videofetchctl: {printable(exc)}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"videofetchctl: {printable(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # every write is its own transaction: what was recorded stays
        print("videofetchctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `list | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush stays quiet
        return EXIT_OK


def run() -> None:
    """The ``videofetchctl`` console script: ``main``, and a quick exit after ``fetch``."""
    argv = sys.argv[1:]
    code = main(argv)
    if build_parser().parse_known_args(argv)[0].command == "fetch":
        exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
