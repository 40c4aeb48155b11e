"""Report maths: counts, lost orders, percentiles, throughput, time series, exit status."""

from __future__ import annotations

import random

import msgspec
import pytest

from jetsaga.load.arrivals import Kind
from jetsaga.load.figures import latency_of, nearest_rank
from jetsaga.load.report import Report, RunInfo, SenderStats, build, to_json
from jetsaga.load.stock import StockCheck
from jetsaga.load.tracker import Latencies, Outcome, Post, Tracker, new_histogram
from jetsaga.load.workload import Order

MS = 1_000_000
S = 1_000_000_000
START = 10 * S
INFO = RunInfo(
    run_id="r",
    url="http://127.0.0.1:1",
    started_at="now",
    rate=100.0,
    duration=1.0,
    decline_ratio=0.0,
    out_of_stock_ratio=0.0,
    status_source="nats",
)
SENDER = SenderStats(
    connections=1, in_flight_cap=10, cap_hits=0, max_in_flight=1, lag_p99_ms=0.0, lag_max_ms=0.0
)
STOCK_OK = StockCheck(checked=True, ok=True)


def send(tracker: Tracker, i: int, kind: Kind = Kind.OK, answer: int | str = 201) -> str:
    """Order i, due at START + i * 10 ms and sent on time, answered 1 ms later."""
    order = Order(order_id=f"o{i}", body=b"{}", lines=((0, 1),))
    due = START + i * 10 * MS
    tracker.on_send(i, order, kind, due, due)
    if answer == 201:
        tracker.on_answer(i, Post.ACCEPTED, due + MS, 201)
    elif isinstance(answer, int):
        tracker.on_answer(i, Post.AMBIGUOUS if answer >= 500 else Post.REJECTED, due + MS, answer)
    else:
        tracker.on_answer(i, Post.AMBIGUOUS, due + MS, answer)
    return order.order_id


def run_of(latencies_ms: list[int]) -> Tracker:
    """Every order accepted and CONFIRMED, `latencies_ms[i]` after it was due."""
    tracker = Tracker(len(latencies_ms), START)
    for i, ms in enumerate(latencies_ms):
        tracker.on_final(send(tracker, i), Outcome.CONFIRMED, START + i * 10 * MS + ms * MS, "nats")
    return tracker


def test_percentiles_come_from_the_latency_from_due_time() -> None:
    report = build(INFO, run_of(list(range(1, 101))), SENDER, STOCK_OK)
    lat = report.latency
    assert lat.count == 100
    assert lat.p50 == pytest.approx(50, rel=1e-3)
    assert lat.p95 == pytest.approx(95, rel=1e-3)
    assert lat.p99 == pytest.approx(99, rel=1e-3)
    assert lat.max == pytest.approx(100, rel=1e-3)
    assert lat.mean == pytest.approx(50.5, rel=1e-3)


def test_latency_counts_the_wait_of_a_late_send() -> None:
    # Coordinated omission: an order sent 300 ms late and final 5 ms after that waited 305 ms.
    tracker = Tracker(1, START)
    tracker.on_send(0, Order(order_id="o0", body=b"", lines=()), Kind.OK, START, START + 300 * MS)
    tracker.on_answer(0, Post.ACCEPTED, START + 301 * MS, 201)
    tracker.on_final("o0", Outcome.CONFIRMED, START + 305 * MS, "nats")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    assert report.latency.max == pytest.approx(305, rel=1e-3)
    assert report.latency_from_send.max == pytest.approx(5, rel=1e-3)


def test_latency_is_also_kept_per_final_status_of_measured_orders() -> None:
    # A 1 s warm-up of one slow order, then 10 orders: 6 confirmed in 100 ms, 3 cancelled in
    # 300 ms (a compensation is two hops longer), 1 failed in 40 ms; no order is lost.
    tracker = Tracker(11, START, measured_from=1)
    tracker.on_final(send(tracker, 0), Outcome.CANCELLED, START + 900 * MS, "nats")
    plan = [(Outcome.CONFIRMED, 100)] * 6 + [(Outcome.CANCELLED, 300)] * 3
    for i, (outcome, ms) in enumerate([*plan, (Outcome.FAILED, 40)], start=1):
        tracker.on_final(send(tracker, i), outcome, START + (i * 10 + ms) * MS, "nats")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    by = report.latency_by_outcome
    assert list(by) == ["CONFIRMED", "CANCELLED", "FAILED"]
    assert [by[k].count for k in by] == [6, 3, 1]
    assert by["CONFIRMED"].max == pytest.approx(100, rel=1e-3)
    assert by["CANCELLED"].p50 == pytest.approx(300, rel=1e-3)  # the warm-up's 900 is left out
    assert by["FAILED"].p99 == pytest.approx(40, rel=1e-3)
    assert report.latency.count == sum(lat.count for lat in by.values())


