"""The inventory handlers and expiry sweep against a real PostgreSQL, each test on a database
of its own: reservations all-or-nothing, release, confirm, expiry, duplicates (answered again
from their rows), races, and conservation of `available + reserved + sold`."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from inventory_service import store
from inventory_service.domain import reservation_id_for
from inventory_service.expiry import Expiry, expire_due
from inventory_service.handlers import Handlers
from inventory_service.main import MIGRATIONS
from inventory_service.metrics import RESERVATIONS_ACTIVE
from jetsaga import contracts, db, outbox
from jetsaga.consumer import Delivery, PermanentError, TransientError
from jetsaga.contracts import (
    InventoryOutOfStock,
    InventoryReleased,
    InventoryReserved,
    LineItem,
    OrderConfirmed,
    OrderCreated,
    ReleaseInventory,
    UnavailableItem,
)
from tests.support.databases import fresh_pool
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TTL_S = 900.0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    migrations = [db.SHARED_MIGRATIONS, MIGRATIONS]
    async with fresh_pool(database_url, "inventory_t", migrations, 6, drop=True) as p:
        yield p


@pytest.fixture
def handlers(pool: asyncpg.Pool) -> Handlers:
    return Handlers(pool, TTL_S, clock=lambda: T0)


def delivery(message: contracts.AnyMessage, msg_id: str | None = None) -> Delivery:
    subject = contracts.subject_of(message)
    return Delivery(subject=subject, message=message, num_delivered=1, traceparent="00-tp",
                    msg_id=msg_id or contracts.message_id(subject, message.order_id))  # fmt: skip


def created(order_id: str, *lines: tuple[str, int]) -> Delivery:
    items = tuple(LineItem(product_id=p, quantity=q, unit_price=100) for p, q in lines)
    total = sum(q * 100 for _, q in lines)
    return delivery(OrderCreated(order_id=order_id, customer_id="c-1", items=items,
                                 total_amount=total, currency="usd"))  # fmt: skip


def release(order_id: str, reservation_id: str | None = None, reason: str = "timeout") -> Delivery:
    return delivery(ReleaseInventory(order_id=order_id, reservation_id=reservation_id,
                                     reason=reason))  # fmt: skip


def confirmed(order_id: str) -> Delivery:
    return delivery(OrderConfirmed(order_id=order_id, payment_id="pay-1", timestamp="t"))


async def set_stock(pool: asyncpg.Pool, **levels: int) -> None:
    async with pool.acquire() as conn:
        for product, available in levels.items():
            await store.set_available(conn, product, available)


async def levels(pool: asyncpg.Pool, product: str) -> tuple[int, int, int]:
    async with pool.acquire() as conn:
        level = await store.get_stock(conn, product)
    assert level is not None
    return level.available, level.reserved, level.sold


async def emitted(pool: asyncpg.Pool) -> list[contracts.AnyMessage]:
    rows = await pool.fetch("SELECT subject, payload FROM outbox ORDER BY id")
    return [contracts.decode(r["subject"], r["payload"]) for r in rows]


async def test_order_reserves_every_item_and_emits_reserved(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5, b=3)
    order = created("o-1", ("a", 2), ("b", 3))
    assert await handlers.reserve([order]) == 0
    assert await levels(pool, "a") == (3, 2, 0)
    assert await levels(pool, "b") == (0, 3, 0)
    [event] = await emitted(pool)
    assert isinstance(event, InventoryReserved)
    assert event.reservation_id == str(reservation_id_for("o-1"))
    assert event.items == order.message.items  # type: ignore[union-attr]
    assert event.expires_at == "2030-01-01T00:15:00.000Z"
    row = await pool.fetchrow("SELECT causation_id, traceparent FROM outbox")
    assert (row["causation_id"], row["traceparent"]) == (order.msg_id, "00-tp")


async def test_order_short_of_any_item_reserves_nothing_and_names_each_missing_item(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5, b=1)
    await handlers.reserve([created("o-1", ("a", 2), ("b", 3), ("unknown", 1))])
    assert await levels(pool, "a") == (5, 0, 0)
    assert await levels(pool, "b") == (1, 0, 0)
    assert await emitted(pool) == [
        InventoryOutOfStock(order_id="o-1", unavailable_items=(
            UnavailableItem(product_id="b", requested=3, available=1),
            UnavailableItem(product_id="unknown", requested=1, available=0),
        ))
    ]  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM reservations") == 0


async def test_a_product_listed_twice_is_reserved_as_its_sum(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=3)
    await handlers.reserve([created("o-1", ("a", 2), ("a", 2)), created("o-2", ("a", 1), ("a", 2))])
    first, second = await emitted(pool)
    assert first == InventoryOutOfStock(
        order_id="o-1",
        unavailable_items=(UnavailableItem(product_id="a", requested=4, available=3),),
    )
    assert isinstance(second, InventoryReserved)
    assert await levels(pool, "a") == (0, 3, 0)


async def test_duplicate_deliveries_change_no_stock_and_are_answered_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    order = created("o-1", ("a", 2))
    assert await handlers.reserve([order, order]) == 1  # one answer for the two copies
    assert await handlers.reserve([order]) == 1
    replayed = created("o-1", ("a", 2))  # a dead-letter replay: same order, fresh Nats-Msg-Id
    assert await handlers.reserve([delivery(replayed.message, msg_id="replay-1")]) == 1
    assert await levels(pool, "a") == (3, 2, 0)
    assert await handlers.release([release("o-1")]) == 0
    assert await handlers.release([release("o-1")]) == 1
    assert await levels(pool, "a") == (5, 0, 0)
    assert [type(m) for m in await emitted(pool)] == [InventoryReserved] * 3 + [
        InventoryReleased
    ] * 2


async def test_release_returns_reserved_stock_and_emits_released(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5, b=2)
    await handlers.reserve([created("o-1", ("a", 2), ("b", 2))])
    rid = str(reservation_id_for("o-1"))
    await handlers.release([release("o-1", rid, reason="payment_failed")])
    assert await levels(pool, "a") == (5, 0, 0)
    assert await levels(pool, "b") == (2, 0, 0)
    assert (await emitted(pool))[-1] == InventoryReleased(
        order_id="o-1", reservation_id=rid, reason="payment_failed"
    )


async def test_release_before_the_order_arrives_leaves_a_tombstone_so_it_never_reserves(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.release([release("o-1")])
    await handlers.reserve([created("o-1", ("a", 1))])
    assert await levels(pool, "a") == (5, 0, 0)
    assert await emitted(pool) == [
        InventoryReleased(order_id="o-1", reservation_id=None, reason="timeout")
    ]


async def test_confirm_moves_reserved_stock_to_sold_and_emits_nothing(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    assert await handlers.confirm([confirmed("o-1")]) == 0
    assert await levels(pool, "a") == (3, 0, 2)
    assert len(await emitted(pool)) == 1  # the reservation only


async def test_release_request_for_a_confirmed_order_never_unsells_stock(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await handlers.confirm([confirmed("o-1")])
    await handlers.release([release("o-1")])
    assert await levels(pool, "a") == (3, 0, 2)
    assert len(await emitted(pool)) == 1


async def test_confirm_after_expiry_sells_from_available_stock(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    assert await expire_due(outbox.unstaged(pool), T0 + timedelta(seconds=TTL_S + 1)) == 1
    await handlers.confirm([confirmed("o-1")])
    assert await levels(pool, "a") == (3, 0, 2)


async def test_confirm_after_expiry_without_enough_stock_is_a_permanent_error(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=2)
    await handlers.reserve([created("o-1", ("a", 2))])
    await expire_due(outbox.unstaged(pool), T0 + timedelta(seconds=TTL_S + 1))
    await handlers.reserve([created("o-2", ("a", 1))])
    with pytest.raises(PermanentError, match="o-1"):
        await handlers.confirm([confirmed("o-1")])
    with pytest.raises(PermanentError, match="never reserved"):
        await handlers.confirm([confirmed("o-unknown")])
    assert await levels(pool, "a") == (1, 1, 0)


async def test_expired_reservations_are_released_with_reason_expired(
    pool: asyncpg.Pool, handlers: Handlers, bus: NATS
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2)), created("o-2", ("a", 1))])
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    clock = [T0 + timedelta(seconds=TTL_S - 1)]
    expiry = Expiry(pool, relay.transaction, 1.0, clock=lambda: clock[0])
    assert await expiry.sweep() == 0
    await expiry.housekeeping()
    assert RESERVATIONS_ACTIVE._value.get() == 2
    clock[0] = T0 + timedelta(seconds=TTL_S + 1)
    assert await expiry.sweep() == 2
    assert await expiry.sweep() == 0
    await expiry.housekeeping()
    assert RESERVATIONS_ACTIVE._value.get() == 0
    assert await relay.publish_ready() == 2  # handed to the relay on commit, once
    assert await levels(pool, "a") == (5, 0, 0)
    released = (await emitted(pool))[2:]
    assert sorted((m.order_id, m.reason) for m in released) == [  # type: ignore[union-attr]
        ("o-1", "expired"),
        ("o-2", "expired"),
    ]
    await handlers.release([release("o-1")])  # the saga's own release, later: nothing new
    assert len(await emitted(pool)) == 4


async def test_concurrent_sweeps_release_each_reservation_once(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=100)
    await handlers.reserve([created(f"o-{i}", ("a", 1)) for i in range(40)])
    later = T0 + timedelta(seconds=TTL_S + 1)
    counts = await asyncio.gather(
        *(expire_due(outbox.unstaged(pool), later, limit=7) for _ in range(6))
    )
    while await expire_due(outbox.unstaged(pool), later, limit=7):
        pass
    assert sum(counts) <= 40
    assert await levels(pool, "a") == (100, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                               contracts.INVENTORY_RELEASED) == 40  # fmt: skip


class PausedBeforeWriting:
    """A connection whose writes (`fetchval`) wait until `go` is set: a batch of new orders
    read, decided, and not written yet."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.decided, self.go = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetchval(self, *args: Any) -> Any:
        self.decided.set()
        await self.go.wait()
        return await self._conn.fetchval(*args)


