"""`observe_each` leaves a histogram exactly as one `observe` per value would."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from jetsaga.metrics import observe_each

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _histogram() -> Histogram:
    return Histogram("h_seconds", "h", ["durable"], buckets=BUCKETS, registry=CollectorRegistry())


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0],
        [0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 1.0, 9.99, 10.0, 10.01, 3600.0],
        [0.02] * 50 + [math.inf],
        [2.5, 0.003, 0.003, 7.0, 0.0, 0.1],
    ],
)
def test_observing_a_batch_matches_observing_each_value(values: list[float]) -> None:
    one_by_one, batched = _histogram(), _histogram()
    child = one_by_one.labels("d")
    for value in values:
        child.observe(value)
    observe_each(batched.labels("d"), values)
    assert _samples(batched) == _samples(one_by_one)


def test_without_the_internals_it_observes_each_value() -> None:
    seen: list[float] = []

    class Plain:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    observe_each(Plain(), [0.5, 0.25])  # type: ignore[arg-type]
    assert seen == [0.5, 0.25]