def test_an_outcome_no_measured_order_had_is_left_out() -> None:
    report = build(INFO, run_of([3, 4, 5]), SENDER, STOCK_OK)
    assert list(report.latency_by_outcome) == ["CONFIRMED"]
    assert report.latency_by_outcome["CONFIRMED"].count == 3


def test_latencies_counted_per_bucket_give_the_histogram_of_every_value() -> None:
    rng = random.Random(7)
    latencies, direct = Latencies(), new_histogram()
    for _ in range(20_000):
        ns = int(rng.lognormvariate(16, 2))  # from microseconds to minutes
        latencies.record(ns)
        direct.record_value(max(ns // 1_000, 1))
    assert latency_of(latencies.histogram()) == latency_of(direct)


def test_open_orders_are_the_accepted_ones_not_yet_final_oldest_first() -> None:
    tracker = Tracker(6, START)
    ids = [send(tracker, i) for i in range(5)]
    send(tracker, 5, answer=503)  # ambiguous: not open until found on the server
    tracker.on_final(ids[1], Outcome.CONFIRMED, START + 50 * MS, "nats")
    assert tracker.open_orders() == [0, 2, 3, 4] and tracker.unresolved == 4
    assert tracker.open_orders(accepted_before_ns=START + 25 * MS) == [0, 2]
    tracker.on_found(5)
    assert tracker.open_orders() == [0, 2, 3, 4, 5]


def test_accepted_orders_never_seen_final_are_lost_and_fail_the_run() -> None:
    tracker = Tracker(5, START)
    ids = [send(tracker, i) for i in range(5)]
    tracker.on_final(ids[0], Outcome.CONFIRMED, START + 50 * MS, "nats")
    tracker.on_final(ids[1], Outcome.FAILED, START + 50 * MS, "poll")
    tracker.on_final(ids[2], Outcome.CANCELLED, START + 50 * MS, "nats")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    assert (report.confirmed, report.failed, report.cancelled, report.lost) == (1, 1, 1, 2)
    assert report.lost_order_ids == ids[3:]
    assert report.finals_seen_via == {"nats": 2, "poll": 1}
    assert report.exit_code == 1


def test_rejected_and_broken_posts_are_not_lost() -> None:
    tracker = Tracker(4, START)
    send(tracker, 0, answer=422)
    send(tracker, 1, answer=503)
    send(tracker, 2, answer="timeout")
    tracker.on_final(send(tracker, 3), Outcome.CONFIRMED, START + 40 * MS, "nats")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    assert (report.sent, report.accepted, report.lost) == (4, 1, 0)
    assert report.rejected == {"422": 1, "503": 1}
    assert report.transport_errors == {"timeout": 1}
    assert report.exit_code == 0


def test_an_ambiguous_post_found_on_the_server_counts_as_accepted() -> None:
    tracker = Tracker(1, START)
    order_id = send(tracker, 0, answer=503)
    tracker.on_found(0)
    tracker.on_final(order_id, Outcome.CONFIRMED, START + 20 * MS, "poll")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    assert (report.accepted, report.accepted_after_error, report.confirmed) == (1, 1, 1)


def test_a_final_status_seen_twice_counts_once() -> None:
    tracker = Tracker(1, START)
    order_id = send(tracker, 0)
    assert tracker.on_final(order_id, Outcome.CONFIRMED, START + 20 * MS, "nats")
    assert not tracker.on_final(order_id, Outcome.CONFIRMED, START + 90 * MS, "poll")
    assert not tracker.on_final("someone-elses-order", Outcome.FAILED, START, "nats")
    report = build(INFO, tracker, SENDER, STOCK_OK)
    assert report.confirmed == 1 and report.latency.count == 1
    assert report.latency.max == pytest.approx(20, rel=1e-3)


def test_a_final_status_before_the_post_answer_is_kept() -> None:
    tracker = Tracker(1, START)
    tracker.on_send(0, Order(order_id="o0", body=b"", lines=()), Kind.OK, START, START)
    tracker.on_final("o0", Outcome.CONFIRMED, START + 2 * MS, "nats")
    tracker.on_answer(0, Post.ACCEPTED, START + 3 * MS, 201)
    assert tracker.idle.is_set()
    assert build(INFO, tracker, SENDER, STOCK_OK).lost == 0


def test_outcomes_other_than_the_order_was_built_for_are_reported() -> None:
    tracker = Tracker(2, START)
    tracker.on_final(send(tracker, 0, Kind.DECLINE), Outcome.CONFIRMED, START + 9 * MS, "nats")
    tracker.on_final(send(tracker, 1, Kind.OUT_OF_STOCK), Outcome.FAILED, START + 19 * MS, "nats")
    assert build(INFO, tracker, SENDER, STOCK_OK).unexpected_outcomes == {"decline->CONFIRMED": 1}


def test_a_stock_violation_fails_the_run_and_an_unchecked_stock_does_not() -> None:
    tracker = run_of([5])
    bad = StockCheck(checked=True, ok=False, violations=["p: set 10, now counts 9"])
    assert build(INFO, tracker, SENDER, bad).exit_code == 1
    unchecked = StockCheck(checked=False, ok=False, note="inventory down")
    assert build(INFO, tracker, SENDER, unchecked).exit_code == 0


def test_throughput_counts_finals_inside_the_sending_window() -> None:
    # 100 orders due over 1 s; the last 10 go final after the window, 2 s late.
    tracker = Tracker(100, START)
    for i in range(100):
        late = 2_000 if i >= 90 else 5
        tracker.on_final(send(tracker, i), Outcome.CONFIRMED, START + (i * 10 + late) * MS, "nats")
    t = build(INFO, tracker, SENDER, STOCK_OK).throughput
    assert t.window_s == 1.0
    assert t.final_per_s == 90.0
    assert t.accepted_per_s == 100.0
    assert t.final_per_s_overall == pytest.approx(100 / 2.99, rel=1e-2)  # last final: 2.99 s


def test_warm_up_orders_count_for_loss_but_not_for_latency_or_throughput() -> None:
    # 200 orders at 100/s: the first 100 are a 1 s warm-up, slow (500 ms) and one never
    # final; the measured 100 take 5 ms each.
    tracker = Tracker(200, START, measured_from=100)
    for i in range(200):
        order_id = send(tracker, i)
        if i != 3:
            late = 500 if i < 100 else 5
            tracker.on_final(order_id, Outcome.CONFIRMED, START + (i * 10 + late) * MS, "nats")
    report = build(msgspec.structs.replace(INFO, warmup=1.0), tracker, SENDER, STOCK_OK)
    assert report.warmup_orders == 100 and report.sent == 200 and report.accepted == 200
    assert report.lost == 1 and report.lost_order_ids == ["o3"] and report.exit_code == 1
    assert report.latency.count == 100 and report.latency.max == pytest.approx(5, rel=1e-3)
    assert report.latency_from_send.count == 100 and report.post_latency.count == 100
    t = report.throughput
    assert t.window_s == 1.0 and t.accepted_per_s == 100.0 and t.sent_per_s == 100.0
    # Inside the measured second: 100 measured finals and the warm-up's last 50 (late).
    assert t.final_per_s == 150.0
    assert t.final_per_s_overall == pytest.approx(100 / 0.995, rel=1e-3)
    # The per-second series still shows the warm-up, its latency included.
    points = report.time_series
    assert sum(p.sent for p in points) == 200 and points[0].p50 == pytest.approx(500, rel=1e-3)


def test_a_warm_up_longer_than_the_run_is_refused() -> None:
    with pytest.raises(ValueError, match="measured_from"):
        Tracker(10, START, measured_from=11)


def test_time_series_has_a_point_per_second_with_its_percentiles() -> None:
    tracker = Tracker(3, START)
    tracker.on_final(send(tracker, 0), Outcome.CONFIRMED, START + 100 * MS, "nats")
    tracker.on_final(send(tracker, 1), Outcome.CONFIRMED, START + 1_500 * MS, "nats")
    tracker.on_final(send(tracker, 2), Outcome.CONFIRMED, START + 1_700 * MS, "nats")
    points = build(INFO, tracker, SENDER, STOCK_OK).time_series
    assert [(p.t, p.sent, p.accepted, p.final) for p in points] == [(0, 3, 3, 1), (1, 0, 0, 2)]
    assert points[0].p50 == pytest.approx(100, rel=1e-3)
    assert points[1].p50 == pytest.approx(1_490, rel=1e-3)
    assert points[1].p99 == pytest.approx(1_680, rel=1e-3)


def test_nearest_rank_percentile() -> None:
    values = list(range(1, 11))
    assert [nearest_rank(values, p) for p in (10, 50, 90, 95, 100)] == [1, 5, 9, 10, 10]
    assert nearest_rank([7], 99) == 7


def test_json_report_is_camel_case_and_decodes_back() -> None:
    report = build(INFO, run_of([3, 4, 5]), SENDER, STOCK_OK)
    data = msgspec.json.decode(to_json(report))
    for key in (
        "sent",
        "accepted",
        "rejected",
        "transportErrors",
        "confirmed",
        "cancelled",
        "failed",
        "lost",
        "throughput",
        "latency",
        "latencyByOutcome",
        "stock",
        "timeSeries",
        "exitCode",
    ):
        assert key in data
    assert set(data["latency"]) == {"count", "p50", "p95", "p99", "p999", "max", "mean"}
    assert set(data["timeSeries"][0]) == {"t", "sent", "accepted", "final", "p50", "p95", "p99"}
    assert set(data["throughput"]) == {
        "windowS",
        "finalPerS",
        "finalPerSOverall",
        "acceptedPerS",
        "sentPerS",
    }
    assert msgspec.json.decode(to_json(report), type=Report) == report
