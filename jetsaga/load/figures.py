"""The arithmetic of a report: latency percentiles, throughput, and the per-second series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import msgspec
from hdrh.histogram import HdrHistogram

from jetsaga.load.arrivals import due_offset_ns
from jetsaga.load.tracker import Post, Tracker

N = TypeVar("N", int, float)

_NS_PER_S = 1e9


class Latency(msgspec.Struct, kw_only=True, rename="camel"):
    """Milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float


class Throughput(msgspec.Struct, kw_only=True, rename="camel"):
    """Of the measured orders (those after the warm-up, if the run had one)."""

    window_s: float  # the sending window: due time of the first order to that of the last
    final_per_s: float  # orders that went final inside the window, per second of it
    final_per_s_overall: float  # measured final orders, from the first due time to the last final
    accepted_per_s: float
    sent_per_s: float


class Point(msgspec.Struct, kw_only=True, rename="camel"):
    t: int  # seconds since the run started
    sent: int
    accepted: int
    final: int
    p50: float | None  # ms, of the orders that went final in this second
    p95: float | None
    p99: float | None


def latency_of(histogram: HdrHistogram) -> Latency:
    if histogram.get_total_count() == 0:
        return Latency(count=0, p50=0.0, p95=0.0, p99=0.0, p999=0.0, max=0.0, mean=0.0)
    ms = {p: histogram.get_value_at_percentile(p) / 1000.0 for p in (50, 95, 99, 99.9)}
    return Latency(
        count=histogram.get_total_count(),
        p50=ms[50],
        p95=ms[95],
        p99=ms[99],
        p999=ms[99.9],
        max=histogram.get_max_value() / 1000.0,
        mean=round(histogram.get_mean_value() / 1000.0, 3),
    )


def nearest_rank(ordered: Sequence[N], p: float) -> N:
    """The p-th percentile (0 < p <= 100) of a sorted, non-empty list, by nearest rank."""
    rank = -(-len(ordered) * p // 100)  # ceil
    return ordered[max(0, int(rank) - 1)]


def time_series(tracker: Tracker) -> list[Point]:
    points = []
    for t, second in enumerate(tracker.seconds):
        lat = sorted(second.latencies_us)
        pct = [nearest_rank(lat, p) / 1000.0 if lat else None for p in (50, 95, 99)]
        points.append(
            Point(
                t=t,
                sent=second.sent,
                accepted=second.accepted,
                final=second.final,
                p50=pct[0],
                p95=pct[1],
                p99=pct[2],
            )
        )
    return points


def throughput(tracker: Tracker, rate: float) -> Throughput:
    """Over the window of the measured orders; a final inside it counts whichever order it
    was, so a system still catching up on its warm-up shows that here."""
    first = tracker.measured_from
    start_ns = tracker.start_ns + due_offset_ns(first, rate)
    window_ns = max(tracker.count - first, 1) / rate * _NS_PER_S
    end_ns = start_ns + window_ns
    in_window = sum(1 for t in tracker.final_ns if t and start_ns <= t <= end_ns)
    measured = [t for t in tracker.final_ns[first:] if t]
    overall_s = (max(measured, default=start_ns) - start_ns) / _NS_PER_S
    window_s = window_ns / _NS_PER_S
    posts = tracker.post[first:]
    return Throughput(
        window_s=round(window_s, 3),
        final_per_s=round(in_window / window_s, 1),
        final_per_s_overall=round(len(measured) / overall_s, 1) if overall_s > 0 else 0.0,
        accepted_per_s=round(posts.count(Post.ACCEPTED) / window_s, 1),
        sent_per_s=round((len(posts) - posts.count(Post.UNSENT)) / window_s, 1),
    )
