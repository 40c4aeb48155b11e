"""All SQL of the inventory service. Each function runs in the caller's transaction.

Lock order keeps concurrent batches clear of deadlocks: reservation rows first (by order
id), then stock rows (by product id), each with a sorted `SELECT ... FOR UPDATE` before the
batch writes them back in one statement. One wait falls outside that order: a reserve batch
inserting an order's reservation waits for a release batch's uncommitted tombstone of the
same order (and the reverse). If the two also want each other's stock rows, PostgreSQL
breaks the deadlock and the consumer loop retries the batch; it needs a release and a
creation of one order in flight at the same instant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from inventory_service.domain import Delta, Reservation
from jetsaga import inbox, outbox


class Conflict(Exception):
    """Another transaction opened or closed the same order's reservation row first."""


class StockLevel(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    product_id: str
    available: int
    reserved: int
    sold: int


class Locked(msgspec.Struct, frozen=True, kw_only=True):
    available: dict[str, int]  # locked stock rows; unknown products are absent
    orders_with_rows: frozenset[str]  # orders that already have a reservation row


async def get_stock(conn: asyncpg.Connection, product_id: str) -> StockLevel | None:
    row = await conn.fetchrow(
        "SELECT product_id, available, reserved, sold FROM stock WHERE product_id = $1",
        product_id,
    )
    return None if row is None else StockLevel(**dict(row))


async def set_available(conn: asyncpg.Connection, product_id: str, available: int) -> StockLevel:
    row = await conn.fetchrow(
        "INSERT INTO stock (product_id, available) VALUES ($1, $2) ON CONFLICT (product_id)"
        " DO UPDATE SET available = EXCLUDED.available, updated_at = now()"
        " RETURNING product_id, available, reserved, sold",
        product_id,
        available,
    )
    return StockLevel(**dict(row))


_CLAIM_AND_LOCK = f"""
WITH claimed AS ({inbox.CLAIM}),
locked AS (
    SELECT product_id, available FROM stock WHERE product_id = ANY($3::text[])
    ORDER BY product_id FOR UPDATE
)
SELECT msg_key AS id, 0 AS available, 'key' AS kind FROM claimed
UNION ALL SELECT product_id, available, 'product' FROM locked
UNION ALL SELECT order_id, 0, 'order' FROM reservations WHERE order_id = ANY($4::text[])
"""


async def claim_and_lock_for_reserve(
    conn: asyncpg.Connection,
    consumer: str,
    keys: Sequence[str],
    product_ids: Sequence[str],
    order_ids: Sequence[str],
) -> tuple[set[str], Locked]:
    """In one round trip: claim inbox keys (returns those not claimed before), lock the
    products of a batch of new orders, and find the orders that have a reservation row."""
    rows = await conn.fetch(
        _CLAIM_AND_LOCK, consumer, list(keys), sorted(set(product_ids)), list(order_ids)
    )
    return {r["id"] for r in rows if r["kind"] == "key"}, Locked(
        available={r["id"]: r["available"] for r in rows if r["kind"] == "product"},
        orders_with_rows=frozenset(r["id"] for r in rows if r["kind"] == "order"),
    )


async def lock_stock(conn: asyncpg.Connection, product_ids: Sequence[str]) -> dict[str, int]:
    if not product_ids:
        return {}
    rows = await conn.fetch(
        "SELECT product_id, available FROM stock WHERE product_id = ANY($1::text[])"
        " ORDER BY product_id FOR UPDATE",
        sorted(set(product_ids)),
    )
    return {r["product_id"]: r["available"] for r in rows}


# Applies a batch's net stock changes ($1..$4) to rows the batch has locked.
_MOVE = """moved AS (
    UPDATE stock SET available = stock.available + d.available,
        reserved = stock.reserved + d.reserved, sold = stock.sold + d.sold, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
        AS d (product_id, available, reserved, sold)
    WHERE stock.product_id = d.product_id)"""


def _delta_args(deltas: Sequence[Delta]) -> tuple[list[str], list[int], list[int], list[int]]:
    return (
        [d.product_id for d in deltas],
        [d.available for d in deltas],
        [d.reserved for d in deltas],
        [d.sold for d in deltas],
    )


async def open_reservations(
    conn: asyncpg.Connection,
    deltas: Sequence[Delta],
    opened: Sequence[Reservation],
    out: Sequence[outbox.Outgoing] = (),
) -> None:
    """Write stock changes, the new reservations, their items and the outgoing messages in
    one statement."""
    lines = [(r.order_id, p, q) for r in opened for p, q in r.items.items()]
    try:
        outbox_ids = await conn.fetchval(
            f"WITH {_MOVE}, opened AS (INSERT INTO reservations"
            "  (order_id, reservation_id, status, expires_at)"
            "  SELECT o, r, 'reserved', e FROM unnest($5::text[], $6::uuid[], $7::timestamptz[])"
            "  AS n (o, r, e)),"
            " items AS (INSERT INTO reservation_items (order_id, product_id, quantity)"
            "  SELECT * FROM unnest($8::text[], $9::text[], $10::bigint[])),"
            f" o AS ({outbox.insert_statement(11)})"
            " SELECT coalesce(array_agg(id), '{}') FROM o",
            *_delta_args(deltas),
            [r.order_id for r in opened],
            [r.reservation_id for r in opened],
            [r.expires_at for r in opened],
            [line[0] for line in lines],
            [line[1] for line in lines],
            [line[2] for line in lines],
            *outbox.insert_args(out),
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "reservations_pkey":
            raise
        raise Conflict(f"a reservation row appeared meanwhile: {exc.detail}") from exc
    outbox.stage(outbox_ids, out)


async def insert_tombstones(
    conn: asyncpg.Connection, order_ids: Sequence[str], reasons: Sequence[str]
) -> set[str]:
    """Mark orders with no reservation row as released; returns the orders marked now.

    It waits for a concurrent reservation of the same order to commit or roll back, so a
    later statement of this transaction sees that reservation.
    """
    marked = await conn.fetch(
        "INSERT INTO reservations (order_id, status, reason)"
        " SELECT o, 'released', r FROM unnest($1::text[], $2::text[]) AS t (o, r)"
        " ON CONFLICT (order_id) DO NOTHING RETURNING order_id",
        list(order_ids),
        list(reasons),
    )
    return {r["order_id"] for r in marked}


def _reservations(rows: Sequence[asyncpg.Record]) -> dict[str, Reservation]:
    """One reservation per order from rows of (reservation, item) joined."""
    first: dict[str, asyncpg.Record] = {}
    items: dict[str, dict[str, int]] = {}
    for row in rows:
        first.setdefault(row["order_id"], row)
        held = items.setdefault(row["order_id"], {})
        if row["product_id"] is not None:
            held[row["product_id"]] = row["quantity"]
    return {
        order_id: Reservation(
            order_id=order_id,
            reservation_id=None if row["reservation_id"] is None else str(row["reservation_id"]),
            status=row["status"],
            items=items[order_id],
            expires_at=row["expires_at"],
            reason=row.get("reason"),
        )
        for order_id, row in first.items()
    }


_RESERVATION_COLUMNS = (
    "r.order_id, r.reservation_id, r.status, r.expires_at, i.product_id, i.quantity"
)


async def lock_reservations(
    conn: asyncpg.Connection, order_ids: Sequence[str]
) -> dict[str, Reservation]:
    if not order_ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_RESERVATION_COLUMNS} FROM reservations r"
        " LEFT JOIN reservation_items i USING (order_id)"
        " WHERE r.order_id = ANY($1::text[]) ORDER BY r.order_id FOR UPDATE OF r",
        sorted(set(order_ids)),
    )
    return _reservations(rows)


