"""A throwaway Debian container booted with a real systemd, for the end-to-end suite.

The recipe (verified in /work/shared/systemd-e2e.md) works on hosts where PID 1 is not systemd:

* a Debian rootfs built once with debootstrap and cached as a zstd tarball
  (``/var/cache/videofetchd-e2e/rootfs.tar.zst``; override with ``VIDEOFETCHD_E2E_CACHE``),
  unpacked once next to it (``rootfs/``) as the read-only lower layer of an overlayfs mount per
  container (``VIDEOFETCHD_E2E_OVERLAY=0`` unpacks the tarball per container instead);
* ``systemd-nspawn --boot --register=no --keep-unit`` started from a fresh cgroup of our own,
  sharing the host network (a media server on the host's 127.0.0.1 is reachable);
* commands run inside through ``nsenter -t <container PID 1> -a`` (no machined, so no ``-M``);
* teardown: SIGTERM to systemd-nspawn (an orderly halt of the container), SIGKILL as a last
  resort, then the cgroups and the work directory are removed.

Everything here is plain stdlib so the module can also be used by hand::

    python3 tests/e2e/nspawn.py build      # (re)build the cached rootfs
    python3 tests/e2e/nspawn.py shell      # boot one and print how to enter it
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

CACHE_DIR = Path(os.environ.get("VIDEOFETCHD_E2E_CACHE", "/var/cache/videofetchd-e2e"))
ROOTFS_TARBALL = CACHE_DIR / "rootfs.tar.zst"
SUITE = "bookworm"
# procps: minbase has no /bin/kill (ExecReload needs it). python3-venv: `make install` makes a venv.
# make: `make install` runs inside the container. ca-certificates: harmless, keeps yt-dlp quiet.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "make",
            "ca-certificates")
# Changing PACKAGES changes the stamp, and the cached tarball is rebuilt.
STAMP = "v1 " + SUITE + " " + ",".join(PACKAGES)
HOST_TOOLS = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap",
              "zstd": "zstd", "nsenter": "util-linux"}
CGROUP_ROOT = Path("/sys/fs/cgroup")
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class HarnessError(RuntimeError):
    """The container could not be prepared, booted or driven."""


class CommandFailed(subprocess.CalledProcessError):
    """A command inside the container failed; the message carries its output."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()[-3000:]
        err = (self.stderr or "").strip()[-3000:]
        return f"{super().__str__()}\n--- stdout:\n{out}\n--- stderr:\n{err}"


def log(msg: str) -> None:
    print(f"[nspawn] {msg}", file=sys.stderr, flush=True)


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def unavailable_reason() -> str | None:
    """Why this machine cannot run the suite at all, or None."""
    if not sys.platform.startswith("linux"):
        return f"systemd-nspawn e2e tests need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "systemd-nspawn e2e tests need root (run `sudo make e2e`)"
    if not CGROUP_ROOT.is_dir():
        return "no /sys/fs/cgroup on this machine"
    return None


# --------------------------------------------------------------------------- host preparation

def ensure_host_tools() -> None:
    """Install systemd-container/debootstrap/zstd with apt-get, only when a tool is missing."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HarnessError(f"missing host packages {missing} and no apt-get to install them")
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def apt_mirror() -> str:
    """The Debian mirror apt already uses on this host (deb822 or one-line format)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri = next(p for p in parts[1:] if not p.startswith("["))
                return uri
    return "http://deb.debian.org/debian"


def _stamp_path() -> Path:
    return ROOTFS_TARBALL.with_suffix(".stamp")


def rootfs_is_cached() -> bool:
    stamp = _stamp_path()
    return ROOTFS_TARBALL.is_file() and stamp.is_file() and stamp.read_text().strip() == STAMP


