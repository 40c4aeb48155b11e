"""The inventory worker through its real entry point, on a nats-server and a PostgreSQL of
its own: the HTTP API, and each consumer and the expiry sweep answering over JetStream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import config, contracts, setup
from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from tests.support.services import ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


class Worker(msgspec.Struct):
    url: str
    nc: NATS
    http: aiohttp.ClientSession
    seen: dict[str, list[contracts.AnyMessage]]  # subject -> messages seen on the bus


@pytest.fixture
async def worker(
    make_nats: Callable[[], NatsServer],
    make_postgres: Callable[[], PostgresServer],
    worker_logs: Path,
) -> AsyncIterator[Worker]:
    bus, pg = make_nats(), make_postgres()
    env = {
        **{"NATS_URL": bus.url, "DATABASE_URL": pg.url, "LOG_FORMAT": "text"},
        **{"SAGA_TIMEOUT_S": "1", "RESERVATION_TTL_S": "1.5", "SWEEP_INTERVAL_S": "0.1"},
    }
    await setup.apply(config.load(env), out=lambda _: None)
    nc = await nats.connect(bus.url)
    seen: dict[str, list[contracts.AnyMessage]] = {}

    async def collect(msg: Msg) -> None:
        seen.setdefault(msg.subject, []).append(contracts.decode(msg.subject, msg.data))

    await nc.subscribe("inventory.*", cb=collect)
    process = await ServiceProcess("inventory", env, worker_logs).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            yield Worker(process.url, nc, http, seen)
    finally:
        await process.stop()
        await nc.close()
        bus.stop()
        pg.stop()


async def call(w: Worker, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    async with w.http.request(method, w.url + path, data=body) as resp:
        return resp.status, await resp.json()


async def publish(w: Worker, message: contracts.AnyMessage) -> None:
    subject = contracts.subject_of(message)
    headers = {contracts.MSG_ID: contracts.message_id(subject, message.order_id),
               contracts.SAGA_ID: message.order_id}  # fmt: skip
    await w.nc.jetstream().publish(subject, contracts.encode(message), headers=headers)


async def on_bus(w: Worker, subject: str, count: int = 1) -> list[contracts.AnyMessage]:
    """The messages seen on `subject`, once there are at least `count`."""
    await wait_until(lambda: len(w.seen.get(subject, ())) >= count, message=f"{count} {subject}")
    return w.seen[subject]


def created(order_id: str, product: str, quantity: int) -> contracts.OrderCreated:
    item = contracts.LineItem(product_id=product, quantity=quantity, unit_price=100)
    return contracts.OrderCreated(order_id=order_id, customer_id="c", items=(item,),
                                  total_amount=100 * quantity, currency="usd")  # fmt: skip


async def test_stock_api_sets_and_reads_stock_and_refuses_bad_requests(worker: Worker) -> None:
    assert await call(worker, "PUT", "/inventory/sku-1", b'{"available": 7}') == (
        200, {"productId": "sku-1", "available": 7, "reserved": 0, "sold": 0}
    )  # fmt: skip
    assert (await call(worker, "GET", "/inventory/sku-1"))[1]["available"] == 7
    assert (await call(worker, "GET", "/inventory/sku-none"))[0] == 404
    assert (await call(worker, "PUT", "/inventory/sku-1", b"{oops"))[0] == 400
    status, body = await call(worker, "PUT", "/inventory/sku-1", b'{"available": -2}')
    assert status == 422 and "available" in body["fields"]


async def test_orders_are_reserved_short_orders_reported_and_expired_stock_returned(
    worker: Worker,
) -> None:
    product, ok, short = f"sku-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), str(uuid.uuid4())
    await call(worker, "PUT", f"/inventory/{product}", b'{"available": 3}')
    await publish(worker, created(ok, product, 2))
    await publish(worker, created(short, product, 2))
    [reserved] = await on_bus(worker, contracts.INVENTORY_RESERVED)
    [missing] = await on_bus(worker, contracts.INVENTORY_OUT_OF_STOCK)
    assert {reserved.order_id, missing.order_id} == {ok, short}
    # RESERVATION_TTL_S is 1.5 s here: the sweep releases it and says why.
    [released] = await on_bus(worker, contracts.INVENTORY_RELEASED)
    assert released == contracts.InventoryReleased(
        order_id=reserved.order_id,
        reservation_id=reserved.reservation_id,  # type: ignore[union-attr]
        reason="expired",
    )
    assert (await call(worker, "GET", f"/inventory/{product}"))[1]["available"] == 3
    async with worker.http.get(worker.url + "/metrics") as resp:
        assert "inventory_reservations_active 0.0" in await resp.text()


async def test_release_of_an_unknown_order_answers_that_nothing_was_held(worker: Worker) -> None:
    order_id = str(uuid.uuid4())
    await publish(worker, contracts.ReleaseInventory(order_id=order_id, reason="timeout"))
    [released] = await on_bus(worker, contracts.INVENTORY_RELEASED)
    assert released == contracts.InventoryReleased(
        order_id=order_id, reservation_id=None, reason="timeout"
    )


async def test_confirmed_order_sells_its_stock(worker: Worker) -> None:
    product, order_id = f"sku-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    await call(worker, "PUT", f"/inventory/{product}", b'{"available": 3}')
    await publish(worker, created(order_id, product, 2))
    await on_bus(worker, contracts.INVENTORY_RESERVED)
    await publish(
        worker, contracts.OrderConfirmed(order_id=order_id, payment_id="p", timestamp="t")
    )

    async def sold() -> bool:
        _, level = await call(worker, "GET", f"/inventory/{product}")
        return bool(level == {"productId": product, "available": 1, "reserved": 0, "sold": 2})

    await wait_until(sold, message="stock sold")  # type: ignore[arg-type]  # async check