@asynccontextmanager
async def paused_batch(
    pool: asyncpg.Pool,
    handle: Callable[[Handlers], Awaitable[int]],
    pause: type[PausedBeforeWriting] = PausedBeforeWriting,
) -> AsyncIterator[tuple[PausedBeforeWriting, asyncio.Task[int]]]:
    """A batch handled on a connection that pauses it, read and decided, before it writes
    until `go`."""
    async with pool.acquire() as conn:
        paused = pause(conn)

        @asynccontextmanager
        async def statements() -> AsyncIterator[Any]:
            yield paused

        handlers = Handlers(pool, TTL_S, clock=lambda: T0, statements=statements)
        task = asyncio.create_task(handle(handlers))
        try:
            await paused.decided.wait()
            yield paused, task
        finally:
            task.cancel()  # a no-op once the test awaited it


def reserving_paused(
    pool: asyncpg.Pool, order: Delivery
) -> AbstractAsyncContextManager[tuple[PausedBeforeWriting, asyncio.Task[int]]]:
    """A batch of one new order, read and decided, paused before it writes until `go`."""
    return paused_batch(pool, lambda handlers: handlers.reserve([order]))


async def test_a_release_that_overtakes_a_reservation_in_flight_makes_the_batch_retry(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    # read with no row for o-1, reserving it
    async with reserving_paused(pool, created("o-1", ("a", 1))) as (paused, task):
        await handlers.release([release("o-1")])  # commits its tombstone meanwhile
        paused.go.set()
        with pytest.raises(TransientError, match="reservation row appeared"):
            await task
    # The loop's retry finds the tombstone: the order changes nothing, as a duplicate.
    assert await handlers.reserve([created("o-1", ("a", 1))]) == 1
    assert await levels(pool, "a") == (5, 0, 0)
    assert [type(m) for m in await emitted(pool)] == [InventoryReleased]


async def test_a_batch_decided_on_stock_that_fell_meanwhile_is_decided_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    # read 5 available, reserving 4
    async with reserving_paused(pool, created("o-1", ("a", 4))) as (paused, task):
        await set_stock(pool, a=2)  # an operator sets the stock lower meanwhile
        paused.decided.clear()
        paused.go.set()
        assert await task == 0
    assert await levels(pool, "a") == (2, 0, 0)
    [answer] = await emitted(pool)
    assert isinstance(answer, InventoryOutOfStock)
    assert answer.unavailable_items[0].available == 2  # decided again, on the stock as it is


async def test_a_release_that_meets_a_reservation_in_flight_waits_for_it_and_releases_it(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    written, committing = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def held_open() -> AsyncIterator[asyncpg.Connection]:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
            written.set()  # the reservation is written, and not committed yet
            await committing.wait()

    reserving = Handlers(pool, TTL_S, clock=lambda: T0, statements=held_open)
    reserve = asyncio.create_task(reserving.reserve([created("o-1", ("a", 2))]))
    await written.wait()
    releasing = asyncio.create_task(handlers.release([release("o-1", reason="payment_failed")]))
    await wait_until(
        lambda: pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ),
        message="the release's tombstone waits on the reservation in flight",
    )
    committing.set()
    assert await reserve == 0
    assert await releasing == 0
    assert await levels(pool, "a") == (5, 0, 0)
    assert (await emitted(pool))[-1] == InventoryReleased(
        order_id="o-1", reservation_id=str(reservation_id_for("o-1")), reason="payment_failed"
    )


class PausedBeforeSecondFetch(PausedBeforeWriting):
    """The same for a batch whose read and write are both `fetch`: a batch of release
    requests, read and decided."""

    fetches = 0

    async def fetch(self, *args: Any) -> Any:
        self.fetches += 1
        if self.fetches == 2:
            self.decided.set()
            await self.go.wait()
        return await self._conn.fetch(*args)


@pytest.mark.parametrize("meanwhile", ["expired", "confirmed"])
async def test_a_release_decided_on_a_reservation_that_changed_meanwhile_is_decided_again(
    pool: asyncpg.Pool, handlers: Handlers, meanwhile: str
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    releasing = paused_batch(
        pool,
        lambda handlers: handlers.release([release("o-1", reason="payment_failed")]),
        PausedBeforeSecondFetch,
    )
    async with releasing as (paused, task):  # read as reserved: decided to release it
        if meanwhile == "expired":
            assert await expire_due(outbox.unstaged(pool), T0 + timedelta(seconds=TTL_S + 1))
        else:
            await handlers.confirm([confirmed("o-1")])
        paused.go.set()
        assert await task == 0
    # Given back or sold once, and answered only by the expiry's own release.
    assert await levels(pool, "a") == ((5, 0, 0) if meanwhile == "expired" else (3, 0, 2))
    assert [type(m) for m in await emitted(pool)] == [InventoryReserved] + (
        [InventoryReleased] if meanwhile == "expired" else []
    )
    assert await pool.fetchval("SELECT reason FROM reservations") == (
        "expired" if meanwhile == "expired" else None
    )


@pytest.mark.parametrize("round_", range(10))
async def test_two_orders_racing_for_the_last_unit_one_gets_it(
    pool: asyncpg.Pool, handlers: Handlers, round_: int
) -> None:
    await set_stock(pool, a=1, b=5)
    first = created("o-1", ("b", 1), ("a", 1))
    second = created("o-2", ("a", 1), ("b", 1))
    await asyncio.gather(handlers.reserve([first]), handlers.reserve([second]))
    outcomes = sorted(type(m).__name__ for m in await emitted(pool))
    assert outcomes == ["InventoryOutOfStock", "InventoryReserved"]
    assert await levels(pool, "a") == (0, 1, 0)
    assert await levels(pool, "b") == (4, 1, 0)


async def assert_conserved(pool: asyncpg.Pool, stock: dict[str, int]) -> None:
    """Totals are what PUT set; `reserved` and `sold` are what the reservations hold."""
    rows = await pool.fetch(
        "SELECT s.product_id, s.available, s.reserved, s.sold,"
        " coalesce(sum(i.quantity) FILTER (WHERE r.status = 'reserved'), 0) AS held,"
        " coalesce(sum(i.quantity) FILTER (WHERE r.status = 'confirmed'), 0) AS sold_by_orders"
        " FROM stock s LEFT JOIN reservation_items i USING (product_id)"
        " LEFT JOIN reservations r USING (order_id) GROUP BY s.product_id"
    )
    for row in rows:
        assert row["available"] + row["reserved"] + row["sold"] == stock[row["product_id"]]
        assert (row["reserved"], row["sold"]) == (row["held"], row["sold_by_orders"])


async def test_stock_is_conserved_through_concurrent_reserve_release_confirm_and_expiry(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    rng = random.Random(7)
    stock = {f"p{i}": 150 for i in range(5)}
    await set_stock(pool, **stock)
    orders = [
        created(f"o-{n}", *((f"p{rng.randrange(5)}", rng.randint(1, 5)) for _ in range(3)))
        for n in range(160)
    ]
    # Four concurrent batches over the same products, listed in random orders; two of them
    # reserve a day later, so that the expiry sweep below leaves their reservations alone.
    late = Handlers(pool, TTL_S, clock=lambda: T0 + timedelta(days=1))
    await asyncio.gather(*(h.reserve(orders[k::4]) for k, h in enumerate([handlers, late] * 2)))
    await assert_conserved(pool, stock)
    late_ids = {d.message.order_id for d in orders[1::4] + orders[3::4]}
    reserved = [
        m.order_id
        for m in await emitted(pool)
        if isinstance(m, InventoryReserved) and m.order_id in late_ids
    ]
    # How many late orders win stock depends on how the four batches interleave.
    assert reserved, "no late order got stock: nothing left to release or confirm"
    rng.shuffle(reserved)
    half = len(reserved) // 2
    to_release, to_confirm = reserved[:half], reserved[half:]
    later = T0 + timedelta(seconds=TTL_S + 1)
    results = await asyncio.gather(
        handlers.release([release(o) for o in to_release[::2]]),
        handlers.release([release(o) for o in to_release[1::2]]),
        handlers.confirm([confirmed(o) for o in to_confirm[::2]]),
        handlers.confirm([confirmed(o) for o in to_confirm[1::2]]),
        expire_due(outbox.unstaged(pool), later, limit=10),
        expire_due(outbox.unstaged(pool), later, limit=10),
    )
    assert list(results[:4]) == [0, 0, 0, 0]
    await assert_conserved(pool, stock)
    while await expire_due(outbox.unstaged(pool), later):
        pass
    await assert_conserved(pool, stock)
    assert await pool.fetchval("SELECT sum(reserved) FROM stock") == 0
    assert await pool.fetchval("SELECT sum(sold) FROM stock") > 0


async def test_an_order_without_items_is_reserved_and_confirmed_holding_nothing(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await handlers.reserve([created("o-1")])
    await handlers.confirm([confirmed("o-1")])
    [event] = await emitted(pool)
    assert isinstance(event, InventoryReserved) and event.items == ()
    assert await pool.fetchval("SELECT status FROM reservations") == "confirmed"


# --- a message applied before is answered again from its row ---------------------------


async def outbox_rows(pool: asyncpg.Pool) -> list[tuple[str, str, contracts.AnyMessage]]:
    """(Nats-Msg-Id, Causation-Id, message) of every outbox row, in order."""
    rows = await pool.fetch("SELECT subject, msg_id, causation_id, payload FROM outbox ORDER BY id")
    return [
        (r["msg_id"], r["causation_id"], contracts.decode(r["subject"], r["payload"])) for r in rows
    ]


async def test_a_release_request_applied_before_is_answered_released_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await handlers.release([release("o-1", reason="payment_failed")])
    resent = delivery(release("o-1", reason="payment_failed").message, msg_id="resent-1")
    assert await handlers.release([resent]) == 1  # still a duplicate for the consumer loop
    assert await levels(pool, "a") == (5, 0, 0)
    _, first, again = await outbox_rows(pool)
    assert (
        first[2]
        == again[2]
        == InventoryReleased(
            order_id="o-1", reservation_id=str(reservation_id_for("o-1")), reason="payment_failed"
        )
    )
    assert first[0] == again[0] == contracts.message_id(contracts.INVENTORY_RELEASED, "o-1")
    assert again[1] == "resent-1"  # caused by the duplicate delivery


async def test_a_release_request_that_left_a_tombstone_is_answered_nothing_held_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await handlers.release([release("o-1", reason="timeout")])
    assert await handlers.release([release("o-1", reason="timeout")]) == 1
    assert (
        await emitted(pool)
        == [InventoryReleased(order_id="o-1", reservation_id=None, reason="timeout")] * 2
    )


async def test_a_release_request_applied_after_expiry_is_answered_with_the_expiry(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await expire_due(outbox.unstaged(pool), T0 + timedelta(seconds=TTL_S + 1))
    await handlers.release([release("o-1")])  # released before: nothing new
    assert await handlers.release([release("o-1")]) == 1  # re-sent: the expiry, said again
    _, expired, again = await outbox_rows(pool)
    assert expired[0] == again[0] and expired[2] == again[2]
    assert isinstance(again[2], InventoryReleased) and again[2].reason == "expired"
    assert await levels(pool, "a") == (5, 0, 0)


async def test_a_release_request_for_a_confirmed_order_is_never_answered_and_is_logged_error(
    pool: asyncpg.Pool, handlers: Handlers, caplog: pytest.LogCaptureFixture
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await handlers.confirm([confirmed("o-1")])
    await handlers.release([release("o-1")])  # the first time, as today: nothing, an error
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inventory_service.handlers"):
        assert await handlers.release([release("o-1")]) == 1
    assert [type(m) for m in await emitted(pool)] == [InventoryReserved]
    assert await levels(pool, "a") == (3, 0, 2)
    [record] = caplog.records
    assert (record.levelno, vars(record)["outcome"]) == (logging.ERROR, "confirmed_not_released")


async def test_an_order_applied_before_is_answered_reserved_again_and_stock_is_conserved(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    stock = {"a": 5, "b": 4}
    await set_stock(pool, **stock)
    order = created("o-1", ("a", 2), ("b", 1), ("a", 1))
    await handlers.reserve([order])
    later = Handlers(pool, TTL_S, clock=lambda: T0 + timedelta(hours=1))  # expiry stays put
    again = delivery(order.message, msg_id="redelivered")
    assert await later.reserve([again, created("o-2", ("b", 1))]) == 1
    assert await levels(pool, "a") == (2, 3, 0)
    assert await levels(pool, "b") == (2, 2, 0)
    await assert_conserved(pool, stock)
    first, repeated, _ = await outbox_rows(pool)
    assert first[0] == repeated[0] == contracts.message_id(contracts.INVENTORY_RESERVED, "o-1")
    assert first[2] == repeated[2]  # same id, lines and expiry as the first answer
    assert repeated[1] == "redelivered"


async def test_an_order_sold_since_is_answered_reserved_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await handlers.confirm([confirmed("o-1")])
    assert await handlers.reserve([created("o-1", ("a", 2))]) == 1
    first, again = await emitted(pool)
    assert first == again and isinstance(again, InventoryReserved)
    assert await levels(pool, "a") == (3, 0, 2)


async def test_an_order_out_of_stock_or_released_is_not_answered_again(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=1)
    await handlers.reserve([created("o-short", ("a", 2)), created("o-1", ("a", 1))])
    await handlers.release([release("o-1")])
    await handlers.release([release("o-never")])
    await handlers.reserve([created("o-never", ("a", 1))])  # its release came first
    before = await emitted(pool)
    duplicates = [created("o-short", ("a", 2)), created("o-1", ("a", 1)),
                  created("o-never", ("a", 1))]  # fmt: skip
    assert await handlers.reserve(duplicates) == 3
    assert await emitted(pool) == before
    assert await levels(pool, "a") == (1, 0, 0)


async def test_only_a_refused_order_claims_an_inbox_key_and_stays_refused_once_stock_is_back(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=1)
    assert await handlers.reserve([created("o-short", ("a", 2)), created("o-1", ("a", 1))]) == 0
    keys = await pool.fetch("SELECT consumer, msg_key FROM processed_messages")
    assert [tuple(k) for k in keys] == [
        ("inventory-service", contracts.message_id(contracts.ORDERS_CREATED, "o-short"))
    ]  # the reserved order's row says it was applied
    await set_stock(pool, a=5)
    before = await emitted(pool)
    assert await handlers.reserve([created("o-short", ("a", 2)), created("o-1", ("a", 1))]) == 2
    assert await levels(pool, "a") == (5, 1, 0)  # o-short still refused, o-1 not twice
    assert [type(m) for m in await emitted(pool)] == [type(m) for m in before] + [
        InventoryReserved  # o-1 answered again from its row; o-short had nothing held
    ]


async def test_a_reanswer_is_logged_at_info_with_its_order_subject_and_durable(
    pool: asyncpg.Pool, handlers: Handlers, caplog: pytest.LogCaptureFixture
) -> None:
    await handlers.release([release("o-1")])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inventory_service.handlers"):
        await handlers.release([release("o-1")])
    [record] = caplog.records
    fields = {k: vars(record)[k] for k in ("orderId", "subject", "durable", "outcome")}
    assert record.levelno == logging.INFO
    assert fields == {
        "orderId": "o-1",
        "subject": contracts.INVENTORY_RELEASE_REQUEST,
        "durable": "inventory-service-release",
        "outcome": "re-answered",
    }


async def test_confirm_duplicates_have_nothing_to_answer(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    await set_stock(pool, a=5)
    await handlers.reserve([created("o-1", ("a", 2))])
    await handlers.confirm([confirmed("o-1")])
    assert await handlers.confirm([confirmed("o-1")]) == 1
    assert len(await emitted(pool)) == 1
    assert await levels(pool, "a") == (3, 0, 2)


async def test_copies_of_a_confirmation_sell_once_without_an_inbox_key(
    pool: asyncpg.Pool, handlers: Handlers
) -> None:
    """In one batch, in batches at once, and after a release (sold from available): the
    reservation's own status is what makes a copy change nothing."""
    await set_stock(pool, a=9)
    await handlers.reserve([created("o-1", ("a", 2)), created("o-2", ("a", 3))])
    assert await handlers.confirm([confirmed("o-1"), confirmed("o-1")]) == 1
    await handlers.release([release("o-2")])
    copies = await asyncio.gather(*(handlers.confirm([confirmed("o-2")]) for _ in range(4)))
    assert sorted(copies) == [0, 1, 1, 1]
    assert await handlers.confirm([confirmed("o-1"), confirmed("o-2")]) == 2
    assert await levels(pool, "a") == (4, 0, 5)
    assert await pool.fetchval("SELECT count(*) FROM processed_messages WHERE consumer = $1",
                               "inventory-service-confirm") == 0  # fmt: skip
