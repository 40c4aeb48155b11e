"""Fixtures and message builders of the payment handler tests: a database of the module's
own with the payment migrations, the in-process fake gateway, the handler wired to both,
and the commands it takes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from jetsaga import contracts, db
from jetsaga.consumer import Delivery
from jetsaga.contracts import AnyMessage, ProcessPayment, RefundPayment
from payment_service.fake_gateway import FakeGateway
from payment_service.handlers import PaymentHandler
from payment_service.main import MIGRATIONS
from tests.support.databases import fresh_pool


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with fresh_pool(database_url, "payment_t", [db.SHARED_MIGRATIONS, MIGRATIONS], 8) as p:
        yield p


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def handler(pool: asyncpg.Pool, gateway: FakeGateway) -> PaymentHandler:
    return PaymentHandler(pool, gateway)


def delivery(message: AnyMessage, msg_id: str | None = None, deliveries: int = 1) -> Delivery:
    subject = contracts.subject_of(message)
    return Delivery(subject, message, msg_id or contracts.message_id(subject, message.order_id),
                    deliveries, traceparent="00-tp")  # fmt: skip


def process(order_id: str, pm: str = "pm_card_visa", amount: int = 1999) -> Delivery:
    return delivery(ProcessPayment(order_id=order_id, customer_id="c-1", amount=amount,
                                   currency="usd", payment_method=pm))  # fmt: skip


def refund(order_id: str, payment_id: str | None = None, msg_id: str | None = None) -> Delivery:
    message = RefundPayment(order_id=order_id, payment_id=payment_id, reason="timeout")
    return delivery(message, msg_id)
