"""Timeouts and outages end to end (issue 3): each test runs a system on servers of its own,
so it can stop and restart them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import aiohttp
import pytest

from jetsaga.devstack.procs import free_port
from jetsaga.devstack.stripe import LocalStripe
from tests.conftest import MakeSystem
from tests.support.api import Api, order_body
from tests.support.services import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def api_of(system: System, http: aiohttp.ClientSession) -> Api:
    return Api(http, system.order_url, system.inventory_url, system.payment_url)


async def ready(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url + "/readyz") as r:
            return r.status
    except aiohttp.ClientError:
        return 0


async def test_payment_timeout_cancels_the_order_and_nothing_is_charged_later(
    make_system: MakeSystem, http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The gateway is down: the payment never completes, the saga times out, compensates,
    and when the gateway returns the held payment request charges nothing."""
    where = tmp_path_factory.mktemp("stripe")
    gateway = LocalStripe(port=free_port(), store_path=where / "store", log_path=where / "log")
    system = await make_system(
        STRIPE_API_BASE=gateway.api_base, PAYMENT_TIMEOUT_S="2", SAGA_TIMEOUT_S="30",
        SWEEP_INTERVAL_S="0.2",
    )  # fmt: skip
    api = api_of(system, http)
    await api.set_stock("sku-t", 5)
    order_id = await api.place(order_body("sku-t", 2))

    order = await api.wait_final(order_id, within=30)

    assert order["status"] == "CANCELLED" and order["reason"] == "timeout"
    events = [h["event"] for h in order["history"]]
    assert events.index("payments.refunded") < events.index("inventory.released")
    assert await api.stock("sku-t") == {"productId": "sku-t", "available": 5, "reserved": 0,
                                        "sold": 0}  # fmt: skip
    try:
        gateway.start()
        payment = await wait_until(
            lambda: _settled_payment(api, order_id), timeout=30, message="payment settled"
        )
        assert payment["status"] in ("voided", "refunded", "failed")
        assert (await api.order(order_id) or {})["status"] == "CANCELLED"
    finally:
        gateway.stop()


async def _settled_payment(api: Api, order_id: str) -> dict[str, object] | None:
    payment = await api.payment(order_id)
    return payment if payment and payment["status"] != "processing" else None


async def test_workers_are_not_ready_while_nats_is_away_and_recover(
    make_system: MakeSystem, http: aiohttp.ClientSession
) -> None:
    system = await make_system(PAYMENT_GATEWAY="fake")
    urls = [system.order_url, system.inventory_url, system.payment_url]
    nats = system.owns[0]

    nats.stop()
    for url in urls:
        await wait_until(lambda u=url: _is(ready(http, u), 503), message=f"{url} not ready")
    nats.start()
    for url in urls:
        await wait_until(lambda u=url: _is(ready(http, u), 200), timeout=20,
                         message=f"{url} ready again")  # fmt: skip

    api = api_of(system, http)
    await api.set_stock("sku-n", 3)
    order = await api.wait_final(await api.place(order_body("sku-n")))
    assert order["status"] == "CONFIRMED"


async def test_workers_ride_out_a_postgres_restart(
    make_system: MakeSystem, http: aiohttp.ClientSession
) -> None:
    system = await make_system(PAYMENT_GATEWAY="fake")
    api = api_of(system, http)
    await api.set_stock("sku-p", 10)
    before = await api.place(order_body("sku-p"))
    await api.wait_final(before)
    postgres = system.owns[1]

    postgres.kill()
    await wait_until(lambda: _is(ready(http, system.order_url), 503), message="not ready")
    status, payload, headers = await api.post_order(order_body("sku-p"))
    assert (status, headers.get("Retry-After")) == (503, "1"), payload
    postgres.start()
    await wait_until(lambda: _is(ready(http, system.order_url), 200), timeout=20,
                     message="ready again")  # fmt: skip

    after = await api.place(order_body("sku-p", 2))
    assert (await api.wait_final(after))["status"] == "CONFIRMED"
    assert (await api.order(before) or {})["status"] == "CONFIRMED"
    await api.wait_stock("sku-p", available=7, reserved=0, sold=3)


async def test_order_placed_while_inventory_is_down_completes_when_it_returns(
    make_system: MakeSystem, http: aiohttp.ClientSession
) -> None:
    system = await make_system(PAYMENT_GATEWAY="fake")
    api = api_of(system, http)
    await api.set_stock("sku-d", 4)
    inventory = system.worker("inventory")
    inventory.kill()

    order_id = await api.place(order_body("sku-d"))
    assert (await api.order(order_id) or {})["sagaStatus"] == "STARTED"
    await inventory.start()

    assert (await api.wait_final(order_id))["status"] == "CONFIRMED"


async def _is(status: Awaitable[int], want: int) -> bool:
    return await status == want
