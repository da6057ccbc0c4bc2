"""A real terminal for tests: one tmux session on a private server (importable as ``tmuxterm``).

Each ``Terminal`` starts its own tmux server (``tmux -L <unique socket>``, no user config) with one
pane of the given size running one command, and kills only that server. ``lines()`` is what the
pane shows, wrapped lines joined back (``capture-pane -J``), so a line the program let the
terminal wrap comes back longer than the width; ``history=True`` adds what scrolled off the top.
``scroll-on-clear`` is off, so a program that erases the screen from its first line leaves
nothing in the history that a real terminal would not keep either (tmux 3.3 saves it by default).
The command runs under a small wrapper that writes its exit status to a file: tmux 3.3 sometimes
never fills ``#{pane_dead_status}`` for a process that exits at once. The wrapper ignores SIGINT
itself and restores it for the command, so Ctrl-C (``keys("C-c")``) reaches the command only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from helpers import wait_until

__all__ = ["Terminal"]


class Terminal:
    def __init__(self, command: Sequence[str], *, width: int = 80, height: int = 24,
                 env: dict[str, str] | None = None) -> None:
        if shutil.which("tmux") is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("tmux is required under CI=true (.ci/run installs it)", pytrace=False)
            pytest.skip("tmux is not installed")
        self.socket = f"vfd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.width, self.height = width, height
        self.status_file = Path(tempfile.mkdtemp(prefix="vfd-tmux-")) / "status"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        wrapped = [sys.executable, "-c", _WRAPPER, str(self.status_file), *command]
        shell = f"env {exports} {shlex.join(wrapped)}" if exports else shlex.join(wrapped)
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), shell,
                  ";", "set-option", "-g", "scroll-on-clear", "off",
                  ";", "set-option", "-g", "remain-on-exit", "on",
                  ";", "set-option", "-g", "history-limit", "5000")
        self.socket_path = Path(self.tmux("display-message", "-p", "#{socket_path}").strip())

    def tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, f"tmux {' '.join(args)}: {r.stderr}"
        return r.stdout

    def lines(self, *, history: bool = False) -> list[str]:
        args = ["capture-pane", "-p", "-J", "-t", "t"] + (["-S", "-"] if history else [])
        text = self.tmux(*args).rstrip("\n")
        lines = text.split("\n")
        if lines and lines[-1].startswith("Pane is dead"):  # tmux's own note under a finished command
            lines.pop()
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.rstrip() for line in lines]

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def title(self) -> str:
        return self.tmux("display-message", "-p", "-t", "t", "#{pane_title}").strip()

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended (128 + N if signal N killed it), else None."""
        try:
            code = int(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        # and tmux has read all it printed: the pane is dead once its pty reached end of file
        return code if self.tmux("display-message", "-p", "-t", "t", "#{pane_dead}").strip() == "1" else None

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return int(wait_until(lambda: (s + 1000 if (s := self.exit_status()) is not None else None),
                                  timeout=timeout)) - 1000
        except AssertionError:
            raise AssertionError(f"the command did not end within {timeout}s; the pane shows:\n{self.screen()}") \
                from None

    def screen(self) -> str:
        return "\n".join(self.lines(history=True))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=20)
        shutil.rmtree(self.status_file.parent, ignore_errors=True)
        if self.socket_path.name == self.socket:  # tmux leaves a killed server's socket file behind
            self.socket_path.unlink(missing_ok=True)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_WRAPPER = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
proc = subprocess.Popen(sys.argv[2:], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
code = proc.wait()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(code if code >= 0 else 128 - code))
import os
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
"""
