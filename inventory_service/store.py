"""All SQL of the inventory service. Each function runs in the caller's transaction, if any.

Lock order keeps concurrent batches clear of deadlocks: reservation rows first (by order
id), then stock rows (by product id), each with a sorted `SELECT ... FOR UPDATE` before the
batch writes them back in one statement. A batch of new orders locks nothing ahead: it
reads, then writes its stock changes (sorted by product id) relative to what the rows hold,
with its reservations, in one statement. One wait falls outside that order: a reserve batch
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


class StockMoved(Exception):
    """Stock read for a batch of orders fell short by the time the batch wrote: decide again."""


class ForReserve(msgspec.Struct, frozen=True, kw_only=True):
    """What a batch of new orders is decided on, read with no lock taken."""

    available: dict[str, int]  # stock rows of the batch's products; unknown ones are absent
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


_READ_FOR_RESERVE = """
SELECT msg_key AS id, 0::bigint AS available, 'key' AS kind FROM processed_messages
    WHERE consumer = $1 AND msg_key = ANY($2::text[])
UNION ALL SELECT product_id, available, 'product' FROM stock WHERE product_id = ANY($3::text[])
UNION ALL SELECT order_id, 0, 'order' FROM reservations WHERE order_id = ANY($4::text[])
"""


async def read_for_reserve(
    conn: asyncpg.Connection,
    consumer: str,
    keys: Sequence[str],
    product_ids: Sequence[str],
    order_ids: Sequence[str],
) -> tuple[set[str], ForReserve]:
    """In one statement, no lock taken: which inbox keys the consumer applied before (of
    orders refused), the available stock of a batch of new orders' products, and the
    orders that have a reservation row (applied before, or released before they came).

    The batch's write moves stock relative to what it holds then, and the database refuses
    stock below zero: a batch decided on stock that fell meanwhile fails (`StockMoved`).
    Stock that rose meanwhile only makes the batch's out-of-stock answers those of an
    instant earlier.
    """
    rows = await conn.fetch(
        _READ_FOR_RESERVE, consumer, list(keys), list(set(product_ids)), list(order_ids)
    )
    return {r["id"] for r in rows if r["kind"] == "key"}, ForReserve(
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


_MOVED = """UPDATE stock SET available = stock.available + d.available,
        reserved = stock.reserved + d.reserved, sold = stock.sold + d.sold, updated_at = now()
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
        AS d (product_id, available, reserved, sold)
    WHERE stock.product_id = d.product_id"""
# Applies a batch's net stock changes ($1..$4) to rows the batch has locked.
_MOVE = f"moved AS ({_MOVED})"
# The same for a batch that has not locked them: it locks them first, all of them and in
# product order (an init plan), as every batch does, so that no two batches wait on each
# other's rows. (An update alone locks rows in the order its plan reaches them.)
_LOCK_AND_MOVE = f"""locked AS MATERIALIZED (
    SELECT product_id FROM stock WHERE product_id = ANY($1::text[])
    ORDER BY product_id FOR UPDATE),
moved AS ({_MOVED} AND stock.product_id = ANY(ARRAY(SELECT product_id FROM locked)))"""


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
    out: Sequence[outbox.Outgoing],
    consumer: str,
    keys: Sequence[str],
) -> None:
    """Write stock changes, the new reservations, their items, the outgoing messages and the
    inbox claims of `keys` (of the orders refused: they get no row), in one statement (so
    in one transaction of its own if the caller has none open)."""
    lines = [(r.order_id, p, q) for r in opened for p, q in r.items.items()]
    try:
        outbox_ids = await conn.fetchval(
            f"WITH {_LOCK_AND_MOVE}, opened AS (INSERT INTO reservations"
            "  (order_id, reservation_id, status, expires_at)"
            "  SELECT o, r, 'reserved', e FROM unnest($5::text[], $6::uuid[], $7::timestamptz[])"
            "  AS n (o, r, e)),"
            " items AS (INSERT INTO reservation_items (order_id, product_id, quantity)"
            "  SELECT * FROM unnest($8::text[], $9::text[], $10::bigint[])),"
            f" claimed AS ({inbox.claim_statement(17, 18)}),"
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
            consumer,
            list(keys),
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "reservations_pkey":
            raise
        raise Conflict(f"a reservation row appeared meanwhile: {exc.detail}") from exc
    except asyncpg.CheckViolationError as exc:
        if exc.constraint_name != "stock_available_check":
            raise
        raise StockMoved(f"stock fell since it was read: {exc.detail}") from exc
    outbox.stage(outbox_ids, out)


_RESERVATION_COLUMNS = (
    "r.order_id, r.reservation_id, r.status, r.expires_at, i.product_id, i.quantity"
)


_READ_FOR_RELEASE = f"""
SELECT 'key' AS kind, msg_key AS order_id, NULL::uuid AS reservation_id, NULL AS status,
        NULL::timestamptz AS expires_at, NULL AS product_id, NULL::bigint AS quantity,
        NULL AS reason
    FROM processed_messages WHERE consumer = $1 AND msg_key = ANY($2::text[])
