"""The payment service's own metric (SPEC §6), defined once. `jetsaga.metrics` holds the
ones every worker shares."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter

STATUSES: Final = ("succeeded", "failed", "refunded")

PAYMENTS_PROCESSED = Counter(
    "payments_processed",
    "Payment outcomes committed: charges that succeeded or failed, and refunds",
    ["status"],
)
for _status in STATUSES:
    PAYMENTS_PROCESSED.labels(_status)  # every series exists from the start, at 0


def outcome(status: str) -> None:
    """Count a committed row change; `processing` and `voided` are not outcomes."""
    if status in STATUSES:
        PAYMENTS_PROCESSED.labels(status).inc()
