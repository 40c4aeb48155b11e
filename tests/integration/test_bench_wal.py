"""The ladder's WAL counter, read from a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from bench import wal


async def _write_rows(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_wal_probe (n int, pad text)")
        await conn.execute(
            "INSERT INTO bench_wal_probe SELECT g, repeat('x', 100) FROM generate_series(1, $1) g",
            rows,
        )
        await conn.execute("DROP TABLE bench_wal_probe")
    finally:
        await conn.close()


def test_the_wal_counter_grows_by_what_a_write_logged(database_url: str) -> None:
    before = wal.wal_bytes(database_url)
    asyncio.run(_write_rows(database_url, 1_000))  # about 130 bytes of heap record a row
    after = wal.wal_bytes(database_url)

    assert before is not None and after is not None
    assert after - before > 1_000 * 100


def test_an_unreachable_cluster_reads_as_unknown() -> None:
    assert wal.wal_bytes(None) is None
    assert wal.wal_bytes("postgresql://postgres@127.0.0.1:1/postgres") is None
