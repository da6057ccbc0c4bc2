"""Token buckets and the choice of identity (videofetchd.queue.bucket): pure arithmetic on numbers."""

from __future__ import annotations

import math

from videofetchd.queue.bucket import Bucket, Limits, Planner, level, token_wait

SITE = "example.org"


def planner(*limits: Limits, buckets: dict[tuple[str, str], Bucket] | None = None,
            running: dict[str, int] | None = None, site_pauses: dict[str, float] | None = None,
            now: float = 1000.0) -> Planner:
    return Planner(limits, {} if buckets is None else buckets, running or {}, site_pauses or {}, now)


def test_a_new_bucket_is_full_and_refills_at_the_hourly_rate() -> None:
    lim = Limits("a", per_hour=360, burst=3)  # one token every 10 s
    assert level(None, lim, 0.0) == 3.0
    assert level(Bucket(tokens=0.0, updated=100.0), lim, 105.0) == 0.5
    assert level(Bucket(tokens=0.0, updated=100.0), lim, 10_000.0) == 3.0  # never above burst
    assert token_wait(0.5, lim) == 5.0
    assert token_wait(1.0, lim) == 0.0


def test_no_budget_means_no_token_accounting() -> None:
    lim = Limits("a")
    assert level(Bucket(tokens=-5.0, updated=0.0), lim, 0.0) == math.inf
    p = planner(lim)
    assert all(p.take(SITE) == "a" for _ in range(1000))


def test_starts_never_exceed_burst_plus_rate_in_any_window() -> None:
    lim = Limits("a", per_hour=3600, burst=2)  # 1/s
    buckets: dict[tuple[str, str], Bucket] = {}
    starts = []
    t = 0.0
    while t < 120.0:  # a claimer asking ten times a second for two minutes
        p = planner(lim, buckets=buckets, now=t)
        while p.take(SITE):
            starts.append(t)
        t = round(t + 0.1, 3)
    for i, t0 in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s < t0 + 30.0)
        assert in_window <= 2 + 30, (t0, in_window)
    assert 120 <= len(starts) <= 2 + 120  # and the budget is used, not wasted


def test_work_spreads_over_identities_by_running_jobs_then_starts() -> None:
    a, b, c = Limits("a"), Limits("b"), Limits("c")
    p = planner(a, b, c, running={"a": 1})
    assert [p.take(SITE) for _ in range(5)] == ["b", "c", "a", "b", "c"]
    buckets = {("b", SITE): Bucket(started=10), ("c", SITE): Bucket(started=3)}
    p = planner(b, c, buckets=buckets)
    assert p.take(SITE) == "c"  # fewer started there


def test_max_concurrent_counts_running_jobs_on_every_site() -> None:
    p = planner(Limits("a", max_concurrent=2), running={"a": 1})
    assert p.take(SITE) == "a"
    assert p.take("other.org") is None
    assert not p.has_room()
    assert p.wait(SITE) is None  # only a running job's end makes room


def test_a_paused_identity_is_skipped_and_the_wait_is_the_shortest() -> None:
    a, b = Limits("a"), Limits("b", per_hour=36, burst=1)  # b: a token every 100 s
    buckets = {("a", SITE): Bucket(paused_until=1300.0), ("b", SITE): Bucket(tokens=0.5, updated=1000.0)}
    p = planner(a, b, buckets=buckets)
    assert p.take(SITE) is None
    assert p.wait(SITE) == 50.0  # b's token comes before a's pause ends
    assert p.take("other.org") == "a"  # a is paused on SITE only


def test_a_paused_site_stops_every_identity() -> None:
    p = planner(Limits("a"), Limits("b"), site_pauses={SITE: 1060.0})
    assert p.take(SITE) is None
    assert p.wait(SITE) == 60.0


def test_changed_reports_the_drawn_buckets() -> None:
    p = planner(Limits("a", per_hour=3600, burst=3), Limits("b", per_hour=3600, burst=3))
    for _ in range(3):
        p.take(SITE)
    drawn = {(name, site): (b.tokens, n) for name, site, b, n in p.changed()}
    assert drawn == {("a", SITE): (1.0, 2), ("b", SITE): (2.0, 1)}


def test_a_refund_gives_back_what_take_drew() -> None:
    p = planner(Limits("a", per_hour=3600, burst=2, max_concurrent=5))
    assert p.take(SITE) == "a" and p.take(SITE) == "a"
    p.refund("a", SITE)
    assert [(n, s, b.tokens, k) for n, s, b, k in p.changed()] == [("a", SITE, 1.0, 1)]
    assert p.running["a"] == 1
    p.refund("a", SITE)
    assert list(p.changed()) == []
