"""The report of a run: built from the tracker once the run is over, printed or written as JSON.

Latency is from each order's due time to its final status (what a user waiting on an open
system sees); the same from the actual send is kept alongside, and the POST answer time too.
Counts, losses and stock cover every order; latency and throughput only those sent after the
warm-up, if the run had one.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from jetsaga.load.arrivals import Kind
from jetsaga.load.figures import Latency, Point, Throughput, latency_of, throughput, time_series
from jetsaga.load.stock import StockCheck
from jetsaga.load.tracker import EXPECTED, Outcome, Post, Tracker

__all__ = ["Latency", "Point", "Report", "RunInfo", "SenderStats", "Throughput", "build"]


class SenderStats(msgspec.Struct, kw_only=True, rename="camel"):
    connections: int
    in_flight_cap: int
    cap_hits: int  # times the cap held a send back (0 means a true open loop)
    max_in_flight: int
    lag_p99_ms: float  # how late sends left against their due time
    lag_max_ms: float


class RunInfo(msgspec.Struct, kw_only=True, rename="camel"):
    run_id: str
    url: str
    started_at: str
    rate: float
    duration: float  # measured seconds, after the warm-up
    decline_ratio: float
    out_of_stock_ratio: float
    status_source: str  # "nats" (pushed, GET for stragglers) or "polling"
    warmup: float = 0.0  # seconds sent at the same rate before the measured duration
    notes: list[str] = msgspec.field(default_factory=list)

    def load_shape(self) -> str:
        """`500/s for 60 s`, and the warm-up if there was one."""
        warmup = f" after {self.warmup:g} s of warm-up" if self.warmup else ""
        return f"{self.rate:g}/s for {self.duration:g} s{warmup}"


class Report(msgspec.Struct, kw_only=True, rename="camel"):
    run: RunInfo
    warmup_orders: int  # the first orders, sent during the warm-up; in `sent` and after
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
    # from the due time, per final status reached (CONFIRMED, CANCELLED, FAILED)
    latency_by_outcome: dict[str, Latency]
    post_latency: Latency
    sender: SenderStats
    stock: StockCheck
    time_series: list[Point]
    exit_code: int


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
        warmup_orders=tracker.measured_from,
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
        latency=latency_of(tracker.latency_due.histogram()),
        latency_from_send=latency_of(tracker.latency_sent.histogram()),
        latency_by_outcome={
            o.name: latency
            for o, latencies in tracker.latency_by_outcome.items()
            if (latency := latency_of(latencies.histogram())).count
        },
        post_latency=latency_of(tracker.post_latency.histogram()),
        sender=sender,
        stock=stock,
        time_series=time_series(tracker),
        exit_code=1 if lost or (stock.checked and not stock.ok) else 0,
    )


def to_json(report: Report) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2)
