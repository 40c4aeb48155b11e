"""The standing pull against a real nats-server: credit, expiry, restarts and hand-back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import config, setup
from jetsaga.consumer import Delivery
from jetsaga.devstack.nats import NatsServer
from jetsaga.puller import StandingPull
from tests.support.bus import created, publish, run_consumer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

STREAM, DURABLE = "ORDERS", "inventory-service"


async def publish_many(nc: NATS, n: int, prefix: str = "o") -> None:
    for i in range(n):
        await publish(nc, created(f"{prefix}-{i:03}"))


def ack_pending_is(nc: NATS, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await nc.jsm().consumer_info(STREAM, DURABLE)).num_ack_pending == n

    return check


async def take_all(pull: StandingPull, n: int, limit: int) -> list[list[Msg]]:
    batches: list[list[Msg]] = []

    async def more() -> bool:
        batch = await pull.take(limit, wait_s=0.2)
        if batch:
            batches.append(batch)
            for msg in batch:
                await msg.ack()
        return sum(map(len, batches)) >= n

    await wait_until(more, message=f"{n} messages taken")
    return batches


async def test_takes_what_arrived_in_order_and_never_more_than_the_limit(bus: NATS) -> None:
    await publish_many(bus, 25)
    pull = StandingPull(bus, STREAM, DURABLE, credit=10)
    await pull.start()

    batches = await take_all(pull, 25, limit=4)

    assert all(1 <= len(b) <= 4 for b in batches)
    seqs = [m.metadata.sequence.stream for b in batches for m in b]
    assert seqs == list(range(1, 26))
    await wait_until(ack_pending_is(bus, 0), message="all acked")
    assert await pull.stop() == []


async def test_holds_no_more_than_its_credit_ahead_of_the_handler(bus: NATS) -> None:
    await publish_many(bus, 100)
    pull = StandingPull(bus, STREAM, DURABLE, credit=10)
    await pull.start()
    first = await pull.take(4, wait_s=5.0)  # the first arrivals; the rest are on the way
    assert first
    await wait_until(ack_pending_is(bus, 10), message="the credit delivered")
    await bus.flush()
    assert await ack_pending_is(bus, 10)()  # 4 in hand + 6 buffered: no top-up yet

    await pull.take(2, wait_s=1.0)  # buffer 4 of 10: now it asks for 6 more
    await wait_until(ack_pending_is(bus, 16), message="topped up")
    info = await bus.jsm().consumer_info(STREAM, DURABLE)
    assert info.num_pending == 84
    left = await pull.stop()
    assert len(left) == 10  # delivered, never taken: the caller hands them back


async def test_asks_again_once_its_request_expired(bus: NATS) -> None:
    pull = StandingPull(bus, STREAM, DURABLE, credit=5, expires_s=0.3)
    await pull.start()
    assert await pull.take(5, wait_s=0.05) == []

    async def expired() -> bool:
        return (await bus.jsm().consumer_info(STREAM, DURABLE)).num_waiting == 0

    await wait_until(expired, message="the request expired")
    await wait_until(lambda: pull.outstanding == 0, message="the expiry counted")
    await publish(bus, created("late"))

    batches = await take_all(pull, 1, limit=5)
    assert batches[0][0].metadata.sequence.stream == 1
    await pull.stop()


async def test_carries_on_after_the_server_is_killed_and_restarted(
    make_nats: Callable[[], NatsServer],
) -> None:
    """A killed server forgets pull requests without a word; the pull asks again after a
    silence as long as a request lives."""
    server = make_nats()
    await setup.apply(config.Settings(nats_url=server.url), out=lambda _: None)
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    pull = StandingPull(nc, STREAM, DURABLE, credit=5, expires_s=1.0)
    await pull.start()
    assert await pull.take(5, wait_s=0.05) == []
    assert pull.outstanding == 5

    server.kill()  # a graceful stop would tell the pull its requests were cancelled
    server.start()
    await wait_until(lambda: nc.is_connected, message="reconnected")

    async def published() -> bool:
        await publish(nc, created("after"))
        return True

    await wait_until(published, ignore=(nats.errors.Error, TimeoutError), message="published")

    async def taken() -> list[Msg]:
        return await pull.take(5, wait_s=0.2)

    batch = await wait_until(taken, timeout=15, message="delivered after the restart")
    assert [m.metadata.sequence.stream for m in batch] == [1]
    await pull.stop()
    await nc.close()
    server.stop()


async def test_a_stopping_loop_hands_its_unhandled_messages_back_at_once(bus: NATS) -> None:
    """Messages delivered to a loop that stops are redelivered now, not after the ack wait."""
    release = asyncio.Event()
    seen: list[tuple[str, int]] = []

    async def blocking(batch: Sequence[Delivery]) -> int:
        seen.extend((d.message.order_id, d.num_delivered) for d in batch)
        await release.wait()
        return 0

    stop, task = await run_consumer(bus, blocking)
    await publish(bus, created("first"))
    await wait_until(lambda: seen, message="the first batch in the handler")
    await publish_many(bus, 3, prefix="queued")
    await wait_until(ack_pending_is(bus, 4), message="queued behind it")
    stop.set()
    release.set()
    await task

    seen.clear()
    stop, task = await run_consumer(bus, blocking)
    await wait_until(lambda: len(seen) == 3, message="redelivered")  # well inside the 30 s ack wait
    assert sorted(seen) == [(f"queued-{i:03}", 2) for i in range(3)]
    stop.set()
    await task
