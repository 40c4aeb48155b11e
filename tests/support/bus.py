"""Helpers of the messaging tests: a nats-server of the test's own with the streams set up,
a database of its own, and small publish/consume helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from jetsaga import config, contracts, db, setup
from jetsaga.consumer import Consumer, Delivery
from jetsaga.contracts import ConsumerSpec
from jetsaga.deadletter import DeadLetters
from jetsaga.devstack.nats import NatsServer
from jetsaga.dlq import letters
from tests.support.databases import fresh_pool


@pytest.fixture
async def bus(make_nats: Callable[[], NatsServer]) -> AsyncIterator[NATS]:
    """A nats-server of its own with the streams and consumers set up."""
    server = make_nats()
    await setup.apply(config.Settings(nats_url=server.url), out=lambda _: None)
    nc = await nats.connect(server.url)
    yield nc
    await nc.close()
    server.stop()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_pool(database_url, "t", [db.SHARED_MIGRATIONS], 4) as p:
        yield p


def created(order_id: str) -> contracts.OrderCreated:
    item = contracts.LineItem(product_id="p", quantity=1, unit_price=100)
    return contracts.OrderCreated(order_id=order_id, customer_id="c", items=(item,),
                                  total_amount=100, currency="usd")  # fmt: skip


async def publish(nc: NATS, message: contracts.OrderCreated, msg_id: str | None = None) -> None:
    subject = contracts.subject_of(message)
    headers = {contracts.MSG_ID: msg_id or contracts.message_id(subject, message.order_id),
               contracts.SAGA_ID: message.order_id}  # fmt: skip
    await nc.jetstream().publish(subject, contracts.encode(message), headers=headers)


async def run_consumer(
    nc: NATS, handler: Callable[[Sequence[Delivery]], object], spec: ConsumerSpec | None = None
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    js = nc.jetstream()
    consumer = Consumer(nc, spec or contracts.CONSUMERS_BY_DURABLE["inventory-service"],
                        handler, DeadLetters(js).from_msg, batch=10,  # type: ignore[arg-type]
                        retry_delay=lambda n: 0.1)  # fmt: skip
    return stop, asyncio.create_task(consumer.run(stop))


async def dead_letters(nc: NATS) -> list[contracts.DeadLetter]:
    return [letter async for _, letter in letters(nc.jetstream())]


def delivery(order_id: str, num: int = 1) -> Delivery:
    return Delivery(subject="orders.created", message=created(order_id), msg_id="m",
                    num_delivered=num)  # fmt: skip
