"""The metric catalog of SPEC §6 as data: every metric a service exposes on `/metrics`, its
type, its labels (with their allowed values, all bounded) and which services expose it.

Dashboards, alert rules and scrape tests check themselves against this one table, so a
renamed metric or label fails a test instead of leaving an empty panel. Names are the ones
Prometheus sees: counters carry `_total`, and a histogram `h` is scraped as `h_bucket`,
`h_sum` and `h_count` (prometheus-client also adds `<name>_created` to counters and
histograms unless PROMETHEUS_DISABLE_CREATED_SERIES is set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

Kind = Literal["counter", "gauge", "histogram"]

SERVICES: Final = ("order", "payment", "inventory")
PORTS: Final = MappingProxyType({"order": 3004, "payment": 3005, "inventory": 3006})

# The durable consumers each worker pulls from (SPEC §4.3).
DURABLES: Final = MappingProxyType(
    {
        "inventory": (
            "inventory-service",
            "inventory-service-confirm",
            "inventory-service-release",
        ),
        "payment": ("payment-service",),
        "order": ("order-service-inventory", "order-service-payment"),
    }
)
ALL_DURABLES: Final = tuple(d for service in SERVICES for d in DURABLES[service])

SAGA_OUTCOMES: Final = ("completed", "compensated", "failed")
ORDER_STATUSES: Final = ("PENDING", "CONFIRMED", "CANCELLED", "FAILED")
PAYMENT_STATUSES: Final = ("succeeded", "failed", "refunded")
MESSAGE_OUTCOMES: Final = ("acked", "nacked", "dead_lettered", "duplicate")

# Labels Prometheus attaches to every scraped series (`job` is the scrape job, named after
# the service) and the series it records itself per target. Queries may use these too.
TARGET_LABELS: Final = frozenset({"job", "instance"})
PROMETHEUS_SERIES: Final = frozenset({"up"})
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    services: tuple[str, ...]
    description: str
    # label name -> allowed values; `le` of histogram buckets is implied, not listed
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def samples(self) -> frozenset[str]:
        """The sample names this metric appears under in a scrape."""
        if self.kind == "histogram":
            return frozenset(self.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        return frozenset({self.name})


_EVERY: Final = SERVICES
_ORDER: Final = ("order",)


_CATALOG: Final = (
    # --- order service: the saga ---------------------------------------------------------
    Metric(
        "saga_success_rate",
        "gauge",
        _ORDER,
        "COMPLETED among sagas that ended in the last 5 minutes (0..1)",
    ),
    Metric(
        "saga_ended_total",
        "counter",
        _ORDER,
        "Sagas ended by this worker, by outcome; sum across workers for a fleet rate",
        {"outcome": SAGA_OUTCOMES},
    ),
    Metric(
        "saga_duration_seconds",
        "histogram",
        _ORDER,
        "Time from saga start to its end, by outcome",
        {"outcome": SAGA_OUTCOMES},
    ),
    Metric("saga_compensation_total", "counter", _ORDER, "Sagas that started compensating"),
    Metric(
        "saga_cache_lookups_total",
        "counter",
        _ORDER,
        "Sagas a coordinator batch took from the worker's cache (hit) or had to read (miss)",
        {"result": ("hit", "miss")},
    ),
    Metric(
        "saga_compensation_success_rate",
        "gauge",
        _ORDER,
        "COMPENSATED among sagas that began compensating in the last 5 minutes (0..1)",
    ),
    Metric(
        "order_status_count",
        "gauge",
        _ORDER,
        "Orders in the database by status",
        {"status": ORDER_STATUSES},
    ),
    Metric("saga_in_flight", "gauge", _ORDER, "Sagas not yet in a final state"),
    Metric(
        "saga_oldest_in_flight_age_seconds",
        "gauge",
        _ORDER,
        "Age of the oldest saga not yet in a final state (0 when none)",
    ),
    # --- inventory and payment -----------------------------------------------------------
    Metric(
        "inventory_reservations_active",
        "gauge",
        ("inventory",),
        "Reservations holding stock (neither confirmed, released nor expired)",
    ),
    Metric(
        "payments_processed_total",
        "counter",
        ("payment",),
        "Payment outcomes: charges that succeeded or failed, and refunds",
        {"status": PAYMENT_STATUSES},
    ),
    # --- every worker: the consumer loop, the outbox and the JetStream backlog ------------
    Metric(
        "messages_processed_total",
        "counter",
        _EVERY,
        "Messages handled, by outcome",
        {"durable": ALL_DURABLES, "outcome": MESSAGE_OUTCOMES},
    ),
    Metric(
        "messages_dead_lettered_total",
        "counter",
        _EVERY,
        "Messages written to saga.errors.<durable> and terminated",
        {"durable": ALL_DURABLES},
    ),
    Metric(
        "handler_duration_seconds",
        "histogram",
        _EVERY,
        "Time to handle one fetched batch, commit included",
        {"durable": ALL_DURABLES},
    ),
    Metric(
        "message_wait_seconds",
        "histogram",
        _EVERY,
        "Time from a message's storing in its stream to the start of the batch that handles it",
        {"durable": ALL_DURABLES},
    ),
    Metric(
        "outbox_lag_seconds",
        "gauge",
        _EVERY,
        "Age of the oldest outbox row not yet published (0 when empty)",
    ),
    Metric(
        "jetstream_consumer_pending",
        "gauge",
        _EVERY,
        "Messages in the stream not yet delivered to the durable",
        {"durable": ALL_DURABLES},
    ),
    Metric(
        "jetstream_consumer_ack_pending",
        "gauge",
        _EVERY,
        "Messages delivered to the durable and not yet acknowledged",
        {"durable": ALL_DURABLES},
    ),
)

METRICS: Final = MappingProxyType({m.name: m for m in _CATALOG})

_BY_SAMPLE: Final = MappingProxyType(
    {sample: metric for metric in _CATALOG for sample in metric.samples()}
)


def metric_for_sample(sample: str) -> Metric | None:
    """The catalog metric a sample or selector name belongs to (`h_bucket` -> `h`)."""
    return _BY_SAMPLE.get(sample)


def metrics_of(service: str) -> tuple[Metric, ...]:
    """Every metric the service's `/metrics` must expose."""
    return tuple(m for m in _CATALOG if service in m.services)


def durables_of(service: str) -> tuple[str, ...]:
    return DURABLES[service]


def allowed_labels(sample: str) -> frozenset[str]:
    """Label names a selector on this sample may match on (its own plus target labels)."""
    metric = metric_for_sample(sample)
    if metric is None:
        return TARGET_LABELS
    extra = {"le"} if sample.endswith("_bucket") and metric.kind == "histogram" else set()
    return frozenset(metric.labels) | extra | TARGET_LABELS


__all__ = [
    "ALL_DURABLES",
    "DURABLES",
    "MESSAGE_OUTCOMES",
    "METRICS",
    "ORDER_STATUSES",
    "PAYMENT_STATUSES",
    "PORTS",
    "PROMETHEUS_SERIES",
    "SAGA_OUTCOMES",
    "SERVICES",
    "TARGET_LABELS",
    "Metric",
    "allowed_labels",
    "durables_of",
    "metric_for_sample",
    "metrics_of",
]
