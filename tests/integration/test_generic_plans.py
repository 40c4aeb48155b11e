"""The hot statements' generic plans find rows by primary key, whatever the statistics say.

asyncpg prepares every statement, and PostgreSQL soon plans a prepared statement once for
any parameters. When ANALYZE last saw few orders PENDING (or few payments processing), a
guard on that status looked more selective than the primary key, and the generic plan read
every such row through the status index on each execution: as many rows as there are
sagas in flight, growing with any backlog.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from types import ModuleType

import asyncpg
import pytest

from jetsaga import db
from order_service import main as order_main
from order_service import store as order_store
from payment_service import main as payment_main
from payment_service import store as payment_store
from tests.support.databases import fresh_pool

pytestmark = pytest.mark.timeout(60)


async def generic_plan(conn: asyncpg.Connection, sql: str) -> str:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE hot AS {sql}")
    params = ", ".join("NULL" for _ in set(re.findall(r"\$\d+", sql)))
    return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE hot({params})"))


@contextlib.asynccontextmanager
async def skewed(
    database_url: str, service: ModuleType, fill: str, table: str
) -> AsyncIterator[asyncpg.Pool]:
    """A fresh database of `service`, filled by `fill` (one row in a thousand in flight)
    and analyzed."""
    migrations = [db.SHARED_MIGRATIONS, service.MIGRATIONS]
    async with fresh_pool(database_url, f"plan_{table}", migrations, 1) as pool:
        await pool.execute(fill)
        await pool.execute(f"ANALYZE {table}")
        yield pool


@pytest.fixture
async def orders(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    fill = (
        "INSERT INTO orders (order_id, customer_id, items, total_amount, currency,"
        " request_hash, status, created_at, updated_at)"
        " SELECT 'o-' || i, 'c', '[]', 100, 'usd', 'h',"
        " CASE WHEN i % 1000 = 0 THEN 'PENDING' ELSE 'CONFIRMED' END, now(), now()"
        " FROM generate_series(1, 20000) AS i"
    )
    async with skewed(database_url, order_main, fill, "orders") as pool:
        yield pool


@pytest.fixture
async def payments(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    fill = (
        "INSERT INTO payments (order_id, status, amount, currency, stripe_payment_intent_id)"
        " SELECT 'o-' || i, CASE WHEN i % 1000 = 0 THEN 'processing' ELSE 'succeeded' END,"
        " 100, 'usd', CASE WHEN i % 1000 = 0 THEN NULL ELSE 'pi_' || i END"
        " FROM generate_series(1, 20000) AS i"
    )
    async with skewed(database_url, payment_main, fill, "payments") as pool:
        yield pool


async def test_ending_orders_finds_them_by_id_not_by_pending_status(
    orders: asyncpg.Pool,
) -> None:
    async with orders.acquire() as conn:
        plan = await generic_plan(conn, order_store._SAVE)
    assert "orders_pkey" in plan
    assert "orders_status_newest" not in plan, plan


async def test_recording_intents_finds_payments_by_id_not_by_processing_status(
    payments: asyncpg.Pool,
) -> None:
    async with payments.acquire() as conn:
        plan = await generic_plan(conn, payment_store.RECORD_INTENTS)
    assert "payments_pkey" in plan
    assert "payments_processing" not in plan and "intent_id_key" not in plan, plan
