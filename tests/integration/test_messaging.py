"""The shared messaging machinery against a real nats-server and PostgreSQL: the consumer
loop's ack policy and dead letters, the outbox relay and the inbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import config, contracts, deadletter, inbox, natsclient, outbox, setup
from jetsaga.consumer import Delivery, TransientError
from jetsaga.contracts import ConsumerSpec
from jetsaga.deadletter import DeadLetters
from jetsaga.devstack.nats import NatsServer
from tests.support.bus import created, dead_letters, delivery, publish, run_consumer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


async def test_undecodable_message_is_dead_lettered_and_the_worker_carries_on(bus: NATS) -> None:
    seen: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        seen.extend(d.message.order_id for d in batch)
        return 0

    stop, task = await run_consumer(bus, handler)
    await bus.jetstream().publish("orders.created", b"{not json", headers={"Nats-Msg-Id": "bad-1"})
    await publish(bus, created("good-1"))

    await wait_until(lambda: seen == ["good-1"], message="good message handled")
    letters_ = await wait_until(lambda: dead_letters(bus), message="a dead letter")
    assert letters_[0].subject == "orders.created" and letters_[0].payload == b"{not json"
    assert letters_[0].durable == "inventory-service" and "undecodable" in letters_[0].last_error
    stop.set()
    await task


async def test_message_failing_every_delivery_is_dead_lettered_on_the_last(bus: NATS) -> None:
    deliveries: list[int] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        deliveries.extend(d.num_delivered for d in batch)
        raise ValueError("handler bug")

    stop, task = await run_consumer(bus, handler)
    await publish(bus, created("doomed"))

    found = await wait_until(lambda: dead_letters(bus), message="dead letter after 3 deliveries")
    assert deliveries == [1, 2, 3]
    assert found[0].delivery_count == 3 and "handler bug" in found[0].last_error
    assert found[0].headers[contracts.SAGA_ID] == "doomed"
    stop.set()
    await task


async def test_dependency_outage_holds_the_batch_without_spending_deliveries(bus: NATS) -> None:
    calls: list[int] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        calls.append(batch[0].num_delivered)
        if len(calls) < 4:
            raise TransientError("database away")
        return 0

    stop, task = await run_consumer(bus, handler)
    await publish(bus, created("held"))

    await wait_until(lambda: len(calls) == 4, message="handled after the outage")
    assert calls == [1, 1, 1, 1]
    assert await dead_letters(bus) == []
    stop.set()
    await task


async def test_a_paced_consumer_takes_a_lone_message_at_once_and_gathers_the_next_ones(
    bus: NATS,
) -> None:
    batches: list[list[str]] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        batches.append([d.message.order_id for d in batch])
        return 0

    # Paced long enough that the five publishes below land well inside one pause.
    spec = msgspec.structs.replace(contracts.CONSUMERS_BY_DURABLE["inventory-service"], pace_s=5.0)
    stop, task = await run_consumer(bus, handler, spec)
    await publish(bus, created("first"))
    await wait_until(lambda: batches == [["first"]], message="the first message, on its own")
    for i in range(5):
        await publish(bus, created(f"next-{i}"))
        assert len(batches) == 1  # no batch starts inside the pause

    await wait_until(lambda: len(batches) == 2, timeout=15, message="the batch after the pause")
    assert batches[1] == [f"next-{i}" for i in range(5)]
    stop.set()
    await asyncio.wait_for(task, 2)  # told to stop, it does not sit out its 5 s pause


async def test_a_relief_handles_what_arrives_while_its_loop_holds_a_batch(bus: NATS) -> None:
    away = True  # the held order's dependency
    attempts: list[str] = []
    handled: list[str] = []

    async def handler(batch: Sequence[Delivery]) -> int:
        ids = [d.message.order_id for d in batch]
        attempts.extend(ids)
        if away and "held" in ids:
            raise TransientError("gateway away")
        handled.extend(ids)
        return 0

    spec = msgspec.structs.replace(contracts.CONSUMERS_BY_DURABLE["inventory-service"], relief=True)
    stop, task = await run_consumer(bus, handler, spec)
    await publish(bus, created("held"))
    await wait_until(lambda: attempts.count("held") >= 2, message="the batch held and retried")
    await publish(bus, created("later"))

    await wait_until(lambda: handled == ["later"], message="the relief handled what came later")
    away = False
    await wait_until(lambda: handled == ["later", "held"], message="the held batch, once back")
    stop.set()
    await task


async def test_a_batch_held_past_its_ack_wait_is_not_redelivered(bus: NATS) -> None:
    """The heartbeat: a handler slower than the ack wait keeps its messages."""
    spec = ConsumerSpec(durable="slow", stream="ORDERS", filter_subjects=("orders.created",),
                        ack_wait_s=2.0)  # fmt: skip
    await setup.ensure_consumer(bus.jsm(), spec, out=lambda _: None)
    calls: list[int] = []
    release = asyncio.Event()
    beats: list[bytes] = []

    async def on_ack_subject(msg: Msg) -> None:  # a copy of what the consumer tells the server
        beats.append(msg.data)

    await bus.subscribe("$JS.ACK.ORDERS.slow.>", cb=on_ack_subject)

    async def handler(batch: Sequence[Delivery]) -> int:
        calls.extend(d.num_delivered for d in batch)
        await release.wait()  # a handler that takes several ack waits
        return 0

    stop, task = await run_consumer(bus, handler, spec)
    await publish(bus, created("slow-1"))
    await wait_until(lambda: calls == [1], message="the message taken")
    # Three beats, a second apart from a second in: past the 2 s ack wait.
    await wait_until(lambda: beats.count(b"+WPI") >= 3, message="three heartbeats")
    info = await bus.jsm().consumer_info("ORDERS", "slow")
    assert info.num_redelivered == 0 and info.num_ack_pending == 1
    release.set()

    async def acked() -> bool:
        return (await bus.jsm().consumer_info("ORDERS", "slow")).num_ack_pending == 0

    await wait_until(acked, message="acked once released")
    assert calls == [1]
    stop.set()
    await task


async def test_worker_dying_on_every_delivery_reaches_the_dead_letters_by_advisory(
    bus: NATS,
) -> None:
    """Deliveries that end in ack timeouts leave only JetStream's advisory behind."""
    spec = ConsumerSpec(durable="fragile", stream="ORDERS", filter_subjects=("orders.created",),
                        ack_wait_s=0.3)  # fmt: skip
    await setup.ensure_consumer(bus.jsm(), spec, out=lambda _: None)
    stop = asyncio.Event()
    letters_writer = DeadLetters(bus.jetstream())
    watcher = asyncio.create_task(
        deadletter.watch_advisories(bus.jetstream(), letters_writer, stop)
    )
    await publish(bus, created("orphan"))
    sub = await bus.jetstream().pull_subscribe_bind("fragile", stream="ORDERS")

    async def fetch_and_die() -> bool:  # a worker that takes the message and never acks
        try:
            await sub.fetch(1, timeout=0.5)
        except nats.errors.TimeoutError:
            pass
        return bool([x for x in await dead_letters(bus) if x.durable == "fragile"])

    await wait_until(fetch_and_die, timeout=20, message="advisory turned into a dead letter")
    found = [x for x in await dead_letters(bus) if x.durable == "fragile"]
    assert len(found) == 1 and found[0].subject == "orders.created"
    assert found[0].delivery_count == 3 and "ack timeouts" in found[0].last_error
    assert contracts.decode("orders.created", found[0].payload) == created("orphan")
    stop.set()
    await watcher


