"""The transactional outbox: messages are written in the transaction of the state change
that causes them, and a relay publishes them to JetStream afterwards.

The relay claims rows with `FOR UPDATE SKIP LOCKED` (so replicas share the work), publishes a
claimed batch with all publishes in flight at once, and deletes the rows in the same
transaction only after every publish was acknowledged. A crash between publish and delete
re-publishes the same `Nats-Msg-Id`, which JetStream drops inside its duplicate window and
the consumer's inbox drops after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext

from jetsaga import contracts
from jetsaga.metrics import OUTBOX_LAG
from jetsaga.publisher import Publisher

log = logging.getLogger(__name__)

RELAY_BATCH = 500
IDLE_POLL_S = 0.5  # backstop for rows left by a crashed replica; the hot path is wake()


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


_INSERT = """
INSERT INTO outbox (subject, msg_id, payload, saga_id, causation_id, traceparent)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[])
"""


async def enqueue(conn: asyncpg.Connection, messages: Sequence[Outgoing]) -> None:
    """Write messages to the outbox inside the caller's transaction."""
    if not messages:
        return
    await conn.execute(
        _INSERT,
        [m.subject for m in messages],
        [m.msg_id for m in messages],
        [m.payload for m in messages],
        [m.saga_id for m in messages],
        [m.causation_id for m in messages],
        [m.traceparent for m in messages],
    )


def headers_of(row: Any) -> dict[str, str]:
    headers = {
        contracts.MSG_ID: row["msg_id"],
        contracts.SAGA_ID: row["saga_id"],
        contracts.CAUSATION_ID: row["causation_id"],
    }
    if row["traceparent"]:
        headers[contracts.TRACEPARENT] = row["traceparent"]
    return headers


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self._pool = pool
        # nats-py has no public getter for a context's client or timeout; the relay publishes
        # through a Publisher on the same client, with the context's timeout for each batch.
        self._publisher = Publisher(js._nc)
        self._timeout: float = js._timeout
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a commit that wrote to the outbox."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.publish_batch() == RELAY_BATCH:
                    pass
                failures = 0
            except Exception:
                failures += 1
                log.warning("outbox relay failed; will retry", exc_info=failures == 1)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def flush(self) -> None:
        """Publish everything pending now (used when draining on shutdown)."""
        while await self.publish_batch() == RELAY_BATCH:
            pass

    async def publish_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload, saga_id, causation_id, traceparent,"
                " extract(epoch from created_at) AS created FROM outbox"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                RELAY_BATCH,
            )
            if not rows:
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
