"""PostgreSQL plumbing shared by the services: the service's database (created if missing),
its connection pool, and numbered `.sql` migrations applied under an advisory lock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from jetsaga.config import with_database

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x6A657473  # "jets": one lock id for every service's migrations


async def ensure_database(url: str) -> None:
    """Create the database named in `url` on its server unless it exists."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
                log.info("created database", extra={"database": name})
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another replica created it first
    finally:
        await conn.close()


# The database is away (restarting, unreachable, out of connections), as opposed to a
# statement that is wrong: callers wait and retry, or answer 503.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
)


async def _no_reset(_: asyncpg.Connection) -> None:
    return None


async def create_pool(url: str, size: int, *, generic_plans: bool = False) -> asyncpg.Pool:
    """The service's pool. With `generic_plans`, every prepared statement runs on the plan
    made once for it (`plan_cache_mode = force_generic_plan`); see `runtime.serve`."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min(2, size),
        max_size=size,
        command_timeout=30,
        timeout=5,  # to connect: a request during an outage fails fast with 503
        # Statements are prepared once per connection and reused on the hot path.
        statement_cache_size=256,
        max_inactive_connection_lifetime=300,
        # asyncpg's default reset (RESET ALL, UNLISTEN, unlock advisory locks) costs a round
        # trip on every release. Nothing here leaves session state behind (the migration
        # lock is released explicitly) and asyncpg still rolls back an open transaction.
        reset=_no_reset,
        server_settings={"plan_cache_mode": "force_generic_plan"} if generic_plans else {},
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, directories: Sequence[Path]) -> list[str]:
    """Apply every `NNNN_*.sql` file not yet applied, in order, each in its own transaction.

    Files are named by `<directory name>/<file name>` in `schema_migrations`, so the shared
    migrations and a service's own never collide. Returns what was applied.
    """
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for directory in directories:
                for path in sorted(directory.glob("[0-9]*.sql")):
                    name = f"{directory.parent.name}/{path.name}"
                    if name in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(path.read_text())
                        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                    applied.append(name)
                    log.info("applied migration", extra={"migration": name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def ping(pool: asyncpg.Pool, limit_s: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(limit_s):
            await pool.fetchval("SELECT 1")
        return True
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
