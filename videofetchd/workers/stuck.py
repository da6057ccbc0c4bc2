"""Worker children that outlive SIGKILL: given up on, reported, and watched until they are gone.

A process in uninterruptible sleep (a hung NFS mount, a failing disk, a frozen cgroup) does not
die of SIGKILL until the kernel lets it go, which may be never. Signalling it again achieves
nothing, and waiting for it would keep its job's row running, with its lease renewed, forever.
So the supervisor records the job as the kill it was (the row is retried, the attempt counted),
gives the slot a new child, and hands the old pid to this registry, which holds the
``worker_unkillable`` condition until every such process has finally exited. The condition
pauses claiming: whatever froze one child would most likely freeze the next.
Loop-only; reads /proc through psutil, signals nothing.
"""

from __future__ import annotations

import logging
import time

from .health import WORKER_UNKILLABLE, Health
from .slots import pid_alive

log = logging.getLogger("videofetchd.supervisor")


class Unkillable:
    def __init__(self, health: Health) -> None:
        self.health = health
        self.pids: dict[int, tuple[int, float]] = {}  # pid -> (slot index, monotonic time given up)

    def add(self, pid: int, slot: int, reason: str) -> None:
        log.error("slot %d: child %d outlived SIGKILL (uninterruptible sleep: a hung mount or device?); "
                  "its job goes back to the queue and the slot gets a new child (%s)", slot, pid, reason)
        self.pids[pid] = (slot, time.monotonic())
        self._report()

    def tick(self) -> None:
        """Forget the processes that are gone at last; end the condition with the last one."""
        for pid in [p for p in self.pids if not pid_alive(p)]:
            slot, since = self.pids.pop(pid)
            log.warning("slot %d: the unkillable child %d exited after %.0fs", slot, pid, time.monotonic() - since)
        if self.pids:
            self._report()
        else:
            self.health.clear(WORKER_UNKILLABLE, "every unkillable child has exited")

    def _report(self) -> None:
        now = time.monotonic()
        shown = ", ".join(f"{pid} (slot {slot}, {now - since:.0f}s)"
                          for pid, (slot, since) in sorted(self.pids.items()))
        self.health.set(WORKER_UNKILLABLE, f"worker children outlive SIGKILL: {shown}; a hung mount or device?")
