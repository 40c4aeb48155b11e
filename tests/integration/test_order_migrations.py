"""The order service's migrations applied to a database that already holds orders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jetsaga import db
from order_service import main, store
from tests.support.databases import fresh_pool

pytestmark = pytest.mark.timeout(60)


def migrations_before(name: str, into: Path) -> Path:
    """The order service's migrations up to, not including, `name`, in a directory whose
    parent has the service's name (migrations are recorded by that name and the file's)."""
    directory = into / main.MIGRATIONS.parent.name / main.MIGRATIONS.name
    directory.mkdir(parents=True)
    for path in sorted(main.MIGRATIONS.glob("[0-9]*.sql")):
        if path.name >= name:
            break
        shutil.copy(path, directory)
    return directory


async def test_counting_ends_per_second_carries_over_the_sagas_ended_lately(
    database_url: str, tmp_path: Path
) -> None:
    before = migrations_before("0005", tmp_path)
    async with fresh_pool(database_url, "migrate", [db.SHARED_MIGRATIONS, before], 2) as pool:
        await pool.execute(
            "INSERT INTO orders (order_id, customer_id, items, total_amount, currency,"
            " request_hash, created_at)"
            " SELECT 'o-' || i, 'c', '[]', 100, 'usd', 'h', now() FROM generate_series(1, 5) i"
        )
        # Ended now: two completed, one compensated; ended twenty minutes ago; in flight.
        await pool.execute(
            "INSERT INTO sagas (order_id, status, state, started_at, steps, updated_at, ended_at)"
            " VALUES ('o-1', 'COMPLETED', '', now(), 5, now(), now()),"
            " ('o-2', 'COMPLETED', '', now(), 5, now(), now()),"
            " ('o-3', 'COMPENSATED', '', now(), 6, now(), now()),"
            " ('o-4', 'FAILED', '', now(), 2, now(), now() - interval '20 minutes'),"
            " ('o-5', 'PAYMENT_PROCESSING', '', now(), 3, now(), NULL)"
        )
        applied = await db.migrate(pool, [db.SHARED_MIGRATIONS, main.MIGRATIONS])
        async with pool.acquire() as conn:
            stats = await store.saga_stats(conn, 300)
            ends = await conn.fetch("SELECT status, sum(n) AS n FROM saga_ends GROUP BY status")
            indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'sagas'")
    assert applied == ["order_service/0005_saga_ends_by_second.sql"]
    assert (stats.ended_recent, stats.completed_recent) == (3, 2)
    assert {r["status"]: r["n"] for r in ends} == {"CONFIRMED": 2, "CANCELLED": 1}
    assert "sagas_ended_status" not in {r["indexname"] for r in indexes}
