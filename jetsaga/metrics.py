"""Metrics every worker exposes (SPEC §6), defined once. Labels are bounded: durable names and
outcomes, never an order id."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_PROCESSED = Counter(
    "messages_processed",
    "Messages handled by a durable consumer, by outcome (acked, duplicate, nacked, dead_lettered)",
    ["durable", "outcome"],
)
MESSAGES_DEAD_LETTERED = Counter(
    "messages_dead_lettered", "Messages written to saga.errors.<durable>", ["durable"]
)
HANDLER_DURATION = Histogram(
    "handler_duration_seconds",
    "Time to handle one fetched batch, commit included",
    ["durable"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MESSAGE_WAIT = Histogram(
    "message_wait_seconds",
    "Time from a message's storing in its stream to the start of the batch that handles it",
    ["durable"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OUTBOX_LAG = Gauge(
    "outbox_lag_seconds", "Age of the oldest outbox message not yet published (0 when empty)"
)
CONSUMER_PENDING = Gauge(
    "jetstream_consumer_pending",
    "Messages in the stream not yet delivered to the consumer",
    ["durable"],
)
CONSUMER_ACK_PENDING = Gauge(
    "jetstream_consumer_ack_pending",
    "Messages delivered to the consumer and not yet acked",
    ["durable"],
)


def observe_each(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(value)` for each value, with each bucket's lock taken once per call
    rather than once per value: a consumer observes every message of every batch.

    Rests on prometheus-client's `_upper_bounds`, `_buckets` and `_sum` (0.26); without
    them it observes one value at a time (`tests/unit/test_metrics_observe.py` compares
    the two)."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe picks
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    total.inc(sum(values))
