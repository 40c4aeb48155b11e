"""Metrics every worker exposes (SPEC §6), defined once. Labels are bounded: durable names and
outcomes, never an order id."""

from __future__ import annotations

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
