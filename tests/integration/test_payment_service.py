"""The payment worker through its real entry point (`jetsaga worker payment`) on its own
nats-server and PostgreSQL, paying through localstripe: commands in on JetStream, answers
out on JetStream, `GET /payments/{orderId}` and the payment metric."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import pytest
import stripe
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import config, contracts, setup
from jetsaga.contracts import (
    AnyMessage,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    ProcessPayment,
    RefundPayment,
)
from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.stripe import LocalStripe
from tests.support.services import ServiceProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@dataclass
class Worker:
    nc: NATS
    process: ServiceProcess
    seen: list[AnyMessage]
    http: aiohttp.ClientSession

    async def send(self, message: AnyMessage, msg_id: str | None = None) -> None:
        subject = contracts.subject_of(message)
        headers = {contracts.MSG_ID: msg_id or contracts.message_id(subject, message.order_id),
                   contracts.SAGA_ID: message.order_id}  # fmt: skip
        await self.nc.jetstream().publish(subject, contracts.encode(message), headers=headers)

    async def answer(self, order_id: str, kind: type[AnyMessage]) -> AnyMessage:
        def found() -> list[AnyMessage]:
            return [m for m in self.seen if m.order_id == order_id and type(m) is kind]

        matches = await wait_until(found, timeout=30, message=f"{kind.__name__} for {order_id}")
        return matches[0]

    async def payment(self, order_id: str) -> dict[str, object]:
        async with self.http.get(f"{self.process.url}/payments/{order_id}") as resp:
            assert resp.status == 200
            body: dict[str, object] = await resp.json()
            return body


@pytest.fixture(scope="module")
async def worker(
    make_nats: Callable[[], NatsServer],
    make_postgres: Callable[[], PostgresServer],
    stripe_api_base: str,
    worker_logs: Path,
) -> AsyncIterator[Worker]:
    bus, pg = make_nats(), make_postgres()
    await setup.apply(config.Settings(nats_url=bus.url), out=lambda _: None)
    env = {"NATS_URL": bus.url, "DATABASE_URL": pg.url, "STRIPE_API_BASE": stripe_api_base,
           "STRIPE_SECRET_KEY": "sk_test_jetsaga", "PAYMENT_GATEWAY": "stripe",
           "LOG_FORMAT": "text"}  # fmt: skip
    nc = await nats.connect(bus.url)
    seen: list[AnyMessage] = []

    async def collect(msg: Msg) -> None:
        seen.append(contracts.decode(msg.subject, msg.data))

    await nc.subscribe("payments.succeeded", cb=collect)
    await nc.subscribe("payments.failed", cb=collect)
    await nc.subscribe("payments.refunded", cb=collect)
    process = await ServiceProcess("payment", env, worker_logs).start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield Worker(nc, process, seen, http)
    await process.stop()
    await nc.close()
    bus.stop()
    pg.stop()


def charge(order_id: str, pm: str = "pm_card_visa") -> ProcessPayment:
    return ProcessPayment(order_id=order_id, customer_id="c-1", amount=4200, currency="eur",
                          payment_method=pm)  # fmt: skip


async def test_a_process_request_is_charged_and_answered(worker: Worker) -> None:
    order = str(uuid.uuid4())
    await worker.send(charge(order))
    answer = await worker.answer(order, PaymentSucceeded)
    assert isinstance(answer, PaymentSucceeded) and answer.amount == 4200
    record = await worker.payment(order)
    assert record["status"] == "succeeded"
    assert record["stripePaymentIntentId"] == answer.stripe_payment_intent_id
    assert "paymentMethod" not in record


async def test_a_replay_under_a_fresh_msg_id_is_answered_again_and_not_charged_again(
    worker: Worker,
) -> None:
    order = str(uuid.uuid4())
    await worker.send(charge(order))
    first = await worker.answer(order, PaymentSucceeded)
    before = await worker.payment(order)
    succeeded = await worker.nc.subscribe("payments.succeeded")
    await worker.send(charge(order), msg_id=f"replay-{uuid.uuid4()}")
    await worker.send(RefundPayment(order_id=order, reason="timeout"))  # a marker behind it
    await worker.answer(order, PaymentRefunded)
    after = await worker.payment(order)
    assert after["stripePaymentIntentId"] == before["stripePaymentIntentId"]
    assert [type(m) for m in worker.seen if m.order_id == order] == [
        PaymentSucceeded,
        PaymentSucceeded,  # the replay, a duplicate, answered again from the row
        PaymentRefunded,
    ]
    again = await succeeded.next_msg(timeout=5)
    assert contracts.decode(again.subject, again.data) == first
    # Under the first answer's Nats-Msg-Id: JetStream drops it inside the duplicate window.
    assert again.headers is not None
    assert again.headers[contracts.MSG_ID] == contracts.message_id(again.subject, order)
    await succeeded.unsubscribe()


async def test_a_declined_card_is_answered_failed(worker: Worker) -> None:
    order = str(uuid.uuid4())
    await worker.send(charge(order, "pm_card_chargeCustomerFail"))
    answer = await worker.answer(order, PaymentFailed)
    assert isinstance(answer, PaymentFailed) and answer.reason == "card_declined"
    assert (await worker.payment(order))["status"] == "failed"


async def test_a_refund_request_refunds_the_charge(worker: Worker) -> None:
    order = str(uuid.uuid4())
    await worker.send(charge(order))
    paid = await worker.answer(order, PaymentSucceeded)
    assert isinstance(paid, PaymentSucceeded)
    await worker.send(RefundPayment(order_id=order, payment_id=paid.payment_id, reason="x"))
    refunded = await worker.answer(order, PaymentRefunded)
    assert isinstance(refunded, PaymentRefunded) and refunded.refund_id
    assert (await worker.payment(order))["refundId"] == refunded.refund_id


async def test_unknown_orders_are_404_and_outcomes_are_counted(worker: Worker) -> None:
    async with worker.http.get(f"{worker.process.url}/payments/{uuid.uuid4()}") as resp:
        assert resp.status == 404
    async with worker.http.get(f"{worker.process.url}/metrics") as resp:
        text = await resp.text()
    for status in ("succeeded", "failed", "refunded"):
        assert f'payments_processed_total{{status="{status}"}}' in text


async def test_a_gateway_outage_holds_the_charge_until_the_gateway_is_back(
    make_nats: Callable[[], NatsServer],
    make_postgres: Callable[[], PostgresServer],
    tmp_path: Path,
    worker_logs: Path,
) -> None:
    bus, pg = make_nats(), make_postgres()
    gateway = LocalStripe(port=None, store_path=tmp_path / "stripe.pickle",
                          log_path=tmp_path / "localstripe.log")  # fmt: skip
    await gateway.astart()
    await setup.apply(config.Settings(nats_url=bus.url), out=lambda _: None)
    env = {"NATS_URL": bus.url, "DATABASE_URL": pg.url, "STRIPE_API_BASE": gateway.api_base,
           "STRIPE_SECRET_KEY": "sk_test_jetsaga", "LOG_FORMAT": "text"}  # fmt: skip
    nc = await nats.connect(bus.url)
    seen: list[AnyMessage] = []

    async def collect(msg: Msg) -> None:
        seen.append(contracts.decode(msg.subject, msg.data))

    await nc.subscribe("payments.*", cb=collect)
    process = await ServiceProcess("payment", env, worker_logs).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            worker, order = Worker(nc, process, seen, http), str(uuid.uuid4())
            await asyncio.to_thread(gateway.stop)
            await worker.send(charge(order))

            async def status() -> str:
                async with http.get(f"{process.url}/payments/{order}") as resp:
                    return str((await resp.json())["status"]) if resp.status == 200 else ""

            processing: str = await wait_until(status, timeout=30)
            assert processing == "processing"  # maybe charged: held, not failed
            # Past the SDK's own retries: the consumer loop holds the batch.
            await wait_until(lambda: "holding batch" in process.tail(), timeout=30)
            assert (await status()) == "processing" and not [
                m for m in seen if m.order_id == order and not isinstance(m, ProcessPayment)
            ]
            await gateway.astart()  # the same port, the same store
            answer = await worker.answer(order, PaymentSucceeded)
            assert isinstance(answer, PaymentSucceeded)
            assert [type(m) for m in seen if m.order_id == order] == [
                ProcessPayment,
                PaymentSucceeded,
            ]
        client = stripe.StripeClient("sk_test_jetsaga", base_addresses={"api": gateway.api_base})
        intents = await asyncio.to_thread(client.v1.payment_intents.list, {"limit": 100})
        ours = [i for i in intents.data if i.metadata.to_dict().get("orderId") == order]
        assert [(i.id, i.status) for i in ours] == [(answer.stripe_payment_intent_id, "succeeded")]
    finally:
        await process.stop()
        await nc.close()
        for server in (gateway, bus, pg):
            await asyncio.to_thread(server.stop)
