"""The inbox: which logical messages a consumer has already applied.

A handler calls `claim` inside the transaction of its effects; a key it gets back is new and
must be applied, a key it does not get back was applied before (redelivery, duplicate,
replay) and must be skipped. The row commits or rolls back with the effect.

A handler that locks nothing ahead reads the keys first instead (a key with a row was
applied before), decides, and inserts the rows of the new keys in the one statement that
writes the effects; if that statement writes nothing for a message (its row changed
meanwhile), it claims nothing for it either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import asyncpg

from jetsaga.consumer import Delivery

RETENTION_DAYS = 31  # outlives the dead-letter stream's 30 days of replayable messages

D = TypeVar("D", bound=Delivery)


def claim_statement(consumer: int, keys: int) -> str:
    """Records the consumer (parameter `$consumer`) and keys (`$keys`) given; returns the
    keys not recorded before. To claim in a statement that does more."""
    return (
        "INSERT INTO processed_messages (consumer, msg_key)"
        f" SELECT ${consumer}, unnest(${keys}::text[]) ON CONFLICT DO NOTHING RETURNING msg_key"
    )


CLAIM = claim_statement(1, 2)


def claim_if_written_statement(consumer: int, keys: int, order_ids: int, written: str) -> str:
    """For a statement that writes only some of its changes: records key `$keys[i]` if
    `$order_ids[i]` is NULL (its message changed nothing) or is the `order_id` of a row of
    `written`, the statement's CTE of the changes it wrote; returns the keys recorded now."""
    return (
        "INSERT INTO processed_messages (consumer, msg_key)"
        f" SELECT ${consumer}, k FROM unnest(${keys}::text[], ${order_ids}::text[]) AS t (k, o)"
        f" WHERE o IS NULL OR o IN (SELECT order_id FROM {written})"
        " ON CONFLICT DO NOTHING RETURNING msg_key"
    )


async def claim(conn: asyncpg.Connection, consumer: str, batch: Sequence[D]) -> list[D]:
    """Record the batch's keys; return the deliveries not applied before, first of each key."""
    if not batch:
        return []
    fresh = await conn.fetchval(
        f"WITH ins AS ({CLAIM}) SELECT coalesce(array_agg(msg_key), '{{}}') FROM ins",
        consumer,
        [d.key for d in batch],
    )
    return first_fresh(batch, set(fresh))


def first_fresh(batch: Sequence[D], fresh: set[str]) -> list[D]:
    """The deliveries whose key was claimed just now, the first of each key (`fresh` is
    consumed)."""
    result: list[D] = []
    for delivery in batch:
        if delivery.key in fresh:
            fresh.discard(delivery.key)
            result.append(delivery)
    return result


async def prune(conn: asyncpg.Connection) -> int:
    status: str = await conn.execute(
        "DELETE FROM processed_messages WHERE processed_at < now() - make_interval(days => $1)",
        RETENTION_DAYS,
    )
    return int(status.split()[-1])
