"""CpuGate: a one-shot run starts no child beyond one per core while every core is busy.

Real processes burn real cores here (one per core, for a fraction of a second); /proc/stat is the
machine's own. Nothing is faked, so the test can only assert what holds whatever else runs."""

from __future__ import annotations

import multiprocessing
import os
import time

from helpers import wait_until
from videofetchd.workers.pool import CPU_BOUND, CPU_WINDOW_S, CpuGate


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_up_to_one_child_per_core_is_never_held_back() -> None:
    gate = CpuGate()
    now = time.monotonic()
    assert all(not gate.bound(now, started) for started in range(gate.cores))


def test_beyond_one_per_core_it_waits_for_a_measurement_then_holds_back_while_every_core_burns() -> None:
    gate = CpuGate()
    now = time.monotonic()
    assert gate.bound(now, gate.cores), "not measured yet: no child beyond one per core"
    ctx = multiprocessing.get_context("fork")
    burners = [ctx.Process(target=_burn, args=(3.0,)) for _ in range(os.cpu_count() or 1)]
    for p in burners:
        p.start()
    try:
        time.sleep(0.2)  # the burners get going before the window opens
        gate.bound(time.monotonic(), gate.cores)  # opens a window
        wait_until(lambda: gate.bound(time.monotonic(), gate.cores) is not None and gate.rate is not None,
                   timeout=2, interval=CPU_WINDOW_S / 3, message="no window was measured")
        assert gate.rate is not None and gate.rate >= CPU_BOUND * gate.cores, gate.rate
        assert gate.bound(time.monotonic(), gate.cores), "every core burning, yet another child may start"
    finally:
        for p in burners:
            p.terminate()
            p.join()
