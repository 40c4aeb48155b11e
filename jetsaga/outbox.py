"""The transactional outbox: messages are written in the transaction of the state change
that causes them, and a relay publishes them to JetStream afterwards.

The hot path never reads the outbox back: a writer opens its transaction with
`relay.transaction()`, `enqueue` stages each row (its id and message) on that transaction,
and once it commits the committing task itself puts the staged messages on the wire, all in
flight at once, before it gives its connection back: no turn of the event loop between a
commit and its publish. The relay's task collects their acks and deletes the rows of the
acknowledged ones. A row whose
publish failed, or whose writer died before publishing, is still in the table: a backstop
poll claims rows older than a few seconds with `FOR UPDATE SKIP LOCKED` (so replicas share
the work) and publishes them the same way.

Deletes are committed without waiting for the WAL flush (`synchronous_commit = off`): a
delete lost in a crash only re-publishes a message under its `Nats-Msg-Id`, which JetStream
drops inside its duplicate window and the idempotent consumer ignores after it, exactly as
for a crash between publish and delete.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NamedTuple

import asyncpg
import msgspec
from nats.js import JetStreamContext

from jetsaga import contracts
from jetsaga.metrics import OUTBOX_LAG
from jetsaga.publisher import Message, Publisher, Sending

log = logging.getLogger(__name__)

RELAY_BATCH = 500
POLL_S = 1.0  # how often the backstop looks for rows the hot path did not publish
STALE_AFTER_S = 5.0  # a row this old was not published from memory, or failed to be
DELETE_EVERY_S = 0.2  # published rows are deleted together, at most this late


class Outgoing(msgspec.Struct, frozen=True):
    subject: str
    msg_id: str
    payload: bytes
    saga_id: str
    causation_id: str = ""
    traceparent: str | None = None


def outgoing(
    message: contracts.AnyMessage, causation_id: str = "", traceparent: str | None = None
) -> Outgoing:
    subject = contracts.subject_of(message)
    return Outgoing(
        subject=subject,
        msg_id=contracts.message_id(subject, message.order_id),
        payload=contracts.encode(message),
        saga_id=message.order_id,
        causation_id=causation_id,
        traceparent=traceparent,
    )


class Staged(msgspec.Struct, frozen=True):
    """Rows written by one transaction, and their messages (the same set, in any order)."""

    ids: list[int]
    messages: Sequence[Outgoing]


# The rows staged by the transaction running in this task, if it was opened by the relay.
_stage: contextvars.ContextVar[list[Staged] | None] = contextvars.ContextVar(
    "outbox_stage", default=None
)


def insert_statement(first: int, where: str = "") -> str:
    """`INSERT … RETURNING id` of messages passed as the six arrays of `insert_args`, from
    parameter `$first` on: to write the outbox in a statement that does more. `where`, if
    given, keeps only some of them (the columns are named as in the table, of alias `m`)."""
    p = [f"${first + i}" for i in range(6)]
    return (
        "INSERT INTO outbox (subject, msg_id, payload, saga_id, causation_id, traceparent)"
        f" SELECT * FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::bytea[],"
        f" {p[3]}::text[], {p[4]}::text[], {p[5]}::text[])"
        " AS m (subject, msg_id, payload, saga_id, causation_id, traceparent)"
        f"{f' WHERE {where}' if where else ''} RETURNING id"
    )


def insert_args(messages: Sequence[Outgoing | None]) -> list[list[Any]]:
    """The six arrays of `insert_statement`; None is a row of NULLs, for a statement that
    writes some of the messages it is given."""
    return [
        [None if m is None else m.subject for m in messages],
        [None if m is None else m.msg_id for m in messages],
        [None if m is None else m.payload for m in messages],
        [None if m is None else m.saga_id for m in messages],
        [None if m is None else m.causation_id for m in messages],
        [None if m is None else m.traceparent for m in messages],
    ]


def stage(ids: list[int], messages: Sequence[Outgoing]) -> None:
    """Rows just written by `ids`, for publishing when the transaction of
    `OutboxRelay.transaction()` running in this task commits; outside one, nothing to do:
    the backstop poll publishes them."""
    staged = _stage.get()
    if staged is not None and ids:
        staged.append(Staged(ids, messages))


def written_rows(written: str, sent: str, claimed: str | None = None) -> str:
    """The final SELECT of a statement that writes a change, its messages and, if it has
    any, its inbox claims only on a condition: (kind, value) rows from its CTEs `written`
    (order ids of the changes it wrote), `sent` (outbox ids) and `claimed` (inbox keys),
    which `stage_written` reads."""
    claims = f" UNION ALL SELECT 'claimed', msg_key FROM {claimed}" if claimed else ""
    return (
        f"SELECT 'written' AS kind, order_id AS value FROM {written}"
        f" UNION ALL SELECT 'sent', id::text FROM {sent}{claims}"
    )


def stage_written(rows: Sequence[Any], messages: Sequence[Outgoing]) -> tuple[set[str], set[str]]:
    """For the rows of `written_rows`: stages the messages of the changes written (their
    `saga_id`); returns the ids written and the keys claimed."""
    written = {value for kind, value in rows if kind == "written"}
    stage([int(value) for kind, value in rows if kind == "sent"],
          [m for m in messages if m.saga_id in written])  # fmt: skip
    return written, {value for kind, value in rows if kind == "claimed"}


_ENQUEUE = f"WITH ins AS ({insert_statement(1)}) SELECT array_agg(id) FROM ins"


async def enqueue(conn: asyncpg.Connection, messages: Sequence[Outgoing]) -> None:
    """Write messages to the outbox inside the caller's transaction. In a transaction of
    `OutboxRelay.transaction()` they are published as soon as it commits; in any other,
    by the backstop poll."""
    if messages:
        stage(await conn.fetchval(_ENQUEUE, *insert_args(messages)), messages)


def headers_of(row: Any) -> dict[str, str]:
    """Headers of an outbox row."""
    return _headers(row["msg_id"], row["saga_id"], row["causation_id"], row["traceparent"])


def _headers(
    msg_id: str, saga_id: str, causation_id: str, traceparent: str | None
) -> dict[str, str]:
    headers = {
        contracts.MSG_ID: msg_id,
        contracts.SAGA_ID: saga_id,
        contracts.CAUSATION_ID: causation_id,
    }
    if traceparent:
        headers[contracts.TRACEPARENT] = traceparent
    return headers


# Opens a transaction on a pooled connection: `OutboxRelay.transaction`, or `unstaged(pool)`.
Transaction = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
# A pooled connection with no transaction, for a caller whose every write is one statement:
# `OutboxRelay.statements`, or `pool.acquire`.
Statements = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


def unstaged(pool: asyncpg.Pool) -> Transaction:
    """Plain transactions: their outbox rows wait for a relay's backstop poll."""

    @asynccontextmanager
    async def transaction() -> AsyncIterator[asyncpg.Connection]:
        async with pool.acquire() as conn, conn.transaction():
            yield conn

    return transaction


