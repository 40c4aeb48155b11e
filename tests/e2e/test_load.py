"""`jetsaga load` against the real system (issue 5): a short open-loop run with declines
and out-of-stock orders, whose report must agree with what the order service stored."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from datetime import UTC, datetime

import pytest
from rich.console import Console

from bench import hops
from jetsaga.load.arrivals import Kind, kind_of
from jetsaga.load.runner import Options, execute
from tests.support.api import Api
from tests.support.services import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_a_short_load_loses_nothing_and_its_report_matches_the_database(
    system: System, api: Api, nats_url: str, database_url: str
) -> None:
    seen: dict[str, str] = {}
    began = datetime.now(UTC)
    opts = Options(
        url=system.order_url,
        inventory_url=system.inventory_url,
        nats_url=nats_url,
        rate=40.0,
        duration=8.0,
        warmup=2.0,  # its orders are counted and checked like the others
        decline_ratio=0.1,
        out_of_stock_ratio=0.05,
        settle_timeout=60.0,
        products=5,
    )
    report = await execute(opts, Console(file=io.StringIO()), orders=seen)

    assert report.sent == report.accepted == 400, (report.rejected, report.transport_errors)
    assert report.warmup_orders == 80 and report.latency.count == 320
    assert report.lost == 0, report.lost_order_ids
    assert report.exit_code == 0
    assert report.run.status_source == "nats"
    assert report.stock.checked and report.stock.ok, report.stock.violations
    assert report.unexpected_outcomes == {}
    planned = Counter(kind_of(i, 0.1, 0.05) for i in range(400))
    assert (report.confirmed, report.cancelled, report.failed) == (
        planned[Kind.OK],
        planned[Kind.DECLINE],
        planned[Kind.OUT_OF_STOCK],
    )

    semaphore = asyncio.Semaphore(16)

    async def stored(order_id: str) -> str:
        async with semaphore:
            order = await api.order(order_id)
        assert order is not None, order_id
        return str(order["status"])

    in_db = dict(zip(seen, await asyncio.gather(*(stored(o) for o in seen)), strict=True))
    assert in_db == seen  # every order, with the status the runner reported
    counts = Counter(in_db.values())
    assert (counts["CONFIRMED"], counts["CANCELLED"], counts["FAILED"]) == (
        report.confirmed,
        report.cancelled,
        report.failed,
    )

    # The hop breakdown of bench.hops finds every confirmed saga, its moments in saga order.
    traces = await hops.fetch(database_url, began)
    assert len(traces) == report.confirmed
    assert all(ms >= 0 for trace in traces for ms in trace.hops_ms())