async def reservations_of(
    conn: asyncpg.Connection, order_ids: Sequence[str]
) -> dict[str, Reservation]:
    """Reservations with their release reason, unlocked: to answer messages applied before."""
    if not order_ids:
        return {}
    rows = await conn.fetch(
        f"SELECT {_RESERVATION_COLUMNS}, r.reason FROM reservations r"
        " LEFT JOIN reservation_items i USING (order_id) WHERE r.order_id = ANY($1::text[])",
        list(order_ids),
    )
    return _reservations(rows)


async def lock_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[Reservation]:
    """Lock up to `limit` open reservations expired at `now`, skipping those another
    transaction holds (another replica's sweep, or a confirm or release in flight)."""
    rows = await conn.fetch(
        "WITH due AS (SELECT order_id, reservation_id, status, expires_at FROM reservations"
        "  WHERE status = 'reserved' AND expires_at < $1"
        "  ORDER BY expires_at, order_id LIMIT $2 FOR UPDATE SKIP LOCKED)"
        f" SELECT {_RESERVATION_COLUMNS} FROM due r LEFT JOIN reservation_items i USING (order_id)",
        now,
        limit,
    )
    return list(_reservations(rows).values())


async def close_reservations(
    conn: asyncpg.Connection,
    deltas: Sequence[Delta],
    closed: Sequence[tuple[str, str | None]],
    status: str,
) -> None:
    """Write stock changes and the new status of (order id, reason) reservations at once."""
    await conn.execute(
        f"WITH {_MOVE} UPDATE reservations SET status = $5,"
        " reason = coalesce(c.reason, reservations.reason), updated_at = now()"
        " FROM unnest($6::text[], $7::text[]) AS c (order_id, reason)"
        " WHERE reservations.order_id = c.order_id",
        *_delta_args(deltas),
        status,
        [order_id for order_id, _ in closed],
        [reason for _, reason in closed],
    )


async def count_active(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'reserved'")
    return count
