"""When the runner fetches an order NATS has not reported final: the straggler age."""

from __future__ import annotations

from jetsaga.load.settle import STRAGGLER_AGE_NS, straggler_age_ns
from jetsaga.load.tracker import Tracker

S = 1_000_000_000


def _tracker_with_recent_latencies(now_ns: int, latencies_ms: list[float]) -> Tracker:
    tracker = Tracker(count=1, start_ns=0)
    tracker.second(now_ns).latencies_us.extend(int(ms * 1000) for ms in latencies_ms)
    return tracker


def test_with_no_recent_finals_an_order_is_a_straggler_after_the_fixed_age() -> None:
    assert straggler_age_ns(Tracker(count=1, start_ns=0), 30 * S) == STRAGGLER_AGE_NS


def test_a_fast_system_keeps_the_fixed_age() -> None:
    tracker = _tracker_with_recent_latencies(30 * S, [80.0] * 99 + [400.0])
    assert straggler_age_ns(tracker, 30 * S) == STRAGGLER_AGE_NS


def test_a_slow_system_waits_twice_its_recent_p99() -> None:
    # p99 of 100 latencies: the 100th smallest, 6 s; everything is late, nothing is lost.
    tracker = _tracker_with_recent_latencies(30 * S, [4_000.0] * 99 + [6_000.0])
    assert straggler_age_ns(tracker, 30 * S) == 12 * S


def test_only_the_last_two_seconds_count() -> None:
    tracker = _tracker_with_recent_latencies(10 * S, [9_000.0] * 100)
    assert straggler_age_ns(tracker, 12 * S) == STRAGGLER_AGE_NS  # slow back then, not now
    assert straggler_age_ns(tracker, 11 * S) == 18 * S