async def test_relay_publishes_with_message_ids_and_a_republish_is_dropped(
    bus: NATS, pool: asyncpg.Pool
) -> None:
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    message = outbox.outgoing(created("relayed"), causation_id="cause-1")
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, [message])
    # A relay that crashed after publishing and before deleting leaves the row behind:
    await bus.jetstream().publish(message.subject, message.payload,
                                  headers={contracts.MSG_ID: message.msg_id})  # fmt: skip

    assert await relay.publish_batch() == 1

    info = await bus.jsm().stream_info("ORDERS")
    assert info.state.messages == 1  # the second publish was dropped as a duplicate
    raw = await bus.jsm().get_msg("ORDERS", 1)
    assert raw.headers is not None and raw.headers[contracts.MSG_ID] == message.msg_id
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert await relay.publish_batch() == 0


async def test_relay_publishes_a_committed_transactions_rows_from_memory(
    bus: NATS, pool: asyncpg.Pool
) -> None:
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    first, second = outbox.outgoing(created("hot-1")), outbox.outgoing(created("hot-2"))
    async with relay.transaction() as conn:
        await outbox.enqueue(conn, [first])
        await outbox.enqueue(conn, [second])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2  # committed, not yet sent

    assert await relay.publish_ready() == 2  # no read of the table: from what was staged
    assert (await bus.jsm().stream_info("ORDERS")).state.messages == 2
    await relay.flush()  # deletes the published rows
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert (await bus.jsm().stream_info("ORDERS")).state.messages == 2
    assert await relay.publish_ready() == 0


