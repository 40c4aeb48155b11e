"""The settings of one load run, from the `jetsaga load` arguments (SPEC §7)."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

import msgspec

from jetsaga.config import DEFAULT_NATS_URL
from jetsaga.load.arrivals import validate_ratios


class Options(msgspec.Struct, frozen=True, kw_only=True):
    url: str = "http://127.0.0.1:3004"
    inventory_url: str = "http://127.0.0.1:3006"
    nats_url: str = DEFAULT_NATS_URL
    rate: float = 100.0
    duration: float = 10.0
    warmup: float = 0.0  # seconds at `rate` before `duration`, not measured
    decline_ratio: float = 0.0
    out_of_stock_ratio: float = 0.0
    settle_timeout: float = 60.0
    products: int = 20
    connections: int | None = None  # None: sized for the rate
    max_in_flight: int = 10_000
    progress: bool = False

    def validate(self) -> None:
        validate_ratios(self.decline_ratio, self.out_of_stock_ratio)
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError("--rate and --duration must be positive")
        if self.warmup < 0:
            raise ValueError("--warmup must not be negative")
        if self.products < 1 or self.max_in_flight < 1 or self.settle_timeout < 0:
            raise ValueError("--products and --max-in-flight must be >= 1, --settle-timeout >= 0")
        if urlsplit(self.url).scheme != "http":
            raise ValueError("--url must be http://host:port: orders are sent in plain HTTP/1.1")


def from_args(args: argparse.Namespace) -> Options:
    """NATS_URL applies when --nats-url is not given; the bar shows only on a terminal."""
    return Options(
        url=args.url.rstrip("/"),
        inventory_url=args.inventory_url.rstrip("/"),
        nats_url=args.nats_url or os.environ.get("NATS_URL") or DEFAULT_NATS_URL,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        decline_ratio=args.decline_ratio,
        out_of_stock_ratio=args.out_of_stock_ratio,
        settle_timeout=args.settle_timeout,
        products=args.products,
        connections=args.connections,
        max_in_flight=args.max_in_flight,
        progress=not args.no_progress and sys.stdout.isatty(),
    )
