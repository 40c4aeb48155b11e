"""What a step wrote to PostgreSQL's write-ahead log, read from `pg_stat_wal`.

Latency at a fixed rate swings with the hour on these machines; the WAL a saga writes does
not. On 2026-11-23, every step from 250 to 1,000/s of one version (a full ladder, a short
one and three single 60 s steps at 1,000/s) wrote 13.2 to 13.5 KB per saga, while those
three steps had p99 569, 676 and 1,088 ms. The WAL is what every commit waits for the disk
to take, so a change to a table, an index or a statement shows here first. The ladder reads
the counter before and after each step and divides by the sagas that ended.

The counter covers the whole cluster (the three databases, autovacuum, checkpoints), which
is the cluster `jetsaga up` embeds: read through its TCP port on 127.0.0.1, found in its
`postmaster.pid`, or through `DATABASE_URL` when the stack uses an outside server.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg


def database_url(data_dir: Path) -> str | None:
    """The cluster the stack of `jetsaga up --data-dir DATA_DIR` writes to, or None."""
    if url := os.environ.get("DATABASE_URL"):
        return url
    try:
        lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
        port = int(lines[3])  # PostgreSQL's layout: pid, data dir, start time, port, ...
    except (OSError, IndexError, ValueError):
        return None
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def wal_bytes(url: str | None) -> int | None:
    """Bytes of WAL the cluster has written since its statistics were reset; None if it
    cannot be read (no URL, no server, PostgreSQL older than 14)."""
    if url is None:
        return None

    async def read() -> int:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return int(await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal"))
        finally:
            await conn.close()

    try:
        return asyncio.run(read())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None


def kb_per_saga(before: int | None, after: int | None, sagas: int) -> float | None:
    if before is None or after is None or sagas <= 0:
        return None
    return round((after - before) / 1000 / sagas, 2)