async def test_relay_has_the_rows_before_their_connection_goes_back_to_the_pool(
    bus: NATS, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg releases a connection in a task of its own: rows handed over only after it
    # would wait a turn of the event loop before their publish could start.
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    current: list[asyncpg.Connection] = []
    held: list[bool] = []
    committed = relay.committed

    async def recording(staged: Sequence[outbox.Staged]) -> None:
        try:
            current[-1].is_closed()  # a released connection refuses every call
            held.append(True)
        except asyncpg.InterfaceError:
            held.append(False)
        await committed(staged)

    monkeypatch.setattr(relay, "committed", recording)
    async with relay.transaction() as conn:
        current.append(conn)
        await outbox.enqueue(conn, [outbox.outgoing(created("early-1"))])
    async with relay.statements() as conn:
        current.append(conn)
        await outbox.enqueue(conn, [outbox.outgoing(created("early-2"))])
    assert held == [True, True]
    assert await relay.publish_ready() == 2


async def test_a_commits_messages_are_on_the_wire_when_its_block_ends(
    make_nats: Callable[[], NatsServer], pool: asyncpg.Pool
) -> None:
    # Not a turn of the event loop later, from the relay's task and then nats-py's flusher:
    # in a busy worker each turn is a millisecond or more, on every hop of a saga.
    server = make_nats()
    await setup.apply(config.Settings(nats_url=server.url), out=lambda _: None)
    nc = await natsclient.connect(server.url)
    relay = outbox.OutboxRelay(pool, nc.jetstream())
    async with relay.transaction() as conn:
        await outbox.enqueue(conn, [outbox.outgoing(created("prompt-1"))])
    assert nc._pending_data_size == 0 and not nc._pending  # nothing left for the flusher
    async with relay.statements() as conn:
        await outbox.enqueue(conn, [outbox.outgoing(created("prompt-2"))])
        await outbox.enqueue(conn, [outbox.outgoing(created("prompt-3"))])
    assert nc._pending_data_size == 0 and not nc._pending

    async def stored() -> bool:
        return (await nc.jsm().stream_info("ORDERS")).state.messages == 3

    await wait_until(stored, message="published with no relay task running")
    assert await relay.publish_ready() == 3  # the acks, collected by the relay
    await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await nc.close()
    server.stop()


async def test_collecting_acks_ends_with_what_was_sent_when_it_began(
    bus: NATS, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under steady load commits keep coming while acks are collected; the relay's deletes
    # and its poll come after each collection, so it must not chase the newest commit.
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    settle = relay._publisher.settle
    more = iter(range(1))

    async def settle_and_commit_again(*args: Any) -> Any:
        acks = await settle(*args)
        if (n := next(more, None)) is not None:
            async with relay.transaction() as conn:
                await outbox.enqueue(conn, [outbox.outgoing(created(f"more-{n}"))])
        return acks

    monkeypatch.setattr(relay._publisher, "settle", settle_and_commit_again)
    async with relay.transaction() as conn:
        await outbox.enqueue(conn, [outbox.outgoing(created("first"))])
    assert await relay.publish_ready() == 1
    assert await relay.publish_ready() == 1  # the one committed during the first call
    await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_commit_on_a_closed_connection_keeps_its_rows_for_the_poll(
    make_nats: Callable[[], NatsServer], pool: asyncpg.Pool
) -> None:
    server, nc, relay = await relay_on_own_nats(make_nats, pool)
    await nc.close()
    async with relay.transaction() as conn:  # the commit stands, and nothing is raised
        await outbox.enqueue(conn, [outbox.outgoing(created("closed-1"))])
    assert await relay.publish_ready() == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    nc = await nats.connect(server.url)
    assert await outbox.OutboxRelay(pool, nc.jetstream()).publish_batch() == 1
    assert (await nc.jsm().stream_info("ORDERS")).state.messages == 1
    await nc.close()
    server.stop()


async def test_relay_stages_nothing_for_a_rolled_back_transaction(
    bus: NATS, pool: asyncpg.Pool
) -> None:
    relay = outbox.OutboxRelay(pool, bus.jetstream())
    with pytest.raises(RuntimeError):
        async with relay.transaction() as conn:
            await outbox.enqueue(conn, [outbox.outgoing(created("never"))])
            raise RuntimeError("crash before commit")
    assert await relay.publish_ready() == 0
    await relay.flush()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert (await bus.jsm().stream_info("ORDERS")).state.messages == 0


async def relay_on_own_nats(
    make_nats: Callable[[], NatsServer], pool: asyncpg.Pool
) -> tuple[NatsServer, NATS, outbox.OutboxRelay]:
    """A relay on a nats-server of its own (to stop and start), with a short publish timeout."""
    server = make_nats()
    await setup.apply(config.Settings(nats_url=server.url), out=lambda _: None)
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    return server, nc, outbox.OutboxRelay(pool, nc.jetstream(timeout=0.5))


async def test_rows_whose_publish_from_memory_failed_wait_for_the_backstop_poll(
    make_nats: Callable[[], NatsServer], pool: asyncpg.Pool
) -> None:
    server, nc, relay = await relay_on_own_nats(make_nats, pool)
    server.stop()
    async with relay.transaction() as conn:
        await outbox.enqueue(conn, [outbox.outgoing(created("kept"))])
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await relay.publish_ready()
    assert await relay.publish_ready() == 0  # given up from memory...
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # ...but kept in the table
    assert await relay.publish_batch(min_age_s=3600) == 0  # the poll takes only stale rows
    server.start()
    await wait_until(relay.publish_batch, timeout=15, ignore=(nats.errors.Error, TimeoutError),
                     message="published by the poll after NATS came back")  # fmt: skip
    assert (await nc.jsm().stream_info("ORDERS")).state.messages == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    await nc.close()
    server.stop()


async def test_outbox_rows_of_a_rolled_back_transaction_are_never_published(
    bus: NATS, pool: asyncpg.Pool
) -> None:
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, [outbox.outgoing(created("rolled-back"))])
            raise RuntimeError("crash before commit")
    assert await outbox.OutboxRelay(pool, bus.jetstream()).publish_batch() == 0


async def test_relay_keeps_rows_when_nats_is_away_and_publishes_them_later(
    make_nats: Callable[[], NatsServer], pool: asyncpg.Pool
) -> None:
    server, nc, relay = await relay_on_own_nats(make_nats, pool)
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, [outbox.outgoing(created("patient"))])
    server.stop()
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await relay.publish_batch()
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    server.start()
    await wait_until(relay.publish_batch, timeout=15, ignore=(nats.errors.Error, TimeoutError),
                     message="published after NATS came back")  # fmt: skip
    assert (await nc.jsm().stream_info("ORDERS")).state.messages == 1
    await nc.close()
    server.stop()


