"""The hot statements' generic plans find rows by primary key, whatever the statistics say.

asyncpg prepares every statement, and PostgreSQL soon plans a prepared statement once for
any parameters. When ANALYZE last saw few payments processing, a guard on that status
looked more selective than the primary key, and the generic plan read every such row
through the status index on each execution: as many rows as there are payments in flight,
growing with any backlog. (The order service's write once guarded the same way on the
order's status; the order row is no longer written as its saga ends.)
"""

from __future__ import annotations

import re
from types import ModuleType

import asyncpg
import pytest

from jetsaga import db
from payment_service import main as payment_main
from payment_service import store as payment_store
from tests.support.databases import fresh_pool

pytestmark = pytest.mark.timeout(60)


async def generic_plan(conn: asyncpg.Connection, sql: str) -> str:
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE hot AS {sql}")
    params = ", ".join("NULL" for _ in set(re.findall(r"\$\d+", sql)))
    return "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE hot({params})"))


# One row in a thousand in flight, then ANALYZE: the statistics that misled the planner.
PAYMENTS = (
    "INSERT INTO payments (order_id, status, amount, currency, stripe_payment_intent_id)"
    " SELECT 'o-' || i, CASE WHEN i % 1000 = 0 THEN 'processing' ELSE 'succeeded' END,"
    " 100, 'usd', CASE WHEN i % 1000 = 0 THEN NULL ELSE 'pi_' || i END"
    " FROM generate_series(1, 20000) AS i"
)


@pytest.mark.parametrize(
    ("service", "table", "fill", "sql", "key", "avoided"),
    [
        pytest.param(payment_main, "payments", PAYMENTS, payment_store.RECORD_INTENTS,
                     "payments_pkey", ("intent_id_key",),
                     id="recording intents"),
    ],
)  # fmt: skip
async def test_a_hot_statement_finds_its_rows_by_primary_key_not_by_status(
    database_url: str,
    service: ModuleType,
    table: str,
    fill: str,
    sql: str,
    key: str,
    avoided: tuple[str, ...],
) -> None:
    migrations = [db.SHARED_MIGRATIONS, service.MIGRATIONS]
    async with fresh_pool(database_url, f"plan_{table}", migrations, 1) as pool:
        await pool.execute(fill)
        await pool.execute(f"ANALYZE {table}")
        async with pool.acquire() as conn:
            plan = await generic_plan(conn, sql)
    assert key in plan
    assert not [index for index in avoided if index in plan], plan


@pytest.mark.parametrize(("generic_plans", "custom"), [(False, 20), (True, 0)])
async def test_a_pool_for_generic_plans_plans_each_statement_once(
    database_url: str, generic_plans: bool, custom: int
) -> None:
    """A statement on arrays of keys costs ten elements per array in its generic plan and
    one or two in a custom one, so PostgreSQL plans it again on every execution, unless the
    pool asks for generic plans (as the payment and inventory services do)."""
    migrations = [db.SHARED_MIGRATIONS, payment_main.MIGRATIONS]
    async with fresh_pool(
        database_url, "plan_mode", migrations, 1, generic_plans=generic_plans
    ) as pool:
        await pool.execute(PAYMENTS)
        await pool.execute("ANALYZE payments")
        async with pool.acquire() as conn:
            for i in range(20):
                await conn.execute(
                    payment_store.RECORD_INTENTS, [f"o-{i}", f"o-{i + 1}"], [0, 0], ["pi", "pi"]
                )
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement = $1",
                payment_store.RECORD_INTENTS,
            )
    assert plans is not None
    assert (plans["custom_plans"], plans["generic_plans"]) == (custom, 20 - custom)
