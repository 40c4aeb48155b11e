"""`jetsaga load` (SPEC §7): set stock, watch for finals, send open-loop, settle, report.

`execute` runs one load test inside a running event loop and returns its report; `run`
is the CLI entry point, which does it under uvloop and prints and writes the result.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import uvloop
from rich.console import Console

from jetsaga import gcpolicy
from jetsaga.load import arrivals, chart, render, report, sender, settle, stock, watch
from jetsaga.load.options import Options, from_args
from jetsaga.load.progress import LiveProgress
from jetsaga.load.tracker import Tracker
from jetsaga.load.workload import OUT_OF_STOCK, Workload, new_run_id

__all__ = ["Options", "execute", "run"]

_LEAD_NS: Final = 50_000_000  # the first order is due this long after set-up ends
_POLL_CONCURRENCY: Final = 32
_STOCK_WAIT_S: Final = 10.0  # at least this long for the stock to catch up with the orders


async def execute(
    opts: Options, console: Console, orders: dict[str, str] | None = None
) -> report.Report:
    """One load test, start to end. Raises `stock.StockError` if stock cannot be set.
    `orders`, if given, is filled with each accepted order's id and the final status seen
    (PENDING if none), so that a caller can hold the report against the database."""
    opts.validate()
    warm = arrivals.order_count(opts.rate, opts.warmup)
    count = warm + arrivals.order_count(opts.rate, opts.duration)
    workload = Workload(new_run_id(), opts.products)
    levels = {p: workload.stock_per_product(count) for p in workload.product_ids}
    levels[workload.out_of_stock_id] = 0
    connections = opts.connections or sender.pool_size(opts.rate, opts.max_in_flight)
    info = report.RunInfo(
        run_id=workload.run_id, url=opts.url, rate=opts.rate, duration=opts.duration,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        decline_ratio=opts.decline_ratio, out_of_stock_ratio=opts.out_of_stock_ratio,
        status_source="polling", warmup=opts.warmup,
    )  # fmt: skip
    async with sender.open_session(64) as gets:
        await stock.set_stock(gets, opts.inventory_url, levels)
        tracker = Tracker(count, 0, measured_from=warm)
        watcher = watch.Watcher(tracker)
        if await watcher.start(opts.nats_url):
            info.status_source = "nats"
        else:
            info.notes.append(
                f"NATS at {opts.nats_url} out of reach ({watcher.last_error}): final "
                "statuses polled with GET /orders/{id}, final time from updatedAt"
            )
        poller = watch.Poller(gets, opts.url, tracker, _POLL_CONCURRENCY)
        send = sender.Sender(opts.url, connections, tracker, workload, opts.max_in_flight)
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
            send.close()
            reconciling.cancel()
            if drawing:
                drawing.cancel()
                await asyncio.gather(drawing, return_exceptions=True)
            if info.status_source == "nats" and not watcher.alive:
                info.notes.append(f"NATS connection lost during the run ({watcher.last_error})")
            await watcher.stop()
        stock_wait_s = max(_STOCK_WAIT_S, (phase.deadline_ns - time.monotonic_ns()) / 1e9)
        sold = _sold(tracker, workload, levels)
        checked = await stock.check_stock(gets, opts.inventory_url, levels, sold, stock_wait_s)
    if send.cap_hits:
        info.notes.append(
            f"in-flight cap {opts.max_in_flight} held the sender back {send.cap_hits} "
            "times: raise --max-in-flight, the system is far behind"
        )
    if poller.errors:
        info.notes.append(f"{poller.errors} of {poller.requests} GET /orders/{{id}} failed")
    if watcher.undecodable:
        info.notes.append(f"{watcher.undecodable} undecodable final events on NATS")
    if orders is not None:
        orders.update(tracker.accepted_outcomes())
    send_lag = tracker.send_lag.histogram()
    stats = report.SenderStats(
        connections=connections, in_flight_cap=opts.max_in_flight, cap_hits=send.cap_hits,
        max_in_flight=tracker.max_in_flight,
        lag_p99_ms=send_lag.get_value_at_percentile(99) / 1000.0,
        lag_max_ms=send_lag.get_max_value() / 1000.0,
    )  # fmt: skip
    return report.build(info, tracker, stats, checked)


def _sold(tracker: Tracker, workload: Workload, levels: dict[str, int]) -> dict[str, int] | None:
    """What each product must have sold: None while some accepted order is not final."""
    if tracker.open_orders():
        return None
    sold = dict.fromkeys(levels, 0)
    for k, qty in tracker.confirmed_lines():
        if k != OUT_OF_STOCK:
            sold[workload.product_ids[k]] += qty
    return sold


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    try:
        opts = from_args(args)
        opts.validate()
        gcpolicy.tune()  # the tracker holds objects for every order: keep full collections rare
        result = uvloop.run(execute(opts, console))
    except (ValueError, stock.StockError) as exc:
        print(f"jetsaga load: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jetsaga load: interrupted, no report", file=sys.stderr)
        return 130
    render.render(result, console)
    if args.json_path:
        Path(args.json_path).write_bytes(report.to_json(result))
    if args.chart_path:
        try:
            chart.write_chart(result, Path(args.chart_path))
        except chart.ChartError as exc:
            print(f"jetsaga load: {exc}", file=sys.stderr)
    return result.exit_code
