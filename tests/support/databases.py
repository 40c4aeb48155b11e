"""A pool on a database of its own, migrated, for a test or a module of tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg

from jetsaga import config, db


@contextlib.asynccontextmanager
async def fresh_pool(
    database_url: str,
    prefix: str,
    migrations: Sequence[Path],
    size: int,
    *,
    drop: bool = False,
    generic_plans: bool = False,
) -> AsyncIterator[asyncpg.Pool]:
    """A new database named `prefix` and a random suffix, with `migrations` applied; with
    `drop`, the database is dropped once the pool is closed (`generic_plans`: as for
    `db.create_pool`)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = config.with_database(database_url, name)
    await db.ensure_database(url)
    pool = await db.create_pool(url, size, generic_plans=generic_plans)
    try:
        await db.migrate(pool, list(migrations))
        yield pool
    finally:
        await pool.close()
    if drop:
        admin = await asyncpg.connect(config.with_database(database_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await admin.close()
