"""The dead-letter stream (SPEC §4.4): writing `saga.errors.<durable>` entries.

Two paths lead here. A worker that sees a message fail its last delivery, or that cannot
decode it, writes the entry itself and terminates the message. A message whose deliveries
ran out by ack timeouts (its worker died each time) is only announced by JetStream's
MAX_DELIVERIES advisory, which the SAGA_ADVISORIES stream captures and `watch_advisories`
turns into an entry. Both use the `Nats-Msg-Id` `dlq:<durable>:<stream seq>`, so a message
dead-lettered by both paths is recorded once.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetsaga import contracts
from jetsaga.contracts import DEAD_LETTER_PREFIX, DeadLetter
from jetsaga.metrics import MESSAGES_DEAD_LETTERED

log = logging.getLogger(__name__)

ADVISORY_DURABLE = "dead-letter-advisories"


class MaxDeliveriesAdvisory(msgspec.Struct, frozen=True):
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_advisory_decoder = msgspec.json.Decoder(MaxDeliveriesAdvisory)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class DeadLetters:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def from_msg(self, durable: str, msg: Msg, error: str) -> None:
        """A `DeadLetterSink` for the consumer loop."""
        meta = msg.metadata
        await self.write(
            DeadLetter(
                durable=durable,
                stream=meta.stream,
                stream_seq=meta.sequence.stream,
                subject=msg.subject,
                payload=msg.data,
                headers=dict(msg.headers or {}),
                delivery_count=meta.num_delivered,
                last_error=error,
                failed_at=now_iso(),
            )
        )

    async def write(self, letter: DeadLetter) -> None:
        ack = await self._js.publish(
            DEAD_LETTER_PREFIX + letter.durable,
            contracts.encode(letter),
            headers={
                contracts.MSG_ID: f"dlq:{letter.durable}:{letter.stream_seq}",
                contracts.SAGA_ID: letter.headers.get(contracts.SAGA_ID, ""),
            },
        )
        if not ack.duplicate:
            MESSAGES_DEAD_LETTERED.labels(letter.durable).inc()
            log.error(
                "dead-lettered",
                extra={
                    "durable": letter.durable,
                    "subject": letter.subject,
                    "orderId": letter.headers.get(contracts.SAGA_ID, ""),
                    "deliveries": letter.delivery_count,
                    "error": letter.last_error,
                    "deadLetterSeq": ack.seq,
                },
            )

    async def from_advisory(self, data: bytes) -> None:
        advisory = _advisory_decoder.decode(data)
        try:
            raw = await self._js._jsm.get_msg(advisory.stream, advisory.stream_seq)
            subject, payload = raw.subject or "", raw.data or b""
            headers = {k: str(v) for k, v in (raw.headers or {}).items()}
        except nats.js.errors.NotFoundError:
            subject, payload, headers = "", b"", {}
        await self.write(
            DeadLetter(
                durable=advisory.consumer,
                stream=advisory.stream,
                stream_seq=advisory.stream_seq,
                subject=subject,
                payload=payload,
                headers=headers,
                delivery_count=advisory.deliveries,
                last_error="deliveries exhausted by ack timeouts (worker died or hung)",
                failed_at=now_iso(),
            )
        )


async def watch_advisories(js: JetStreamContext, letters: DeadLetters, stop: asyncio.Event) -> None:
    """Turn MAX_DELIVERIES advisories into dead letters; every worker runs one."""
    sub = await js.pull_subscribe_bind(ADVISORY_DURABLE, stream="SAGA_ADVISORIES")
    while not stop.is_set():
        try:
            msgs = await sub.fetch(50, timeout=1.0)
        except TimeoutError:  # nats-py raises both its own and the builtin one
            continue
        except nats.errors.Error:
            await asyncio.sleep(0.5)
            continue
        for msg in msgs:
            try:
                await letters.from_advisory(msg.data)
            except msgspec.DecodeError:
                await msg.term()
            except Exception:
                log.exception("advisory not turned into a dead letter; will retry")
                await msg.nak(delay=2.0)
            else:
                await msg.ack()
