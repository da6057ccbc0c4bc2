"""CpuGate: a one-shot run starts no child beyond one per core while short jobs keep every core
busy, and starts them all while its jobs are long (waiting for bytes).

Real processes burn real cores here; /proc/stat is the machine's own. Nothing is faked, so each
test asserts only what holds whatever else runs on the machine."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from helpers import wait_until
from videofetchd.workers.pool import (CPU_WINDOW_S, FIRST_JOB_S, MACHINE_BUSY, PACE_JOBS, PAYS_OFF, SHORT_JOBS_S,
                                      TAIL_S, CpuGate)

CORES = os.cpu_count() or 1


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@contextmanager
def _burning_every_core() -> Iterator[None]:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_burn, args=(3.0,)) for _ in range(CORES)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.2)  # the burners get going before the first look
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def _measured(gate: CpuGate) -> bool:
    gate.job_ended_at = time.monotonic()  # jobs keep ending
    gate.bound(time.monotonic(), CORES)
    return gate.rate is not None


def test_beyond_one_per_core_the_first_jobs_run_undisturbed() -> None:
    gate = CpuGate()
    assert gate.bound(time.monotonic(), CORES), "no job ended yet, and the first ones just started"
    gate.started_at -= FIRST_JOB_S  # a quarter second later, still no job ended: long downloads
    assert not gate.bound(time.monotonic(), CORES)


def test_up_to_one_child_per_core_is_never_held_back() -> None:
    gate = CpuGate()
    gate.job_ended_at = time.monotonic()
    assert all(not gate.bound(time.monotonic(), n) for n in range(CORES))


def test_short_jobs_on_a_busy_machine_hold_back_the_next_child() -> None:
    gate = CpuGate()
    with _burning_every_core():
        wait_until(lambda: _measured(gate), timeout=2, interval=CPU_WINDOW_S / 3, message="no window measured")
        assert gate.rate is not None and gate.rate >= MACHINE_BUSY * CORES, gate.rate
        gate.job_ended_at = time.monotonic()
        assert gate.bound(time.monotonic(), CORES), "every core busy with short jobs, yet another child may start"


def test_long_jobs_start_every_child_however_busy_the_machine() -> None:
    gate = CpuGate()
    with _burning_every_core():
        wait_until(lambda: _measured(gate), timeout=2, interval=CPU_WINDOW_S / 3, message="no window measured")
        gate.job_ended_at = time.monotonic() - SHORT_JOBS_S - 0.1  # no job ended lately: they are long
        gate.started_at -= FIRST_JOB_S
        assert not gate.bound(time.monotonic(), CORES)


def test_one_measurement_lets_one_child_start() -> None:
    # a single dip below MACHINE_BUSY used to let four children start, one per loop pass, on one
    # measurement; a child started on it holds the next back
    gate = CpuGate()
    gate.started_at -= FIRST_JOB_S
    gate.job_ended(time.monotonic())
    gate._mark, gate._bound = (time.monotonic(), 0.0), False  # the window just measured: not busy
    assert not gate.bound(time.monotonic(), CORES)
    gate.grew()
    assert gate.bound(time.monotonic(), CORES), "a second child on the measurement the first one used"


def _jobs_end(gate: CpuGate, count: int, per_second: float) -> None:
    """``count`` jobs end at ``per_second``, the last one now."""
    now = time.monotonic()
    for i in range(count):
        gate.job_ended(now - (count - 1 - i) / per_second)


def test_a_child_that_does_not_raise_the_pace_is_the_last() -> None:
    gate = CpuGate()
    gate.started_at -= FIRST_JOB_S
    _jobs_end(gate, PACE_JOBS, 100.0)
    gate.grew()
    _jobs_end(gate, PACE_JOBS, 100.0)
    assert gate.bound(time.monotonic(), CORES + 1), "judged before its fork was paid for"
    assert not gate.saturated
    _jobs_end(gate, PACE_JOBS, 102.0)  # the second window after its start: +2 %, not PAYS_OFF
    assert gate.bound(time.monotonic(), CORES + 1)
    assert gate.saturated, "a child that did not pay let the next one start"


def test_a_child_that_raises_the_pace_lets_the_cpu_decide_on_the_next() -> None:
    gate = CpuGate()
    gate.started_at -= FIRST_JOB_S
    _jobs_end(gate, PACE_JOBS, 100.0)
    gate.grew()
    _jobs_end(gate, 2 * PACE_JOBS, 100.0 * PAYS_OFF * 1.2)
    gate.bound(time.monotonic(), CORES + 1)
    assert not gate.saturated
    wait_until(lambda: _measured(gate), timeout=2, interval=CPU_WINDOW_S / 3, message="no fresh window measured")


def test_the_queue_drains_before_a_new_child_could_help() -> None:
    gate = CpuGate()
    now = time.monotonic()
    assert not gate.drains_within(1, TAIL_S, now), "no pace known yet: long jobs, perhaps"
    for i in range(16):  # a job ended every 10 ms: 100 jobs/s
        gate.job_ended(now - 0.15 + i * 0.01)
    assert gate.drains_within(40, TAIL_S, now)  # 0.4 s of work left: a new child comes too late
    assert not gate.drains_within(60, TAIL_S, now)  # 0.6 s
    later = now + SHORT_JOBS_S + 0.1  # no job ended for a while: the jobs are long now
    assert not gate.drains_within(1, TAIL_S, later)