def ensure_rootfs_tarball(force: bool = False) -> Path:
    """Return the cached rootfs tarball, building it with debootstrap when missing or stale.

    A lock file serialises concurrent test runs; the tarball appears atomically (rename), so an
    interrupted build leaves nothing half-written behind.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rootfs_is_cached() and not force:
            return ROOTFS_TARBALL
        ensure_host_tools()
        build = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE_DIR))
        try:
            root = build / "rootfs"
            mirror = apt_mirror()
            log(f"building the {SUITE} rootfs with debootstrap from {mirror} (~80 s, once)")
            t0 = time.monotonic()
            subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                            SUITE, str(root), mirror], check=True, stdout=subprocess.DEVNULL)
            (root / "etc/hostname").write_text("vfd-e2e\n")
            # An empty machine-id makes systemd generate a transient one at each boot.
            (root / "etc/machine-id").write_text("")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for p in (root / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            tmp_tar = build / "rootfs.tar.zst"
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root),
                            "-I", "zstd -T0 -10", "-cf", str(tmp_tar), "."], check=True)
            os.replace(tmp_tar, ROOTFS_TARBALL)
            _stamp_path().write_text(STAMP + "\n")
            log(f"rootfs cached at {ROOTFS_TARBALL} in {time.monotonic() - t0:.0f}s")
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return ROOTFS_TARBALL


BASE_TREE = CACHE_DIR / "rootfs"


def ensure_base_tree() -> Path:
    """The cached tarball unpacked once into CACHE_DIR/rootfs, the read-only lower layer of each
    container's overlay (unpacking per run costs 3-10 s of disk writes; an overlay mount is free).
    Re-made whenever the tarball changes. Never modified after that."""
    tarball = ensure_rootfs_tarball()
    want = f"{STAMP} {tarball.stat().st_mtime_ns}"
    stamp = CACHE_DIR / "rootfs.tree.stamp"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if BASE_TREE.is_dir() and stamp.is_file() and stamp.read_text().strip() == want:
            return BASE_TREE
        tmp = Path(tempfile.mkdtemp(prefix="tree-", dir=CACHE_DIR))
        try:
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(tmp), "-I", "zstd",
                            "-xf", str(tarball)], check=True)
            os.chmod(tmp, 0o755)
            in_use = f"lowerdir={BASE_TREE}," in Path("/proc/mounts").read_text()
            if not in_use:
                for old in CACHE_DIR.glob("rootfs.old-*"):
                    shutil.rmtree(old, ignore_errors=True)
            if BASE_TREE.exists():
                # A container of a concurrent run may still use it: move it aside, delete later.
                BASE_TREE.rename(CACHE_DIR / f"rootfs.old-{os.getpid()}-{time.time_ns()}")
            tmp.rename(BASE_TREE)
            stamp.write_text(want + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return BASE_TREE


# --------------------------------------------------------------------------- cgroups

def _cgroup_dirs(name: str) -> list[Path]:
    """Where to put systemd-nspawn so it stays out of the host's root cgroup.

    Hybrid hosts (the ones the recipe was verified on) need both the named v1 ``systemd``
    hierarchy and the ``unified`` v2 one; a pure cgroup2 host only its root.
    """
    if (CGROUP_ROOT / "cgroup.controllers").exists():   # pure cgroup v2
        return [CGROUP_ROOT / name]
    dirs = []
    for hier in ("systemd", "unified"):
        if (CGROUP_ROOT / hier / "cgroup.procs").exists():
            dirs.append(CGROUP_ROOT / hier / name)
    return dirs


def _cgroup_pids(dirs: Sequence[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _remove_cgroups(dirs: Sequence[Path]) -> None:
    for d in dirs:
        if not d.is_dir():
            continue
        subdirs = sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                         reverse=True)
        for p in [*subdirs, d]:
            with contextlib.suppress(OSError):
                p.rmdir()


# --------------------------------------------------------------------------- the container

class Container:
    """One booted systemd-nspawn container in a unique temporary directory."""

    def __init__(self, binds_ro: Mapping[str, str] | None = None, tarball: Path | None = None,
                 workdir_parent: str | None = None) -> None:
        self.tarball = tarball or ROOTFS_TARBALL
        self.workdir = Path(tempfile.mkdtemp(prefix="videofetchd-e2e-", dir=workdir_parent))
        self.rootfs = self.workdir / "rootfs"
        self.console_log = self.workdir / "console.log"
        self.binds_ro = dict(binds_ro or {})
        # Also the machine name (hostname rules: letters, digits, dashes).
        self.cgroup_name = f"videofetchd-e2e-{os.getpid()}-{secrets.token_hex(4)}"
        self.cgroups = _cgroup_dirs(self.cgroup_name)
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.overlay = False

    # ---- lifecycle
    def start(self, boot_timeout: float = 60.0) -> "Container":
        t0 = time.monotonic()
        self.rootfs.mkdir()
        if not self._mount_overlay():
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(self.rootfs), "-I", "zstd",
                            "-xf", str(self.tarball)], check=True)
        for d in self.cgroups:
            d.mkdir(parents=True, exist_ok=True)
        cmd = ["systemd-nspawn", "-q", "-D", str(self.rootfs), "--boot", "--register=no",
               "--keep-unit", "--console=passive", f"--machine={self.cgroup_name[:64]}"]
        cmd += [f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()]
        cgroup_procs = [str(d / "cgroup.procs") for d in self.cgroups]

        def enter_cgroup() -> None:   # runs in the child between fork and exec
            for procs in cgroup_procs:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

        console = open(self.console_log, "wb")
        try:
            self.nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           preexec_fn=enter_cgroup)
        finally:
            console.close()
        try:
            self.leader = wait_for(self._find_leader, 30, "the container's PID 1 (systemd)", 0.05)

            def booted() -> str | None:
                r = self.C("systemctl", "is-system-running", check=False, timeout=10)
                state = r.stdout.strip()
                return state if state in ("running", "degraded") else None
            state = wait_for(booted, boot_timeout, "the container to finish booting")
            if state == "degraded":
                failed = self.C("systemctl", "--failed", "--no-legend", check=False).stdout
                log(f"container booted degraded; failed units:\n{failed}")
        except BaseException:
            log("boot failed; console log:\n" + self.console_text())
            self.stop()
            raise
        log(f"container {self.cgroup_name} up in {time.monotonic() - t0:.1f}s (PID 1 = {self.leader})")
        return self

    def _mount_overlay(self) -> bool:
        """Mount the cached base tree read-only under a private writable layer at self.rootfs."""
        if os.environ.get("VIDEOFETCHD_E2E_OVERLAY", "1") == "0" or self.tarball != ROOTFS_TARBALL:
            return False
        try:
            lower = ensure_base_tree()
        except (OSError, subprocess.CalledProcessError) as exc:
            log(f"no cached base tree ({exc}); unpacking the tarball instead")
            return False
        upper, work = self.workdir / "upper", self.workdir / "work"
        upper.mkdir()
        work.mkdir()
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={lower},upperdir={upper},workdir={work}", str(self.rootfs)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            log(f"overlay mount failed ({r.stderr.strip()}); unpacking the tarball instead")
            shutil.rmtree(upper, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            return False
        self.overlay = True
        return True

    def _find_leader(self) -> int | None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited with {self.nspawn.returncode}:\n"
                               + self.console_text())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == self.nspawn.pid and comm == "systemd":
                return int(entry.name)
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """Halt the container and clean up; safe to call twice and after a failed start."""
        t0 = time.monotonic()
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)     # nspawn turns this into an orderly halt
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                log("container did not halt in time; killing it")
                self.nspawn.kill()
                self.nspawn.wait(10)
        # Anything still in our private cgroup belongs to this container; make sure it is gone.
        with contextlib.suppress(TimeoutError):
            def emptied() -> bool:
                pids = _cgroup_pids(self.cgroups)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return not pids
            wait_for(emptied, 10, "the container's cgroup to empty", 0.1)
        _remove_cgroups(self.cgroups)
        if self.leader is not None:
            log(f"container {self.cgroup_name} halted in {time.monotonic() - t0:.1f}s")
        self.leader = None
        if self.overlay:
            r = subprocess.run(["umount", str(self.rootfs)], capture_output=True, text=True)
            if r.returncode != 0:
                r = subprocess.run(["umount", "-l", str(self.rootfs)], capture_output=True, text=True)
            if r.returncode != 0:
                # Never delete through a mounted overlay; leave the directory for a human.
                log(f"could not unmount {self.rootfs}: {r.stderr.strip()}; leaving {self.workdir}")
                return
            self.overlay = False
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Container":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- running things inside
    def C(self, *args: str, check: bool = True, input: str | None = None,
          timeout: float = 120.0, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all namespaces, a clean environment)."""
        if self.leader is None:
            raise HarnessError("container is not running")
        base = {"PATH": INNER_PATH, "TERM": "dumb", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                "LANG": "C.UTF-8", "HOME": "/root"}
        base.update(env or {})
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
               *(f"{k}={v}" for k, v in base.items()), *args]
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise CommandFailed(r.returncode, list(args), r.stdout, r.stderr)
        return r

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet inside the container."""
        return self.C("sh", "-ec", script, **kw)  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties as a dict."""
        out = self.C("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        args = ["journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        if unit:
            args += ["-u", unit]
        r = self.C(*args, check=False, timeout=30)
        return r.stdout + r.stderr

    def path(self, inner: str) -> Path:
        """The host path of a path inside the container.

        /run and /tmp are tmpfs mounts inside the container, invisible from the host: use
        ``C(...)`` for those (or /etc and /var/tmp instead).
        """
        if inner.rstrip("/") in ("/run", "/tmp") or inner.startswith(("/run/", "/tmp/")):
            raise ValueError(f"{inner} is on a tmpfs inside the container; not reachable from the host")
        return self.rootfs / inner.lstrip("/")

    def write(self, inner: str, text: str, mode: int = 0o644) -> None:
        p = self.path(inner)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-8000:]
        except OSError:
            return "(no console log)"


@contextlib.contextmanager
def booted(**kw: object) -> Iterator[Container]:
    ensure_rootfs_tarball()
    c = Container(**kw)  # type: ignore[arg-type]
    try:
        yield c.start()
    finally:
        c.stop()


def _main(argv: list[str]) -> int:
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 77
    if argv[:1] == ["build"]:
        ensure_rootfs_tarball(force="--force" in argv)
        return 0
    if argv[:1] == ["shell"]:
        with booted() as c:
            print(f"container PID 1 = {c.leader}; enter with:\n  nsenter -t {c.leader} -a "
                  f"env -i PATH={INNER_PATH} TERM=dumb bash\nCtrl-C halts it.")
            with contextlib.suppress(KeyboardInterrupt):
                while c.nspawn is not None and c.nspawn.poll() is None:
                    time.sleep(1)
        return 0
    print(f"usage: {sys.argv[0]} build [--force] | shell", file=sys.stderr)
    print(shlex.join(["example:", sys.executable, __file__, "build"]), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
