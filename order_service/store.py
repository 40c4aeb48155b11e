"""All SQL of the order service: orders, sagas, their history and status counts.

Functions take a connection (the caller owns the transaction, if any), use `$n` parameters
and array parameters for batches, and return Structs. The consumers' handlers lock nothing
ahead: they read sagas, and `save` writes each only if it has not changed since (its
`steps`). Sagas are written in order-id order, and the timeout sweep skips sagas locked by
others, so that concurrent statements never deadlock each other.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Sequence

import asyncpg
import msgspec

from jetsaga import contracts as c
from jetsaga import outbox
from jetsaga.outbox import Outgoing
from order_service.saga import ORDER_STATUS, TERMINAL, Decision, Saga, SagaStatus, order_status

COUNT_SLOTS = 16
# A saga's state is written at each of its steps, so its size is WAL at each step: as a
# MessagePack array it takes 150-190 bytes where a JSON object took 400-450.
_saga_encoder = msgspec.msgpack.Encoder()
_saga_decoder = msgspec.msgpack.Decoder(Saga)


class _JsonSaga(Saga, frozen=True, array_like=False):
    """How states were stored before (a JSON object): sagas in flight across an upgrade."""


_json_saga_decoder = msgspec.json.Decoder(_JsonSaga)


def encode_state(saga: Saga) -> bytes:
    return _saga_encoder.encode(saga)


def decode_state(state: bytes) -> Saga:
    if state[:1] == b"{":
        return Saga(**msgspec.structs.asdict(_json_saga_decoder.decode(state)))
    return _saga_decoder.decode(state)


_items_decoder = msgspec.json.Decoder(tuple[c.LineItem, ...])


def ts(epoch: float | None) -> datetime.datetime | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, datetime.UTC)


FIRST_STEPS = 1  # a saga starts with one history record, written by `_CREATE`


class StoredSaga(msgspec.Struct, frozen=True):
    saga: Saga
    # History records so far. Every change of a saga adds at least one (the saga's unit
    # tests check it for every status and event), so this is also the version `save`
    # compares before it writes.
    steps: int

    def after(self, decision: Decision) -> StoredSaga:
        """The saga as `save` leaves it once it writes `decision`."""
        return StoredSaga(decision.saga, self.steps + len(decision.history))


class NewOrder(msgspec.Struct, frozen=True, kw_only=True):
    order: c.OrderCreated
    idempotency_key: str | None
    request_hash: str
    first: Decision  # saga.start(...)
    created: Outgoing  # the orders.created outbox message


class ExistingOrder(msgspec.Struct, frozen=True):
    order_id: str
    request_hash: str
    status: str
    saga_status: str


# Times go in as epoch seconds (float8 arrays) and become timestamptz in the statement:
# asyncpg encodes a timestamptz array element in about four times the CPU of a float8 one
# (0.77 against 0.19 µs), and these two statements carry several per order.
_CREATE = f"""
WITH i AS (
    SELECT order_id, customer_id, items, total_amount, currency, idempotency_key,
           request_hash, to_timestamp(at) AS at, state, to_timestamp(deadline) AS deadline,
           msg_id, payload, traceparent
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                $7::text[], $8::float8[], $9::bytea[], $10::float8[], $11::text[], $12::bytea[],
                $13::text[])
        AS t(order_id, customer_id, items, total_amount, currency, idempotency_key,
             request_hash, at, state, deadline, msg_id, payload, traceparent)
), o AS (
    INSERT INTO orders (order_id, customer_id, items, total_amount, currency,
                        idempotency_key, request_hash, created_at)
    SELECT order_id, customer_id, items::jsonb, total_amount, currency, idempotency_key,
           request_hash, at FROM i
    ON CONFLICT DO NOTHING
    RETURNING order_id
), s AS (
    INSERT INTO sagas (order_id, status, state, deadline, started_at, steps, updated_at)
    SELECT order_id, 'STARTED', state, deadline, at, {FIRST_STEPS}, at
    FROM i JOIN o USING (order_id)
), h AS (
    INSERT INTO saga_history (order_id, seq, at, saga_status, event)
    SELECT order_id, {FIRST_STEPS}, at, 'STARTED', 'orders.created' FROM i JOIN o USING (order_id)
), n AS (
    INSERT INTO order_status_counts (status, slot, n)
    SELECT 'PENDING', $14, count(*) FROM o HAVING count(*) > 0
    ON CONFLICT (status, slot) DO UPDATE SET n = order_status_counts.n + excluded.n
), x AS (
    INSERT INTO outbox (subject, msg_id, payload, saga_id, traceparent)
    SELECT 'orders.created', msg_id, payload, order_id, traceparent FROM i JOIN o USING (order_id)
    RETURNING saga_id, id
)
SELECT saga_id, id FROM x
"""


async def create_orders(conn: asyncpg.Connection, group: Sequence[NewOrder]) -> dict[str, int]:
    """Orders, sagas, first history records, counts and `orders.created`, in one statement
    (one implicit transaction). Returns the ids of the orders created, each with the id of
    its outbox row; an order whose id or idempotency key exists already is not created. Ids
    and keys must be distinct within the group."""
    rows = await conn.fetch(
        _CREATE,
        [n.order.order_id for n in group],
        [n.order.customer_id for n in group],
        [msgspec.json.encode(n.order.items).decode() for n in group],
        [n.order.total_amount for n in group],
        [n.order.currency for n in group],
        [n.idempotency_key for n in group],
        [n.request_hash for n in group],
        [n.first.saga.started_at for n in group],
        [encode_state(n.first.saga) for n in group],
        [n.first.saga.deadline for n in group],
        [n.created.msg_id for n in group],
        [n.created.payload for n in group],
        [n.created.traceparent for n in group],
        random.randrange(COUNT_SLOTS),
    )
    return {order_id: outbox_id for order_id, outbox_id in rows}


async def find_existing(
    conn: asyncpg.Connection, order_id: str, key: str | None
) -> ExistingOrder | None:
    row = await conn.fetchrow(
        "SELECT o.order_id, o.request_hash, s.status"
        " FROM orders o JOIN sagas s USING (order_id)"
        " WHERE o.order_id = $1 OR ($2::text IS NOT NULL AND o.idempotency_key = $2)"
        " ORDER BY (o.idempotency_key = $2) DESC NULLS LAST LIMIT 1",
        order_id, key,
    )  # fmt: skip
    if row is None:
        return None
    saga_status = SagaStatus(row["status"])
    return ExistingOrder(
        row["order_id"], row["request_hash"], order_status(saga_status), saga_status.value
    )


_READ = "SELECT order_id, state, steps FROM sagas WHERE order_id = ANY($1::text[])"


async def read(conn: asyncpg.Connection, order_ids: Sequence[str]) -> dict[str, StoredSaga]:
    """The sagas as they are, no lock taken (`save` writes a saga only if it is still so)."""
    rows = await conn.fetch(_READ, list(set(order_ids)))
    return {r[0]: StoredSaga(decode_state(r[1]), r[2]) for r in rows}


async def lock_due_sagas(conn: asyncpg.Connection, now: float, limit: int) -> dict[str, StoredSaga]:
    rows = await conn.fetch(
        "SELECT order_id, state, steps FROM sagas WHERE deadline <= $1"
        " ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED",
        ts(now), limit,
    )  # fmt: skip
    return {r["order_id"]: StoredSaga(decode_state(r["state"]), r["steps"]) for r in rows}


# Each saga is written only if it still has the steps it was read with ($17); its history,
# the count of its order's end and its messages only if it was.
_SAVE = f"""
WITH s AS (
    UPDATE sagas SET status = u.status, state = u.state, deadline = to_timestamp(u.deadline),
        steps = u.steps,
        ended_at = CASE WHEN u.terminal THEN coalesce(sagas.ended_at, $7) END,
        compensating_at = CASE WHEN u.status = 'COMPENSATING' AND sagas.compensating_at IS NULL
                               THEN $7 ELSE sagas.compensating_at END,
        updated_at = $7
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[], $5::int[], $6::bool[],
                $17::int[])
         AS u(order_id, status, state, deadline, steps, terminal, was)
    WHERE sagas.order_id = u.order_id AND sagas.steps = u.was
    RETURNING sagas.order_id
), h AS (
    INSERT INTO saga_history (order_id, seq, at, saga_status, event, detail)
    SELECT order_id, seq, to_timestamp(at), saga_status, event, detail
    FROM unnest($8::text[], $9::int[], $10::float8[], $11::text[], $12::text[], $13::text[])
        AS x (order_id, seq, at, saga_status, event, detail)
    WHERE x.order_id IN (SELECT order_id FROM s)
), e AS (
    -- The orders that end: a saga that ends is written once, from a state not ended.
    SELECT x.status FROM unnest($14::text[], $15::text[]) AS x(order_id, status)
    WHERE x.order_id IN (SELECT order_id FROM s)
), d AS (
    SELECT status, count(*) AS k FROM e GROUP BY status
    UNION ALL SELECT 'PENDING', -count(*) FROM e
), n AS (
    INSERT INTO order_status_counts (status, slot, n) SELECT status, $16, k FROM d WHERE k <> 0
    ON CONFLICT (status, slot) DO UPDATE SET n = order_status_counts.n + excluded.n
), w AS (
    INSERT INTO saga_ends (second, status, slot, n)
    SELECT floor(extract(epoch FROM $7::timestamptz))::bigint, status, $16, count(*)
    FROM e GROUP BY status
    ON CONFLICT (second, status, slot) DO UPDATE SET n = saga_ends.n + excluded.n
), o AS ({outbox.insert_statement(18, "m.saga_id IN (SELECT order_id FROM s)")})
{outbox.written_rows("s", "o")}
"""


async def save(
    conn: asyncpg.Connection,
    changes: Sequence[tuple[StoredSaga, Decision]],
    now: float,
    out: Sequence[Outgoing] = (),
) -> set[str]:
    """Write the new states, their history records, the ends of orders and the outgoing
    messages, in one statement (so in one transaction of its own if the caller has none
    open).

    A saga is written only if it still has the steps it was read with, and with it its
    history, its order's end and the messages it emits (those whose saga id is its order
    id). Returns the order ids of the sagas written.
    """
    if not changes and not out:
        return set()
    at = ts(now)
    ids, statuses, states, deadlines, steps, terminal, was = [], [], [], [], [], [], []
    h_ids, h_seq, h_at, h_status, h_event, h_detail = [], [], [], [], [], []
    ended_ids, ended_status = [], []
    # In order id order: concurrent statements take the row locks of their sagas in one order.
    for stored, decision in sorted(changes, key=lambda change: change[1].saga.order_id):
        saga = decision.saga
        ids.append(saga.order_id)
        statuses.append(saga.status.value)
        states.append(encode_state(saga))
        deadlines.append(saga.deadline)
        steps.append(stored.after(decision).steps)
        terminal.append(saga.status in TERMINAL)
        was.append(stored.steps)
        for i, step in enumerate(decision.history, start=stored.steps + 1):
            h_ids.append(saga.order_id)
            h_seq.append(i)
            h_at.append(step.at)
            h_status.append(step.saga_status.value)
            h_event.append(step.event)
            h_detail.append(step.detail)
        if saga.status in TERMINAL and stored.saga.status not in TERMINAL:
            ended_ids.append(saga.order_id)
            ended_status.append(ORDER_STATUS[saga.status])
    rows = await conn.fetch(
        _SAVE,
        *(ids, statuses, states, deadlines, steps, terminal, at),
        *(h_ids, h_seq, h_at, h_status, h_event, h_detail),
        *(ended_ids, ended_status, random.randrange(COUNT_SLOTS)),
        was,
        *outbox.insert_args(out),
    )
    written, _ = outbox.stage_written(rows, out)
    return written


# --- reads for the HTTP API ----------------------------------------------------------


class OrderView(msgspec.Struct, frozen=True, rename="camel"):
    order_id: str
    customer_id: str
    items: tuple[c.LineItem, ...]
    total_amount: int
    currency: str
    status: str
    saga_status: str
    reason: str | None
    payment_id: str | None
    reservation_id: str | None
    created_at: str
    updated_at: str
    history: tuple[HistoryView, ...] = ()


class HistoryView(msgspec.Struct, frozen=True, rename="camel"):
    at: str
    saga_status: str
    event: str
    detail: str | None


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).isoformat(timespec="milliseconds")


def _view(row: asyncpg.Record, history: tuple[HistoryView, ...] = ()) -> OrderView:
    saga = decode_state(row["state"])
    return OrderView(
        order_id=row["order_id"], customer_id=row["customer_id"],
        items=_items_decoder.decode(row["items"]), total_amount=row["total_amount"],
        currency=row["currency"], status=order_status(saga.status), saga_status=saga.status.value,
        reason=saga.reason, payment_id=saga.payment_id, reservation_id=saga.reservation_id,
        created_at=_iso(row["created_at"]), updated_at=_iso(row["updated_at"]), history=history,
    )  # fmt: skip


_SELECT_VIEW = (
    "SELECT o.order_id, o.customer_id, o.items::text AS items, o.total_amount, o.currency,"
    " o.created_at, s.updated_at, s.state FROM orders o JOIN sagas s USING (order_id)"
)


async def get_order(conn: asyncpg.Connection, order_id: str) -> OrderView | None:
    row = await conn.fetchrow(_SELECT_VIEW + " WHERE o.order_id = $1", order_id)
    if row is None:
        return None
    steps = await conn.fetch(
        "SELECT at, saga_status, event, detail FROM saga_history WHERE order_id = $1 ORDER BY seq",
        order_id,
    )
    history = tuple(
        HistoryView(_iso(s["at"]), s["saga_status"], s["event"], s["detail"]) for s in steps
    )
    return _view(row, history)


def _list(where: str, newest: tuple[str, str]) -> str:
    time, order_id = newest
    return (
        _SELECT_VIEW + f" WHERE ($1::text IS NULL OR o.customer_id = $1) AND {where}"
        f" AND ($2::timestamptz IS NULL OR ({time}, {order_id}) < ($2, $3))"
        f" ORDER BY {time} DESC, {order_id} DESC LIMIT $4"
    )


_LIST = _list("TRUE", ("o.created_at", "o.order_id"))
# Each status's predicate is its index's: sagas_in_flight, or sagas_ended_newest.
_LIST_BY_STATUS = {
    "PENDING": _list(
        "s.status NOT IN ('COMPLETED', 'FAILED', 'COMPENSATED')", ("s.started_at", "s.order_id")
    ),
    **{
        order: _list(
            f"s.ended_at IS NOT NULL AND s.status = '{saga.value}'", ("s.started_at", "s.order_id")
        )
        for saga, order in ORDER_STATUS.items()
    },
}


async def list_orders(
    conn: asyncpg.Connection,
    customer_id: str | None,
    status: str | None,
    limit: int,
    after: tuple[datetime.datetime, str] | None,
) -> list[OrderView]:
    """Newest first; `after` is the (created_at, order_id) of the previous page's last order.

    Orders of one status are found through their sagas' indexes (in flight, or ended with
    that status), in the order of the sagas' started_at, which is the orders' created_at."""
    sql = _LIST if status is None else _LIST_BY_STATUS[status]
    rows = await conn.fetch(
        sql, customer_id, after[0] if after else None, after[1] if after else None, limit
    )
    return [_view(r) for r in rows]


async def created_at_of(conn: asyncpg.Connection, order_id: str) -> datetime.datetime | None:
    value: datetime.datetime | None = await conn.fetchval(
        "SELECT created_at FROM orders WHERE order_id = $1", order_id
    )
    return value


# --- reads for metrics ---------------------------------------------------------------


class SagaStats(msgspec.Struct, frozen=True):
    status_counts: dict[str, int]
    in_flight: int
    oldest_in_flight_age_s: float
    ended_recent: int
    completed_recent: int
    compensations_recent: int
    compensated_recent: int


async def prune_saga_ends(conn: asyncpg.Connection, keep_s: float) -> None:
    """Drop the counts of sagas that ended more than `keep_s` ago."""
    await conn.execute(
        "DELETE FROM saga_ends"
        " WHERE second < floor(extract(epoch FROM now()) - $1::float8)::bigint",
        keep_s,
    )


async def saga_stats(conn: asyncpg.Connection, window_s: float) -> SagaStats:
    counts = {r["status"]: int(r["n"]) for r in await conn.fetch(
        "SELECT status, sum(n) AS n FROM order_status_counts GROUP BY status")}  # fmt: skip
    # The ended sagas are counted per second as they end (saga_ends): at 1,000 orders/s the
    # window holds 300,000 of them, too many to read every 5 s. The compensations, a tenth
    # as many, are read from the sagas, in one pass over the window's index range.
    row = await conn.fetchrow(
        "SELECT"
        " (SELECT extract(epoch FROM now() - min(started_at)) FROM sagas"
        "   WHERE status NOT IN ('COMPLETED', 'FAILED', 'COMPENSATED')) AS oldest,"
        " e.ended, e.completed, c.compensations, c.compensated"
        " FROM (SELECT coalesce(sum(n), 0)::bigint AS ended,"
        "              coalesce(sum(n) FILTER (WHERE status = 'CONFIRMED'), 0)::bigint AS completed"
        "       FROM saga_ends"
        "       WHERE second > floor(extract(epoch FROM now()) - $1::float8)::bigint) AS e,"
        "      (SELECT count(*) AS compensations,"
        "              count(*) FILTER (WHERE status = 'COMPENSATED') AS compensated"
        "       FROM sagas WHERE compensating_at > now() - make_interval(secs => $1::float8)) AS c",
        window_s,
    )
    assert row is not None
    return SagaStats(
        status_counts=counts,
        in_flight=counts.get("PENDING", 0),
        oldest_in_flight_age_s=float(row["oldest"] or 0.0),
        ended_recent=row["ended"], completed_recent=row["completed"],
        compensations_recent=row["compensations"], compensated_recent=row["compensated"],
    )  # fmt: skip