class _InFlight(NamedTuple):
    committed_at: float  # monotonic
    ids: list[int]  # the outbox rows of `messages`
    messages: list[Message]
    sending: Sending


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self._pool = pool
        # nats-py has no public getter for a context's client or timeout; the relay publishes
        # through a Publisher on the same client, with the context's timeout for each batch.
        self._publisher = Publisher(js._nc)
        self._timeout: float = js._timeout
        self._kick = asyncio.Event()
        self._sending: deque[_InFlight] = deque()  # published, acks still to collect
        self._published: list[int] = []  # ids whose rows are still to delete
        self._poll_due = 0.0  # monotonic time of the next backstop poll
        self._delete_due = 0.0  # monotonic time by which published rows are deleted

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction whose outbox rows are published once it
        commits (nothing is, if it rolls back)."""
        staged: list[Staged] = []
        token = _stage.set(staged)
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    yield conn
                # Published before the connection goes back to the pool: asyncpg releases it
                # in a task of its own, and waiting for that would hold every message of the
                # batch for a turn of the event loop.
                await self.committed(staged)
        finally:
            _stage.reset(token)

    @asynccontextmanager
    async def statements(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection with no transaction open: each statement commits on its own,
        and the outbox rows it writes are published once the block ends, even if a later
        statement failed."""
        staged: list[Staged] = []
        token = _stage.set(staged)
        try:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                finally:
                    await self.committed(staged)  # before the release, as in `transaction`
        finally:
            _stage.reset(token)

    async def committed(self, staged: Sequence[Staged]) -> None:
        """Publish the rows of a committed transaction now: their bytes are on the wire when
        this returns, and the relay's task collects the acks. It does not wait for them,
        and never raises: a row whose publish fails stays in the table for the poll."""
        staged = [s for s in staged if s.ids]
        if not staged:
            return
        messages = [
            (m.subject, m.payload, _headers(m.msg_id, m.saga_id, m.causation_id, m.traceparent))
            for s in staged
            for m in s.messages
        ]
        try:
            sending = await self._publisher.send(messages, self._timeout)
        except Exception as exc:
            log.warning("outbox publish failed; the backstop poll will retry",
                        extra={"error": repr(exc)})  # fmt: skip
            return
        ids = [i for s in staged for i in s.ids]
        self._sending.append(_InFlight(time.monotonic(), ids, messages, sending))
        self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            due = min(self._delete_due, self._poll_due) if self._published else self._poll_due
            try:
                async with asyncio.timeout(due - time.monotonic()):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.publish_ready()
                polling = time.monotonic() >= self._poll_due
                # One delete for the rows of many commits; always before a poll, which
                # would find them.
                if polling or time.monotonic() >= self._delete_due:
                    await self._delete_published()
                if polling:
                    self._poll_due = time.monotonic() + POLL_S
                    while await self.publish_batch(STALE_AFTER_S) == RELAY_BATCH:
                        pass
                failures = 0
            except Exception:
                failures += 1
                log.warning("outbox relay failed; will retry", exc_info=failures == 1)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def flush(self) -> None:
        """Publish everything pending now (used when draining on shutdown)."""
        await self.publish_ready()
        await self._delete_published()
        while await self.publish_batch() == RELAY_BATCH:
            pass

    async def publish_ready(self) -> int:
        """Collect the acks of what committed transactions published, oldest first, and mark
        their rows for deletion; returns how many messages were acked. Rows of a failed
        publish are dropped from memory, not from the table: the poll takes them (the first
        failure is raised once all are collected)."""
        acked = 0
        failed: Exception | None = None
        # Only those sent so far: under steady load more keep coming, and the caller's
        # deletes and poll must get their turn.
        for _ in range(len(self._sending)):
            flight = self._sending[0]
            OUTBOX_LAG.set(time.monotonic() - flight.committed_at)
            try:
                await self._publisher.settle(flight.sending, flight.messages)
            except Exception as exc:
                failed = failed or exc
            else:
                if not self._published:
                    self._delete_due = time.monotonic() + DELETE_EVERY_S
                self._published.extend(flight.ids)
                acked += len(flight.messages)
            self._sending.popleft()
        OUTBOX_LAG.set(time.monotonic() - self._sending[0].committed_at if self._sending else 0)
        if failed is not None:
            raise failed
        return acked

    async def _delete_published(self) -> None:
        if not self._published:
            return
        ids, self._published = self._published, []
        # Our own integers, so a literal is safe. Two statements in one simple query are one
        # implicit transaction, which SET LOCAL applies to: one round trip. (No explicit
        # BEGIN: after an error it would leave the pooled connection in a failed transaction.)
        literal = ",".join(map(str, ids))
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "SET LOCAL synchronous_commit = off;"
                    f" DELETE FROM outbox WHERE id = ANY('{{{literal}}}'::bigint[])"
                )
        except BaseException:
            self._published[:0] = ids  # published all the same: try the delete again
            raise

    async def publish_batch(self, min_age_s: float = 0.0) -> int:
        """Claim up to RELAY_BATCH rows at least `min_age_s` old, publish them and delete
        them in the same transaction; returns how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload, saga_id, causation_id, traceparent,"
                " extract(epoch from created_at) AS created FROM outbox"
                " WHERE created_at <= now() - make_interval(secs => $2)"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                RELAY_BATCH,
                min_age_s,
            )
            if not rows:
                if not self._sending:
                    OUTBOX_LAG.set(0)
                return 0
            OUTBOX_LAG.set(max(0.0, time.time() - float(rows[0]["created"])))
            await self._publisher.publish_batch(
                [(r["subject"], r["payload"], headers_of(r)) for r in rows], self._timeout
            )
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        return len(rows)
