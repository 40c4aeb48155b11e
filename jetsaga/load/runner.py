"""`jetsaga load` (SPEC §7): set stock, watch for finals, send open-loop, settle, report.

`execute` runs one load test inside a running event loop and returns its report; `run`
is the CLI entry point, which does it under uvloop and prints and writes the result.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
import uvloop
from rich.console import Console

from jetsaga.config import DEFAULT_NATS_URL
from jetsaga.load import arrivals, chart, render, report, sender, settle, stock, watch
from jetsaga.load.progress import LiveProgress
from jetsaga.load.tracker import Tracker
from jetsaga.load.workload import OUT_OF_STOCK, Workload, new_run_id

_LEAD_NS: Final = 50_000_000  # the first order is due this long after set-up ends
_POLL_CONCURRENCY: Final = 32
_STOCK_WAIT_S: Final = 10.0  # at least this long for the stock to catch up with the orders


class Options(msgspec.Struct, frozen=True, kw_only=True):
    url: str = "http://127.0.0.1:3004"
    inventory_url: str = "http://127.0.0.1:3006"
    nats_url: str = DEFAULT_NATS_URL
    rate: float = 100.0
    duration: float = 10.0
    decline_ratio: float = 0.0
    out_of_stock_ratio: float = 0.0
    settle_timeout: float = 60.0
    products: int = 20
    connections: int | None = None  # None: sized for the rate
    max_in_flight: int = 10_000
    progress: bool = False

    def validate(self) -> None:
        arrivals.validate_ratios(self.decline_ratio, self.out_of_stock_ratio)
        if self.rate <= 0 or self.duration <= 0:
            raise ValueError("--rate and --duration must be positive")
        if self.products < 1 or self.max_in_flight < 1 or self.settle_timeout < 0:
            raise ValueError("--products and --max-in-flight must be >= 1, --settle-timeout >= 0")


async def execute(
    opts: Options, console: Console, orders: dict[str, str] | None = None
) -> report.Report:
    """One load test, start to end. Raises `stock.StockError` if stock cannot be set.
    `orders`, if given, is filled with each accepted order's id and the final status seen
    (PENDING if none), so that a caller can hold the report against the database."""
    opts.validate()
    count = arrivals.order_count(opts.rate, opts.duration)
    workload = Workload(new_run_id(), opts.products)
    levels = {p: workload.stock_per_product(count) for p in workload.product_ids}
    levels[workload.out_of_stock_id] = 0
    connections = opts.connections or sender.pool_size(opts.rate, opts.max_in_flight)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    notes: list[str] = []
    async with sender.open_session(connections) as posts, sender.open_session(64) as gets:
        await stock.set_stock(gets, opts.inventory_url, levels)
        tracker = Tracker(count, 0)
        watcher = watch.Watcher(tracker)
        if not await watcher.start(opts.nats_url):
            notes.append(
                f"NATS at {opts.nats_url} out of reach ({watcher.last_error}): final "
                "statuses polled with GET /orders/{id}, final time from updatedAt"
            )
        source = "nats" if watcher.alive else "polling"
        poller = watch.Poller(gets, opts.url, tracker, _POLL_CONCURRENCY)
        send = sender.Sender(posts, opts.url, tracker, workload, opts.max_in_flight)
        live = LiveProgress(tracker, console) if opts.progress else None
        drawing = asyncio.create_task(live.run()) if live else None
        tracker.start_ns = time.monotonic_ns() + _LEAD_NS
        phase = settle.Phase()
        reconciling = asyncio.create_task(settle.reconcile(tracker, poller, watcher, phase))
        try:
            mix = functools.partial(
                arrivals.kind_of,
                decline_ratio=opts.decline_ratio,
                out_of_stock_ratio=opts.out_of_stock_ratio,
            )
            await send.run(opts.rate, mix)
            phase.end_sending(opts.settle_timeout)
            if live:
                live.phase = "settling"
            await asyncio.gather(reconciling, send.drain(opts.settle_timeout))
            await send.drain(0)
            await poller.check(tracker.open_orders())  # a last look before calling any lost
        finally:
            reconciling.cancel()
            if drawing:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)
            if source == "nats" and not watcher.alive:
                notes.append(f"NATS connection lost during the run ({watcher.last_error})")
            await watcher.stop()
        sold: dict[str, int] | None = None
        if not tracker.open_orders():
            sold = {p: 0 for p in levels}
            for k, qty in tracker.confirmed_lines():
                if k != OUT_OF_STOCK:
                    sold[workload.product_ids[k]] += qty
        stock_wait_s = max(_STOCK_WAIT_S, (phase.deadline_ns - time.monotonic_ns()) / 1e9)
        checked = await stock.check_stock(gets, opts.inventory_url, levels, sold, stock_wait_s)
    if send.cap_hits:
        notes.append(
            f"in-flight cap {opts.max_in_flight} held the sender back {send.cap_hits} "
            "times: raise --max-in-flight, the system is far behind"
        )
    if poller.errors:
        notes.append(f"{poller.errors} of {poller.requests} GET /orders/{{id}} failed")
    if watcher.undecodable:
        notes.append(f"{watcher.undecodable} undecodable final events on NATS")
    info = report.RunInfo(
        run_id=workload.run_id,
        url=opts.url,
        started_at=started_at,
        rate=opts.rate,
        duration=opts.duration,
        decline_ratio=opts.decline_ratio,
        out_of_stock_ratio=opts.out_of_stock_ratio,
        status_source=source,
        notes=notes,
    )
    stats = report.SenderStats(
        connections=connections,
        in_flight_cap=opts.max_in_flight,
        cap_hits=send.cap_hits,
        max_in_flight=tracker.max_in_flight,
        lag_p99_ms=tracker.send_lag.get_value_at_percentile(99) / 1000.0,
        lag_max_ms=tracker.send_lag.get_max_value() / 1000.0,
    )
    if orders is not None:
        orders.update(tracker.accepted_outcomes())
    return report.build(info, tracker, stats, checked)


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        url=args.url.rstrip("/"),
        inventory_url=args.inventory_url.rstrip("/"),
        nats_url=args.nats_url or os.environ.get("NATS_URL") or DEFAULT_NATS_URL,
        rate=args.rate,
        duration=args.duration,
        decline_ratio=args.decline_ratio,
        out_of_stock_ratio=args.out_of_stock_ratio,
        settle_timeout=args.settle_timeout,
        products=args.products,
        connections=getattr(args, "connections", None),
        max_in_flight=getattr(args, "max_in_flight", 10_000),
        progress=not args.no_progress and sys.stdout.isatty(),
    )


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    try:
        opts = options_from(args)
        opts.validate()
        result = uvloop.run(execute(opts, console))
    except (ValueError, stock.StockError) as exc:
        print(f"jetsaga load: {exc}", file=sys.stderr)
        return 2
    render.render(result, console)
    if args.json_path:
        Path(args.json_path).write_bytes(report.to_json(result))
    if args.chart_path:
        try:
            chart.write_chart(result, Path(args.chart_path))
        except chart.ChartError as exc:
            print(f"jetsaga load: {exc}", file=sys.stderr)
    return result.exit_code
