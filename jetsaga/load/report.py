"""The report of a run: built from the tracker once the run is over, printed or written as JSON.

Latency is from each order's due time to its final status (what a user waiting on an open
system sees); the same from the actual send is kept alongside, and the POST answer time too.
"""

from __future__ import annotations

from collections import Counter

import msgspec
from hdrh.histogram import HdrHistogram

from jetsaga.load.arrivals import Kind
from jetsaga.load.stock import StockCheck
from jetsaga.load.tracker import EXPECTED, Outcome, Post, Tracker

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
    window_s: float  # the sending window: due time of the first order to that of the last
    final_per_s: float  # orders that went final inside the window, per second of it
    final_per_s_overall: float  # all final orders, from the first due time to the last final
    accepted_per_s: float
    sent_per_s: float


class SenderStats(msgspec.Struct, kw_only=True, rename="camel"):
    connections: int
    in_flight_cap: int
    cap_hits: int  # times the cap held a send back (0 means a true open loop)
    max_in_flight: int
    lag_p99_ms: float  # how late sends left against their due time
    lag_max_ms: float


class Point(msgspec.Struct, kw_only=True, rename="camel"):
    t: int  # seconds since the run started
    sent: int
    accepted: int
    final: int
    p50: float | None  # ms, of the orders that went final in this second
    p95: float | None
    p99: float | None


class RunInfo(msgspec.Struct, kw_only=True, rename="camel"):
    run_id: str
    url: str
    started_at: str
    rate: float
    duration: float
    decline_ratio: float
    out_of_stock_ratio: float
    status_source: str  # "nats" (pushed, GET for stragglers) or "polling"
    notes: list[str] = msgspec.field(default_factory=list)


class Report(msgspec.Struct, kw_only=True, rename="camel"):
    run: RunInfo
    sent: int
    accepted: int
    accepted_after_error: int  # ambiguous POSTs found on the server afterwards
    rejected: dict[str, int]  # HTTP status -> count (non-2xx)
    transport_errors: dict[str, int]
    confirmed: int
    cancelled: int
    failed: int
    lost: int  # accepted and never seen final
    lost_order_ids: list[str]  # the first few
    final_not_accepted: int
    unexpected_outcomes: dict[str, int]  # e.g. "decline->CONFIRMED"
    finals_seen_via: dict[str, int]
    throughput: Throughput
    latency: Latency
    latency_from_send: Latency
    post_latency: Latency
    sender: SenderStats
    stock: StockCheck
    time_series: list[Point]
    exit_code: int


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


def nearest_rank(ordered: list[int], p: float) -> int:
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
    window_ns = max(tracker.count, 1) / rate * _NS_PER_S
    end_ns = tracker.start_ns + window_ns
    final_ns = [t for t in tracker.final_ns if t]
    in_window = sum(1 for t in final_ns if t <= end_ns)
    overall_s = (max(final_ns, default=tracker.start_ns) - tracker.start_ns) / _NS_PER_S
    window_s = window_ns / _NS_PER_S
    return Throughput(
        window_s=round(window_s, 3),
        final_per_s=round(in_window / window_s, 1),
        final_per_s_overall=round(len(final_ns) / overall_s, 1) if overall_s > 0 else 0.0,
        accepted_per_s=round(tracker.accepted / window_s, 1),
        sent_per_s=round(tracker.sent / window_s, 1),
    )


def build(info: RunInfo, tracker: Tracker, sender: SenderStats, stock: StockCheck) -> Report:
    outcomes: Counter[Outcome] = Counter()
    unexpected: Counter[str] = Counter()
    lost_ids: list[str] = []
    final_not_accepted = 0
    for i in range(tracker.count):
        final = Outcome(tracker.final[i])
        if tracker.post[i] != Post.ACCEPTED:
            final_not_accepted += final is not Outcome.NONE
            continue
        outcomes[final] += 1
        if final is Outcome.NONE:
            if len(lost_ids) < 20:
                lost_ids.append(tracker.order_ids[i])
        elif final is not EXPECTED[Kind(tracker.kinds[i])]:
            unexpected[f"{Kind(tracker.kinds[i]).name.lower()}->{final.name}"] += 1
    lost = outcomes[Outcome.NONE]
    return Report(
        run=info,
        sent=tracker.sent,
        accepted=tracker.accepted,
        accepted_after_error=tracker.found_after_error,
        rejected={str(s): n for s, n in sorted(tracker.http_status.items()) if not 200 <= s < 300},
        transport_errors=dict(sorted(tracker.errors.items())),
        confirmed=outcomes[Outcome.CONFIRMED],
        cancelled=outcomes[Outcome.CANCELLED],
        failed=outcomes[Outcome.FAILED],
        lost=lost,
        lost_order_ids=lost_ids,
        final_not_accepted=final_not_accepted,
        unexpected_outcomes=dict(unexpected),
        finals_seen_via=dict(tracker.final_source),
        throughput=throughput(tracker, info.rate),
        latency=latency_of(tracker.latency_due),
        latency_from_send=latency_of(tracker.latency_sent),
        post_latency=latency_of(tracker.post_latency),
        sender=sender,
        stock=stock,
        time_series=time_series(tracker),
        exit_code=1 if lost or (stock.checked and not stock.ok) else 0,
    )


def to_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2)
