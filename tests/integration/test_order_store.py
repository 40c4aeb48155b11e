"""The order service's store and group-commit intake against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from jetsaga import contracts, db
from jetsaga.config import Settings
from jetsaga.consumer import Delivery
from jetsaga.outbox import OutboxRelay, outgoing
from order_service import handlers, main, store
from order_service.cache import SagaCache
from order_service.intake import IntakeWriter
from order_service.saga import Context, SagaStatus, Timeout, start
from tests.support.bus import bus
from tests.support.databases import fresh_pool
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)
__all__ = ["bus"]  # the shared fixture, imported above


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_pool(database_url, "o", [db.SHARED_MIGRATIONS, main.MIGRATIONS], 8) as p:
        yield p


def new_order(order_id: str | None = None, key: str | None = None, qty: int = 1) -> store.NewOrder:
    order = contracts.OrderCreated(
        order_id=order_id or str(uuid.uuid4()), customer_id="c",
        items=(contracts.LineItem(product_id="p", quantity=qty, unit_price=500),),
        total_amount=500 * qty, currency="usd",
    )  # fmt: skip
    first = start(order, "pm_card_visa", time.time(), 300.0)
    return store.NewOrder(order=order, idempotency_key=key, request_hash=f"h{qty}",
                          first=first, created=outgoing(order))  # fmt: skip


async def stored_order(pool: asyncpg.Pool) -> store.NewOrder:
    """A new order, created as intake creates it (with its saga STARTED)."""
    order = new_order()
    async with pool.acquire() as conn:
        await store.create_orders(conn, [order])
    return order


def delivery_of(event: contracts.AnyMessage) -> Delivery:
    subject = contracts.subject_of(event)
    return Delivery(subject, event, contracts.message_id(subject, event.order_id), 1)


def reserved_for(order: store.NewOrder) -> contracts.InventoryReserved:
    return contracts.InventoryReserved(order_id=order.order.order_id, reservation_id="r-1",
                                       items=order.order.items, expires_at="x")  # fmt: skip


async def apply(pool: asyncpg.Pool, order_id: str, *events: contracts.AnyMessage) -> None:
    """Each event as the coordinator applies it: read, decide, save."""
    ctx = Context(now=time.time(), payment_timeout_s=60)
    for event in events:
        async with pool.acquire() as conn:
            sagas = await store.read(conn, [order_id])
            changes, out, _ = handlers.decide(sagas, [(event, "m", None)], ctx)
            assert await store.save(conn, changes, ctx.now, out) == {order_id}


async def confirm(pool: asyncpg.Pool, order: contracts.OrderCreated) -> None:
    """Reserved, then paid: the saga COMPLETED, the order CONFIRMED."""
    await apply(
        pool, order.order_id,
        contracts.InventoryReserved(order_id=order.order_id, reservation_id="r",
                                    items=order.items, expires_at="x"),
        contracts.PaymentSucceeded(order_id=order.order_id, payment_id="p",
                                   amount=order.total_amount, stripe_payment_intent_id="pi"),
    )  # fmt: skip


async def fail(pool: asyncpg.Pool, order: contracts.OrderCreated) -> None:
    """Out of stock: the saga and the order FAILED."""
    await apply(pool, order.order_id, contracts.InventoryOutOfStock(
        order_id=order.order_id, unavailable_items=()))  # fmt: skip


async def test_a_group_writes_order_saga_history_count_and_outbox_together(
    pool: asyncpg.Pool,
) -> None:
    group = [new_order() for _ in range(5)]
    async with pool.acquire() as conn:
        created = await store.create_orders(conn, group)
        counts = await store.saga_stats(conn, 300)
        outbox_rows = await conn.fetch("SELECT subject, msg_id, saga_id FROM outbox")
        view = await store.get_order(conn, group[0].order.order_id)
    assert set(created) == {n.order.order_id for n in group}
    assert counts.status_counts == {"PENDING": 5} and counts.in_flight == 5
    assert sorted(r["saga_id"] for r in outbox_rows) == sorted(created)
    assert sorted(created.values()) == sorted(
        await pool.fetchval("SELECT array_agg(id) FROM outbox")
    )
    assert {r["subject"] for r in outbox_rows} == {"orders.created"}
    assert view is not None and view.saga_status == "STARTED" and len(view.history) == 1


async def test_an_existing_id_or_key_is_not_created_again(pool: asyncpg.Pool) -> None:
    first = new_order(key="k-1")
    async with pool.acquire() as conn:
        assert set(await store.create_orders(conn, [first])) == {first.order.order_id}
        again = await store.create_orders(
            conn, [new_order(first.order.order_id), new_order(key="k-1")]
        )
        existing = await store.find_existing(conn, str(uuid.uuid4()), "k-1")
        outbox_count = await conn.fetchval("SELECT count(*) FROM outbox")
    assert again == {}
    assert existing is not None and existing.order_id == first.order.order_id
    assert outbox_count == 1


async def test_concurrent_requests_for_one_key_create_one_order(pool: asyncpg.Pool) -> None:
    writer = IntakeWriter(pool, writers=3)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    same = new_order(key="racing")
    others = [new_order() for _ in range(50)]

    results = await asyncio.gather(*(writer.create(n) for n in [same, same, same, *others]))

    assert sorted(results[:3]) == [False, False, True]
    assert all(results[3:])
    assert await pool.fetchval("SELECT count(*) FROM orders") == 51
    stop.set()
    await task


async def test_saved_transitions_append_history_and_end_the_order(pool: asyncpg.Pool) -> None:
    order = await stored_order(pool)
    order_id = order.order.order_id
    reserved = contracts.InventoryReserved(order_id=order_id, reservation_id="r-1",
                                           items=order.order.items, expires_at="x")  # fmt: skip
    failed = contracts.PaymentFailed(order_id=order_id, reason="card_declined", timestamp="x")
    released = contracts.InventoryReleased(order_id=order_id, reservation_id="r-1", reason="x")
    ctx = Context(now=time.time(), payment_timeout_s=60)
    for event in (reserved, failed, released):
        async with pool.acquire() as conn:
            sagas = await store.read(conn, [order_id, order_id])
            assert list(sagas) == [order_id]
            changes, out, moved = handlers.decide(sagas, [(event, "m", None)], ctx)
            assert moved == {"m"}
            assert await store.save(conn, changes, ctx.now, out) == {order_id}
            # The same event again, on the saga as written, changes nothing.
            again = handlers.decide(await store.read(conn, [order_id]), [(event, "m", None)], ctx)
            assert again == ([], [], set())
    async with pool.acquire() as conn:
        view = await store.get_order(conn, order_id)
        stats = await store.saga_stats(conn, 300)
        rows = await conn.fetch("SELECT subject FROM outbox ORDER BY id")
    subjects = [r["subject"] for r in rows]
    assert subjects == [
        "orders.created", "payments.process_request", "inventory.release_request",
        "orders.cancelled",
    ]  # fmt: skip
    assert view is not None and view.status == "CANCELLED" and view.saga_status == "COMPENSATED"
    assert [h.saga_status for h in view.history] == [
        "STARTED", "INVENTORY_RESERVED", "PAYMENT_PROCESSING", "COMPENSATING", "COMPENSATING",
        "COMPENSATED",
    ]  # fmt: skip
    assert stats.status_counts == {"PENDING": 0, "CANCELLED": 1}
    assert stats.compensations_recent == 1 and stats.compensated_recent == 1
    assert stats.ended_recent == 1 and stats.completed_recent == 0


async def test_ended_sagas_are_counted_by_the_second_they_ended(pool: asyncpg.Pool) -> None:
    orders = [(await stored_order(pool)).order for _ in range(3)]
    for order in orders[:2]:
        await confirm(pool, order)
    await fail(pool, orders[2])
    async with pool.acquire() as conn:
        await conn.execute(  # ended ten minutes ago: outside the window, then pruned
            "INSERT INTO saga_ends VALUES (floor(extract(epoch FROM now()))::bigint - 600,"
            " 'CONFIRMED', 0, 7)"
        )
        stats = await store.saga_stats(conn, 300)
        assert (stats.ended_recent, stats.completed_recent) == (3, 2)
        assert (await store.saga_stats(conn, 900)).ended_recent == 10
        await store.prune_saga_ends(conn, 300)
        assert (await store.saga_stats(conn, 900)).ended_recent == 3
        ends = await conn.fetch("SELECT status, sum(n) AS n FROM saga_ends GROUP BY status")
    assert {r["status"]: r["n"] for r in ends} == {"CONFIRMED": 2, "FAILED": 1}


async def test_orders_listed_by_status_come_from_their_sagas_newest_first(
    pool: asyncpg.Pool,
) -> None:
    orders = [(await stored_order(pool)).order for _ in range(8)]
    for order in orders[:3]:
        await confirm(pool, order)
    for order in orders[3:5]:
        await fail(pool, order)
    newest_first = [o.order_id for o in reversed(orders)]
    expected = {
        "CONFIRMED": [i for i in newest_first if i in {o.order_id for o in orders[:3]}],
        "FAILED": [i for i in newest_first if i in {o.order_id for o in orders[3:5]}],
        "PENDING": [i for i in newest_first if i in {o.order_id for o in orders[5:]}],
        "CANCELLED": [],
        None: newest_first,
    }
    async with pool.acquire() as conn:
        for status, ids in expected.items():
            seen: list[str] = []
            after = None
            while True:  # pages of two, each after the last order of the one before
                page = await store.list_orders(conn, None, status, 2, after)
                assert all(v.status == status for v in page) or status is None
                seen += [v.order_id for v in page]
                if len(page) < 2:
                    break
                at = await store.created_at_of(conn, page[-1].order_id)
                assert at is not None
                after = (at, page[-1].order_id)
            assert seen == ids, status
        assert [v.order_id for v in await store.list_orders(conn, "c", "FAILED", 5, None)] == (
            expected["FAILED"]
        )
        assert await store.list_orders(conn, "someone else", "FAILED", 5, None) == []


@pytest.mark.parametrize(
    ("status", "index"),
    [("PENDING", "sagas_in_flight"), ("CONFIRMED", "sagas_ended_newest"),
     ("FAILED", "sagas_ended_newest")],
)  # fmt: skip
async def test_orders_of_one_status_are_read_through_an_index_of_that_status(
    pool: asyncpg.Pool, status: str, index: str
) -> None:
    """Not by reading every order newest first until the page is full: a status that few
    orders have would read them all."""
    async with pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")  # the tables are nearly empty here
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN " + store._LIST_BY_STATUS[status], None, None, None, 50
            )
        )
    assert index in plan, plan


async def test_a_saga_stored_as_json_before_is_read_advanced_and_stored_compact(
    pool: asyncpg.Pool,
) -> None:
    order = await stored_order(pool)
    order_id = order.order.order_id
    async with pool.acquire() as conn:
        compact = await conn.fetchval("SELECT state FROM sagas WHERE order_id = $1", order_id)
        assert compact[:1] != b"{" and len(compact) < 200
        # the state as the order service wrote it before it stored MessagePack
        legacy = msgspec.json.encode(msgspec.structs.asdict(order.first.saga))
        await conn.execute("UPDATE sagas SET state = $2 WHERE order_id = $1", order_id, legacy)
        sagas = await store.read(conn, [order_id])
        assert sagas[order_id].saga == order.first.saga
        view = await store.get_order(conn, order_id)
        assert view is not None and view.saga_status == "STARTED"
        reserved = contracts.InventoryReserved(order_id=order_id, reservation_id="r-1",
                                               items=order.order.items, expires_at="x")  # fmt: skip
        ctx = Context(now=time.time(), payment_timeout_s=60)
        changes, out, _ = handlers.decide(sagas, [(reserved, "m", None)], ctx)
        assert await store.save(conn, changes, ctx.now, out) == {order_id}
        state = await conn.fetchval("SELECT state FROM sagas WHERE order_id = $1", order_id)
        sagas = await store.read(conn, [order_id])
    assert state[:1] != b"{"
    assert sagas[order_id].saga.status is SagaStatus.PAYMENT_PROCESSING
    assert sagas[order_id].saga.reservation_id == "r-1"


async def test_due_sagas_are_swept_once_even_by_two_sweepers(pool: asyncpg.Pool) -> None:
    group = [new_order() for _ in range(20)]
    async with pool.acquire() as conn:
        await store.create_orders(conn, group)
        await conn.execute("UPDATE sagas SET deadline = now() - interval '1 second'")

    async def sweep() -> int:
        later = time.time() + 301  # past every saga deadline
        async with pool.acquire() as conn, conn.transaction():
            locked = await store.lock_due_sagas(conn, later, 100)
            events = [(Timeout(i), f"timeout:{i}", None) for i in locked]
            changes, _, _ = handlers.decide(locked, events, Context(later, 60))
            await store.save(conn, changes, later)
            return len(changes)

    assert sum(await asyncio.gather(sweep(), sweep())) == 20
    async with pool.acquire() as conn:
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM sagas")}
        due = await store.lock_due_sagas(conn, time.time() + 301, 100)
    assert statuses == {SagaStatus.COMPENSATING.value} and due == {}


async def test_an_event_whose_saga_changed_under_it_is_decided_again_from_the_new_state(
    pool: asyncpg.Pool, bus: NATS
) -> None:
    order = await stored_order(pool)
    order_id = order.order.order_id
    coordinator = handlers.Coordinator(pool, Settings(), OutboxRelay(pool, bus.jetstream()))
    handle = coordinator.handle
    event = delivery_of(reserved_for(order))
    later = time.time() + 301  # past the saga's deadline
    async with pool.acquire() as sweeper:
        timeout = sweeper.transaction()
        await timeout.start()  # the timeout of the saga, written and not committed yet
        sagas = await store.read(sweeper, [order_id])
        changes, out, _ = handlers.decide(
            sagas, [(Timeout(order_id), "t", None)], Context(later, 60)
        )
        assert await store.save(sweeper, changes, later, out) == {order_id}
        handling = asyncio.create_task(handle([event]))  # read the saga STARTED
        await wait_until(
            lambda: pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ),
            message="the handler's write waits for the timeout's",
        )
        await timeout.commit()
    assert await handling == 0
    async with pool.acquire() as conn:
        view = await store.get_order(conn, order_id)
        subjects = [r["subject"] for r in await conn.fetch("SELECT subject FROM outbox")]
    assert view is not None and view.saga_status == "COMPENSATING"
    assert view.reservation_id == "r-1"  # noted on the saga as it is now, not paid for
    assert [h.detail for h in view.history][-1] == "reserved after compensation began"
    assert contracts.PAYMENTS_PROCESS_REQUEST not in subjects


@pytest.mark.parametrize("cached", [False, True], ids=["read", "both-cached"])
async def test_replicas_handling_the_same_events_at_once_apply_each_once(
    pool: asyncpg.Pool, bus: NATS, cached: bool
) -> None:
    group = [new_order() for _ in range(30)]
    async with pool.acquire() as conn:
        await store.create_orders(conn, group)
    relay = OutboxRelay(pool, bus.jetstream())
    caches = [SagaCache() for _ in range(2)]
    for cache in caches if cached else []:  # each replica believes it started every saga
        for order in group:
            cache.put(store.StoredSaga(order.first.saga, store.FIRST_STEPS))
    replicas = [handlers.Coordinator(pool, Settings(), relay, cache).handle for cache in caches]
    events = []
    for order in group:
        reserved = contracts.InventoryReserved(order_id=order.order.order_id, reservation_id="r",
                                               items=order.order.items, expires_at="x")  # fmt: skip
        subject = contracts.subject_of(reserved)
        events.append(
            Delivery(subject, reserved, contracts.message_id(subject, reserved.order_id), 1)
        )
    # The same batch to both, and again in reverse order: every event is applied by one.
    duplicates = await asyncio.gather(replicas[0](events), replicas[1](events[::-1]))
    assert sum(duplicates) == len(events)
    async with pool.acquire() as conn:
        sagas = await conn.fetch("SELECT status, steps FROM sagas")
        history = await conn.fetchval("SELECT count(*) FROM saga_history")
        requests = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE subject = $1", contracts.PAYMENTS_PROCESS_REQUEST
        )
    assert {(r["status"], r["steps"]) for r in sagas} == {("PAYMENT_PROCESSING", 3)}
    assert history == 3 * len(group) and requests == len(group)


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    read = store.read

    async def counted(conn: asyncpg.Connection, *args: object) -> object:
        reads.append(1)
        return await read(conn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "read", counted)
    return reads


async def test_sagas_this_worker_started_and_advanced_are_not_read_back(
    pool: asyncpg.Pool, bus: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SagaCache()
    relay = OutboxRelay(pool, bus.jetstream())
    writer = IntakeWriter(pool, relay, cache=cache)
    stop = asyncio.Event()
    task = asyncio.create_task(writer.run(stop))
    order = new_order()
    order_id = order.order.order_id
    assert await writer.create(order)
    stop.set()
    await task
    coordinator = handlers.Coordinator(pool, Settings(), relay, cache)
    reads = counting_reads(monkeypatch)
    succeeded = contracts.PaymentSucceeded(order_id=order_id, payment_id="p-1", amount=500,
                                           stripe_payment_intent_id="pi_1")  # fmt: skip

    assert await coordinator.handle([delivery_of(reserved_for(order))]) == 0
    assert await coordinator.handle([delivery_of(succeeded)]) == 0

    assert reads == []  # each batch was one statement
    assert cache.get(order_id) is None  # ended: not kept
    async with pool.acquire() as conn:
        view = await store.get_order(conn, order_id)
        subjects = [r["subject"] for r in await conn.fetch("SELECT subject FROM outbox")]
    assert view is not None and view.status == "CONFIRMED" and view.saga_status == "COMPLETED"
    assert subjects == ["orders.created", "payments.process_request", "orders.confirmed"]
    # A late redelivery of the first event finds no entry: read, and changes nothing.
    assert await coordinator.handle([delivery_of(reserved_for(order))]) == 1
    assert reads == [1]


async def test_a_message_another_replica_applied_is_not_applied_again_from_a_stale_cache(
    pool: asyncpg.Pool, bus: NATS
) -> None:
    # This worker's cache still holds the saga STARTED, so the event would move it again.
    # The write refuses the stale entry, and the round after it reads the saga, on which
    # the event changes nothing.
    order = await stored_order(pool)
    order_id = order.order.order_id
    relay = OutboxRelay(pool, bus.jetstream())
    event = delivery_of(reserved_for(order))
    assert await handlers.Coordinator(pool, Settings(), relay).handle([event]) == 0
    cache = SagaCache()
    cache.put(store.StoredSaga(order.first.saga, store.FIRST_STEPS))
    coordinator = handlers.Coordinator(pool, Settings(), relay, cache)

    assert await coordinator.handle([event]) == 1  # a duplicate

    async with pool.acquire() as conn:
        view = await store.get_order(conn, order_id)
        subjects = [r["subject"] for r in await conn.fetch("SELECT subject FROM outbox")]
    assert view is not None and view.saga_status == "PAYMENT_PROCESSING"
    assert len(view.history) == 3
    assert subjects == ["orders.created", "payments.process_request"]
    assert cache.get(order_id) is None  # not written: forgotten until read again


async def test_a_cache_behind_the_database_costs_a_round_not_a_wrong_write(
    pool: asyncpg.Pool, bus: NATS
) -> None:
    order = await stored_order(pool)
    order_id = order.order.order_id
    relay = OutboxRelay(pool, bus.jetstream())
    ahead = handlers.Coordinator(pool, Settings(), relay)  # another replica
    assert await ahead.handle([delivery_of(reserved_for(order))]) == 0
    behind = SagaCache()
    behind.put(store.StoredSaga(order.first.saga, store.FIRST_STEPS))  # still STARTED here
    failed = contracts.PaymentFailed(order_id=order_id, reason="card_declined", timestamp="x")
    coordinator = handlers.Coordinator(pool, Settings(), relay, behind)

    assert await coordinator.handle([delivery_of(failed)]) == 0

    async with pool.acquire() as conn:
        view = await store.get_order(conn, order_id)
    assert view is not None and view.saga_status == "COMPENSATING"  # from PAYMENT_PROCESSING
    assert [h.saga_status for h in view.history][-1] == "COMPENSATING"
    entry = behind.get(order_id)
    assert entry is not None and entry.steps == len(view.history)
