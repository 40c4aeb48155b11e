"""Metrics of the inventory service (SPEC §6), defined once."""

from __future__ import annotations

from prometheus_client import Gauge

RESERVATIONS_ACTIVE = Gauge(
    "inventory_reservations_active",
    "Reservations holding stock (neither confirmed, released nor expired)",
)
