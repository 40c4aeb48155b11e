"""The whole runner against a fake order and inventory service started in the test on
127.0.0.1: finals learnt by GET (the fake publishes nothing) or over a real nats-server."""

from __future__ import annotations

import io
import itertools
import resource
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from rich.console import Console

from jetsaga.load.fakeservice import FakeSystem, publisher, serve
from jetsaga.load.runner import Options, execute
from jetsaga.load.sender import pool_size
from jetsaga.load.stock import StockError


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def started(system: FakeSystem) -> AsyncIterator[str]:
    runner, url = await serve(system)
    try:
        yield url
    finally:
        await runner.cleanup()


def options(url: str, closed_port: int, **overrides: object) -> Options:
    base: dict[str, object] = {
        "url": url,
        "inventory_url": url,
        "nats_url": f"nats://127.0.0.1:{closed_port}",
        "rate": 400.0,
        "duration": 0.5,
        "decline_ratio": 0.2,
        "out_of_stock_ratio": 0.1,
        "settle_timeout": 20.0,
        "products": 5,
    }
    return Options(**{**base, **overrides})  # type: ignore[arg-type]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


async def test_every_order_is_counted_as_the_service_decided_it(closed_port: int) -> None:
    fake = FakeSystem()
    async for url in started(fake):
        report = await execute(options(url, closed_port), quiet())
    decided = Counter(status for status, _ in fake.orders.values())
    assert report.sent == report.accepted == 200 == len(fake.orders)
    assert (report.confirmed, report.cancelled, report.failed) == (
        decided["CONFIRMED"],
        decided["CANCELLED"],
        decided["FAILED"],
    )
    assert abs(report.cancelled - 40) <= 2 and abs(report.failed - 20) <= 2  # the mix asked for
    assert report.lost == 0 and report.exit_code == 0
    assert report.unexpected_outcomes == {}
    assert report.run.status_source == "polling"
    assert "out of reach" in report.run.notes[0]
    assert report.stock.checked and report.stock.ok, report.stock.violations
    assert report.stock.sold_expected == report.stock.sold > 0
    assert report.latency.count == 200 and report.latency.p50 > 0


async def test_orders_read_pending_a_few_times_are_read_again(closed_port: int) -> None:
    async for url in started(FakeSystem(pending_reads=2)):
        report = await execute(options(url, closed_port, duration=0.25), quiet())
    assert report.finals_seen_via == {"poll": 100}
    assert report.lost == 0 and report.exit_code == 0


async def test_orders_that_never_go_final_are_lost_and_fail_the_run(closed_port: int) -> None:
    every_tenth = itertools.count()
    fake = FakeSystem(lose=lambda _: next(every_tenth) % 10 == 0)
    async for url in started(fake):
        report = await execute(options(url, closed_port, settle_timeout=0.3), quiet())
    pending = {oid for oid, (status, _) in fake.orders.items() if status == "PENDING"}
    assert report.lost == len(pending) > 0
    assert set(report.lost_order_ids) <= pending
    assert report.confirmed + report.cancelled + report.failed + report.lost == report.accepted
    assert report.exit_code == 1
    assert report.stock.checked and report.stock.sold_expected is None  # cannot be known
    assert report.stock.ok  # reserved stock is still counted: nothing vanished


async def test_a_5xx_answer_is_probed_and_the_order_found(closed_port: int) -> None:
    async for url in started(FakeSystem(unavailable_every=4)):
        report = await execute(options(url, closed_port), quiet())
    assert report.rejected == {"503": 50}
    assert report.accepted_after_error == 50
    assert report.accepted == report.sent == 200
    assert report.lost == 0 and report.exit_code == 0


async def test_the_in_flight_cap_holds_the_sender_back_and_says_so(closed_port: int) -> None:
    async for url in started(FakeSystem()):
        report = await execute(
            options(url, closed_port, rate=4_000.0, duration=0.1, max_in_flight=1), quiet()
        )
    assert report.sender.cap_hits > 0 and report.sender.max_in_flight == 1
    assert any("in-flight cap" in note for note in report.run.notes)
    assert report.accepted == 400 and report.lost == 0


async def test_finals_published_on_nats_are_seen_without_polling(
    closed_port: int, nats_url: str
) -> None:
    client = await nats.connect(nats_url)
    try:
        async for url in started(FakeSystem(on_final=publisher(client))):
            report = await execute(options(url, closed_port, nats_url=nats_url), quiet())
    finally:
        await client.close()
    assert report.run.status_source == "nats"
    assert report.finals_seen_via == {"nats": 200}
    assert report.lost == 0 and report.exit_code == 0 and report.stock.ok


async def test_progress_bar_shows_live_counts(closed_port: int) -> None:
    out = io.StringIO()
    async for url in started(FakeSystem()):
        await execute(
            options(url, closed_port, duration=0.25, progress=True),
            Console(file=out, width=160, force_terminal=True),
        )
    assert "accepted" in out.getvalue() and "final" in out.getvalue()


async def test_a_run_stops_before_sending_when_stock_cannot_be_set(closed_port: int) -> None:
    fake = FakeSystem()
    async for url in started(fake):
        with pytest.raises(StockError):
            await execute(
                options(url, closed_port, inventory_url=f"http://127.0.0.1:{closed_port}"), quiet()
            )
    assert fake.posts == 0


async def test_stock_is_read_again_until_the_inventory_catches_up(closed_port: int) -> None:
    # Stock of confirmed orders stays reserved for the first 3 reads of each of 6 products.
    async for url in started(FakeSystem(sale_lag_reads=3 * 6)):
        report = await execute(options(url, closed_port, duration=0.25), quiet())
    assert report.stock.ok, report.stock.violations
    assert report.stock.waited_s > 0
    assert report.exit_code == 0


async def test_the_caller_can_have_every_accepted_order_and_its_status(closed_port: int) -> None:
    fake, seen = FakeSystem(), dict[str, str]()
    async for url in started(fake):
        report = await execute(options(url, closed_port, duration=0.25), quiet(), orders=seen)
    assert seen == {oid: status for oid, (status, _) in fake.orders.items()}
    assert Counter(seen.values())["CONFIRMED"] == report.confirmed


def test_the_connection_pool_is_sized_for_the_rate_within_the_caps() -> None:
    assert pool_size(10, 10_000) == 26
    assert pool_size(5_000, 100) == 100  # never more than the in-flight cap
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 16 <= pool_size(1_000_000, 1_000_000) <= soft - 200  # nor more than files allow