async def test_inbox_claims_each_logical_message_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await inbox.claim(conn, "c", [delivery("a"), delivery("b"), delivery("a", 2)])
        again = await inbox.claim(conn, "c", [delivery("a", 3), delivery("c")])
        other = await inbox.claim(conn, "other-consumer", [delivery("a")])
    assert [d.message.order_id for d in first] == ["a", "b"]
    assert [d.message.order_id for d in again] == ["c"]
    assert [d.message.order_id for d in other] == ["a"]


async def test_inbox_claim_rolls_back_with_its_transaction(pool: asyncpg.Pool) -> None:
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await inbox.claim(conn, "c", [delivery("x")])
            raise RuntimeError("effect failed")
    async with pool.acquire() as conn:
        assert len(await inbox.claim(conn, "c", [delivery("x")])) == 1


async def test_inbox_prune_forgets_only_keys_older_than_the_retention(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await inbox.claim(conn, "c", [delivery("old"), delivery("recent"), delivery("new")])
        # an hour past the retention, and an hour short of it
        await conn.execute(
            "UPDATE processed_messages SET processed_at = now() - make_interval(days => $1)"
            " + CASE WHEN msg_key LIKE '%old' THEN -interval '1 hour' ELSE interval '1 hour' END"
            " WHERE msg_key LIKE '%old' OR msg_key LIKE '%recent'",
            inbox.RETENTION_DAYS,
        )
        assert await inbox.prune(conn) == 1
        again = await inbox.claim(conn, "c", [delivery("old"), delivery("recent"), delivery("new")])
    assert [d.message.order_id for d in again] == ["old"]