UNION ALL SELECT 'row', {_RESERVATION_COLUMNS}, r.reason FROM reservations r
    LEFT JOIN reservation_items i USING (order_id) WHERE r.order_id = ANY($3::text[])
"""


async def read_for_release(
    conn: asyncpg.Connection, consumer: str, keys: Sequence[str], order_ids: Sequence[str]
) -> tuple[set[str], dict[str, Reservation]]:
    """In one statement, no lock taken: which inbox keys the consumer applied before, and
    the orders' reservation rows with their items and release reason (`release` writes a
    row only if it is still as read)."""
    rows = await conn.fetch(_READ_FOR_RELEASE, consumer, list(keys), list(set(order_ids)))
    return {r["order_id"] for r in rows if r["kind"] == "key"}, _reservations(
        [r for r in rows if r["kind"] == "row"]
    )


# Reservations still `reserved` are closed, and their stock moved from reserved back to
# available, in the lock order: the reservation rows by order id, then the stock rows they
# hold by product id (found from the locked rows, so locked after them). Orders that had no
# row get a tombstone, unless one appeared meanwhile. A key is claimed if its order was
# closed or marked, or if its message writes nothing (NULL); a message is sent only for an
# order closed or marked.
_RELEASE = f"""
WITH held AS MATERIALIZED (
    SELECT order_id, status FROM reservations WHERE order_id = ANY($1::text[])
    ORDER BY order_id FOR UPDATE
),
locked AS MATERIALIZED (
    SELECT product_id FROM stock WHERE product_id = ANY(ARRAY(
        SELECT i.product_id FROM reservation_items i JOIN held USING (order_id)
        WHERE held.status = 'reserved'))
    ORDER BY product_id FOR UPDATE
),
closed AS (
    UPDATE reservations SET status = 'released',
        reason = coalesce(c.reason, reservations.reason), updated_at = now()
    FROM unnest($1::text[], $2::text[]) AS c (order_id, reason)
    WHERE reservations.order_id = c.order_id
        AND c.order_id IN (SELECT order_id FROM held WHERE status = 'reserved')
    RETURNING reservations.order_id
),
moved AS (
    UPDATE stock SET available = stock.available + d.q, reserved = stock.reserved - d.q,
        updated_at = now()
    FROM (SELECT l.p, sum(l.q) AS q FROM unnest($3::text[], $4::text[], $5::bigint[]) AS l (o, p, q)
          WHERE l.o IN (SELECT order_id FROM closed) GROUP BY l.p) AS d
    WHERE stock.product_id = d.p AND stock.product_id = ANY(ARRAY(SELECT product_id FROM locked))
),
marked AS (
    INSERT INTO reservations (order_id, status, reason)
    SELECT o, 'released', r FROM unnest($6::text[], $7::text[]) AS t (o, r) ORDER BY o
    ON CONFLICT (order_id) DO NOTHING RETURNING order_id
),
written AS (SELECT order_id FROM closed UNION ALL SELECT order_id FROM marked),
claimed AS ({inbox.claim_if_written_statement(8, 9, 10, "written")}),
o AS ({outbox.insert_statement(11, "m.saga_id IN (SELECT order_id FROM written)")})
{outbox.written_rows("written", "o", "claimed")}
"""


async def release(
    conn: asyncpg.Connection,
    closing: Sequence[Reservation],
    reasons: Sequence[str | None],
    marking: Sequence[tuple[str, str | None]],
    out: Sequence[outbox.Outgoing],
    consumer: str,
    claims: Sequence[tuple[str, str | None]],
) -> tuple[set[str], set[str]]:
    """In one statement (so in one transaction of its own if the caller has none open):
    close the `closing` reservations (as read, with their `reasons`) that are still
    reserved and give their stock back; mark (order id, reason) orders that still have no
    row released (a tombstone); claim (key, order id) inbox keys, each only if its order
    was closed or marked (None: its message writes nothing); enqueue the messages of the
    orders closed or marked (`saga_id`). Returns those orders and the keys claimed now.

    A tombstone waits for a concurrent reservation of the same order to commit or roll
    back, and then is not written: the order is decided again from a new read.
    """
    lines = [(r.order_id, p, q) for r in closing for p, q in sorted(r.items.items())]
    rows = await conn.fetch(
        _RELEASE,
        [r.order_id for r in closing],
        list(reasons),
        [line[0] for line in lines],
        [line[1] for line in lines],
        [line[2] for line in lines],
        [order_id for order_id, _ in marking],
        [reason for _, reason in marking],
        consumer,
        [key for key, _ in claims],
        [order_id for _, order_id in claims],
        *outbox.insert_args(out),
    )
    return outbox.stage_written(rows, out)


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


# Reservation rows first, then the stock rows held by those whose status is in $2: the lock
# order. The stock rows are found from the locked rows (an init plan), so they are locked
# after them.
_LOCK_WITH_STOCK = f"""
WITH held AS MATERIALIZED (
    SELECT order_id, reservation_id, status, expires_at FROM reservations
    WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE
),
lines AS MATERIALIZED (
    SELECT {_RESERVATION_COLUMNS} FROM held r LEFT JOIN reservation_items i USING (order_id)
),
locked AS (
    SELECT product_id, available FROM stock
    WHERE product_id = ANY(ARRAY(SELECT product_id FROM lines WHERE status = ANY($2::text[])))
    ORDER BY product_id FOR UPDATE
)
SELECT *, NULL::bigint AS available FROM lines
UNION ALL SELECT NULL, NULL, NULL, NULL, product_id, NULL, available FROM locked
"""


async def lock_with_stock(
    conn: asyncpg.Connection, order_ids: Sequence[str], statuses: Sequence[str]
) -> tuple[dict[str, Reservation], dict[str, int]]:
    """Lock the reservations of `order_ids` and the stock rows held by those whose status is
    one of `statuses`, in one statement; returns the reservations and the locked products'
    available stock."""
    if not order_ids:
        return {}, {}
    rows = await conn.fetch(_LOCK_WITH_STOCK, sorted(set(order_ids)), list(statuses))
    held = [row for row in rows if row["order_id"] is not None]
    return _reservations(held), {
        row["product_id"]: row["available"] for row in rows if row["order_id"] is None
    }


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
    out: Sequence[outbox.Outgoing] = (),
) -> None:
    """Write stock changes, the new status of (order id, reason) reservations and the
    outgoing messages in one statement."""
    outbox_ids = await conn.fetchval(
        f"WITH {_MOVE}, closed AS (UPDATE reservations SET status = $5,"
        "  reason = coalesce(c.reason, reservations.reason), updated_at = now()"
        "  FROM unnest($6::text[], $7::text[]) AS c (order_id, reason)"
        "  WHERE reservations.order_id = c.order_id),"
        f" o AS ({outbox.insert_statement(8)})"
        " SELECT coalesce(array_agg(id), '{}') FROM o",
        *_delta_args(deltas),
        status,
        [order_id for order_id, _ in closed],
        [reason for _, reason in closed],
        *outbox.insert_args(out),
    )
    outbox.stage(outbox_ids, out)


async def count_active(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM reservations WHERE status = 'reserved'")
    return count
