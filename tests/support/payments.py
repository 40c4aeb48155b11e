"""Fixtures of the payment handler tests: a database of the module's own with the payment
migrations, the in-process fake gateway, and the handler wired to both."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jetsaga import config, db
from payment_service.fake_gateway import FakeGateway
from payment_service.handlers import PaymentHandler
from payment_service.main import MIGRATIONS


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    url = config.with_database(database_url, f"payment_t_{uuid.uuid4().hex[:12]}")
    await db.ensure_database(url)
    p = await db.create_pool(url, 8)
    await db.migrate(p, [db.SHARED_MIGRATIONS, MIGRATIONS])
    yield p
    await p.close()


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def handler(pool: asyncpg.Pool, gateway: FakeGateway) -> PaymentHandler:
    return PaymentHandler(pool, gateway)
