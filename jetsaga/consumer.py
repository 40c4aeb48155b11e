"""The one consumer loop every worker runs: the ack policy, written once.

It takes a batch from a durable pull consumer (a standing pull, `jetsaga.puller`: whatever
arrived while the last batch was handled), decodes it, and hands the decoded batch to a
handler that applies it in one transaction. Then:

- success: ack every message (after the handler's commit);
- a message that can never succeed (undecodable, fails its schema, `PermanentError`):
  dead letter, then `term`;
- a dependency that is away (`TransientError`, lost database connection, deadlock): keep the
  batch, heartbeat it with `in_progress()` and retry it with back-off, so an outage does not
  burn deliveries (with `ConsumerSpec.relief`, a second taker handles what arrives
  meanwhile);
- any other failure of a batch: retry message by message, so one bad message does not fail
  its neighbours; a failing message is nak'ed with a delay that grows with its delivery
  count, and on its last delivery it is dead-lettered and terminated.

A consumer off the path an order waits on may be paced (`ConsumerSpec.pace_s`): its batches
start at most that often, so that under load it takes bigger ones, less often.

Handlers never see a NATS `Msg`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsaga import contracts, db, tracing
from jetsaga.contracts import MAX_DELIVER, ConsumerSpec
from jetsaga.metrics import (
    HANDLER_DURATION,
    MESSAGE_WAIT,
    MESSAGES_DEAD_LETTERED,
    MESSAGES_PROCESSED,
    observe_each,
)
from jetsaga.puller import StandingPull
from jetsaga.waits import either, pause

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """The message can never be applied: dead-letter it at once."""


class TransientError(Exception):
    """A dependency is away: hold the message and retry without spending a delivery."""


class _Abandoned(Exception):
    """Shutting down while a batch was held: leave it unacked for another worker."""


_TRANSIENT = (
    TransientError,
    *db.UNAVAILABLE,
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    nats.errors.Error,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One decoded message, as a handler sees it."""

    subject: str
    message: contracts.AnyMessage
    msg_id: str  # Nats-Msg-Id, the causation id of whatever the handler emits
    num_delivered: int
    # The context of the messages a handler emits: this delivery's span with tracing on,
    # else the traceparent the message arrived with.
    traceparent: str | None = None
    span: tracing.Span | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """Inbox key of the logical message; equal across redeliveries and replays."""
        return contracts.message_id(self.subject, self.message.order_id)


# A handler applies a batch and returns how many of its messages were duplicates.
Handler = Callable[[Sequence[Delivery]], Awaitable[int]]
DeadLetterSink = Callable[[str, Msg, str], Awaitable[None]]


_ACK_TOKENS = 9  # the reply subject of a stream message without a domain


def ack_info(msg: Msg) -> tuple[int, float]:
    """How many times this message has been delivered, and when its stream stored it (epoch
    seconds), read straight from its reply subject (`$JS.ACK.<stream>.<consumer>.<delivered>.
    <stream seq>.<consumer seq>.<nanoseconds>.<pending>`, or with a domain and an account
    hash before the stream). nats-py's `msg.metadata` builds a dataclass, two sequence pairs
    and a datetime to say the same: 6 % of the inventory worker's CPU at 800 orders/s."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == _ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]), int(tokens[7]) / 1e9
    metadata = msg.metadata
    return metadata.num_delivered, metadata.timestamp.timestamp()


def deliveries_of(msg: Msg) -> int:
    """How many times this message has been delivered (`ack_info`)."""
    return ack_info(msg)[0]


def nak_delay(num_delivered: int) -> float:
    """Back-off before the next delivery after a failed one: 1 s, 4 s, 16 s, …"""
    return float(min(4 ** (num_delivered - 1), 60))


class _Heartbeat:
    """Tells the server that a batch still held is being worked on, so that its ack wait does
    not run out: `in_progress()` for each message from `every_s` on, then every `every_s`.
    Nearly every batch ends long before; until the first beat it is only a timer, not a task
    made and cancelled for each batch."""

    def __init__(self, msgs: list[Msg], every_s: float) -> None:
        self._msgs = msgs
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(every_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        while True:
            for msg in self._msgs:
                try:
                    await msg.in_progress()
                except nats.errors.Error:
                    pass  # reconnecting; the ack timer decides
            await asyncio.sleep(self._every_s)

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


# Set while the loop running in this task holds a batch through an outage: its relief's cue.
_holding: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "consumer_holding", default=None
)


class Consumer:
    def __init__(
        self,
        nc: NATS,
        spec: ConsumerSpec,
        handler: Handler,
        dead_letter: DeadLetterSink,
        *,
        batch: int = 200,
        retry_delay: Callable[[int], float] = nak_delay,
    ) -> None:
        self.spec = spec
        self._nc = nc
        self._handler = handler
        self._dead_letter = dead_letter
        self._batch = batch
        self._retry_delay = retry_delay
        self._heartbeat_s = max(1.0, min(10.0, spec.ack_wait_s / 3))
        self._stop = asyncio.Event()
        # Series exist from the start, so dashboards and rules see zeros, not gaps. The
        # children are kept: looking one up takes a lock and a tuple, once per batch.
        self._processed = {
            outcome: MESSAGES_PROCESSED.labels(spec.durable, outcome)
            for outcome in ("acked", "duplicate", "nacked", "dead_lettered")
        }
        MESSAGES_DEAD_LETTERED.labels(spec.durable)
        self._duration = HANDLER_DURATION.labels(spec.durable)
        self._wait = MESSAGE_WAIT.labels(spec.durable)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        async with asyncio.TaskGroup() as group:
            for _ in range(self.spec.loops):
                # One standing pull per loop, each with its own inbox and credit.
                pull = StandingPull(
                    self._nc, self.spec.stream, self.spec.durable, credit=self._batch
                )
                await pull.start()
                holding = asyncio.Event()
                group.create_task(self._loop(pull, stop, holding))
                if self.spec.relief:
                    group.create_task(self._relieve(pull, stop, holding))

    async def _loop(self, pull: StandingPull, stop: asyncio.Event, holding: asyncio.Event) -> None:
        _holding.set(holding)  # this task's own context: its batches set it while held
        pace = self.spec.pace_s
        began = float("-inf")  # the last batch's start: the first message is taken at once
        try:
            while not stop.is_set():
                if pace and time.monotonic() < began + pace:
                    await pause(stop, began + pace - time.monotonic())
                    continue  # told to stop meanwhile, or paused long enough
                msgs = await self._take(pull)
                if msgs:
                    began = time.monotonic()
                await self.process(msgs)
        finally:
            await self._hand_back(await pull.stop())

    async def _take(self, pull: StandingPull) -> list[Msg]:
        """What arrived on the pull, waiting up to a second; nothing while disconnected or
        reconnecting (nats-py reconnects by itself)."""
        try:
            return await pull.take(self._batch, wait_s=1.0)
        except nats.errors.Error:
            await asyncio.sleep(0.5)
            return []

    async def _relieve(
        self, pull: StandingPull, stop: asyncio.Event, holding: asyncio.Event
    ) -> None:
        """Take from a loop's pull while that loop holds a batch through an outage."""
        while not stop.is_set():
            await either(holding, stop)
            while holding.is_set() and not stop.is_set():
                await self.process(await self._take(pull))

    async def _hand_back(self, msgs: list[Msg]) -> None:
        """Delivered but never handled when the loop stopped: redeliver them now rather
        than after the ack wait, to whichever worker is still running."""
        for msg in msgs:
            try:
                await msg.nak()
            except nats.errors.Error:
                return  # connection gone: the ack wait redelivers them

    async def process(self, msgs: Sequence[Msg]) -> None:
        if not msgs:  # nothing arrived in time: not a batch, so not a duration
            return
        started, now = time.perf_counter(), time.time()
        decoded: list[tuple[Msg, Delivery]] = []
        waits: list[float] = []
        for msg in msgs:
            try:
                delivery, stored_at = self._decode(msg)
                decoded.append((msg, delivery))
                waits.append(max(0.0, now - stored_at))
            except PermanentError as exc:
                log.error(
                    "message failed for good",
                    extra={**self._raw_fields(msg, "dead_lettered"), "error": str(exc)},
                )
                await self._give_up(msg, str(exc))
        if decoded:
            # How long each message waited, from its stream to this batch: a saga's time
            # between the hops. A redelivered one counts from its first storing.
            observe_each(self._wait, waits)
            await self._apply(decoded)
        self._duration.observe(time.perf_counter() - started)

    def _decode(self, msg: Msg) -> tuple[Delivery, float]:
        """The delivery, and when its stream stored it (epoch seconds, the server's clock)."""
        headers = msg.headers or {}
        try:
            message = contracts.decode(msg.subject, msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PermanentError(f"undecodable {msg.subject}: {exc}") from None
        except KeyError:
            raise PermanentError(f"subject {msg.subject} is not in the contract") from None
        deliveries, stored_at = ack_info(msg)
        incoming = headers.get(contracts.TRACEPARENT)
        traceparent, span = tracing.consume(
            msg.subject, self.spec.durable, message.order_id, deliveries, incoming
        )
        delivery = Delivery(
            subject=msg.subject,
            message=message,
            msg_id=headers.get(contracts.MSG_ID, ""),
            num_delivered=deliveries,
            traceparent=traceparent,
            span=span,
        )
        return delivery, stored_at

    async def _apply(self, batch: list[tuple[Msg, Delivery]]) -> None:
        heartbeat = _Heartbeat([m for m, _ in batch], self._heartbeat_s)
        try:
            await self._apply_held(batch)
        except _Abandoned:
            log.info("left a held batch for redelivery", extra={"durable": self.spec.durable})
            for _, delivery in batch:
                tracing.finish(delivery.span, "abandoned")
        finally:
            heartbeat.stop()

    async def _apply_held(self, batch: list[tuple[Msg, Delivery]]) -> None:
        failure = await self._run_held(batch)
        if failure is None:
            await self._ack(batch)
            return
        if len(batch) == 1:
            await self._fail(*batch[0], failure)
            return
        for item in batch:  # isolate the bad message from its neighbours
            failure = await self._run_held([item])
            if failure is None:
                await self._ack([item])
            else:
                await self._fail(*item, failure)

    async def _run_held(self, batch: list[tuple[Msg, Delivery]]) -> BaseException | None:
        """Run the handler; while a dependency is away, hold the batch and retry."""
        holding = _holding.get()
        try:
            return await self._retry_held(batch, holding)
        finally:
            if holding is not None:
                holding.clear()

    async def _retry_held(
        self, batch: list[tuple[Msg, Delivery]], holding: asyncio.Event | None
    ) -> BaseException | None:
        attempt = 0
        while True:
            try:
                duplicates = await self._handler([d for _, d in batch])
            except _TRANSIENT as exc:
                if self._stop.is_set():
                    raise _Abandoned from exc
                attempt += 1
                if holding is not None:
                    holding.set()  # the loop's relief takes over what arrives meanwhile
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "dependency unavailable, holding batch",
                        extra={
                            "durable": self.spec.durable,
                            "size": len(batch),
                            "error": repr(exc),
                            "attempt": attempt,
                        },
                    )
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            except Exception as exc:
                return exc
            else:
                if duplicates:
                    self._processed["duplicate"].inc(duplicates)
                self._processed["acked"].inc(len(batch) - duplicates)
                return None

    def _fields(self, delivery: Delivery, outcome: str) -> dict[str, object]:
        """What every log line about one delivery carries."""
        return {
            "orderId": delivery.message.order_id,
            "subject": delivery.subject,
            "durable": self.spec.durable,
            "deliveries": delivery.num_delivered,
            "outcome": outcome,
            "traceId": tracing.trace_id(delivery.traceparent),
        }

    def _raw_fields(self, msg: Msg, outcome: str) -> dict[str, object]:
        """The same, for a message that could not be decoded."""
        headers = msg.headers or {}
        return {
            "orderId": headers.get(contracts.SAGA_ID, ""),
            "subject": msg.subject,
            "durable": self.spec.durable,
            "deliveries": deliveries_of(msg),
            "outcome": outcome,
            "traceId": tracing.trace_id(headers.get(contracts.TRACEPARENT)),
        }

    async def _ack(self, batch: Sequence[tuple[Msg, Delivery]]) -> None:
        # Routine successes log at debug; the check is made once per batch, so that the
        # per-message line costs nothing when debug is off.
        debug = log.isEnabledFor(logging.DEBUG)
        for msg, delivery in batch:
            try:
                await msg.ack()
            except nats.errors.Error:
                # The effect is committed; a redelivery will change nothing (idempotent).
                log.warning("ack failed", extra=self._fields(delivery, "acked"))
            tracing.finish(delivery.span, "acked")
            if debug:
                log.debug("handled", extra=self._fields(delivery, "acked"))

    async def _fail(self, msg: Msg, delivery: Delivery, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PermanentError) or delivery.num_delivered >= MAX_DELIVER:
            log.error(
                "message failed for good",
                extra={**self._fields(delivery, "dead_lettered"), "error": error},
            )
            tracing.finish(delivery.span, "dead_lettered", error)
            await self._give_up(msg, error)
            return
        delay = self._retry_delay(delivery.num_delivered)
        log.warning(
            "message failed, will be redelivered",
            exc_info=exc,
            extra={**self._fields(delivery, "nacked"), "delaySeconds": delay},
        )
        self._processed["nacked"].inc()
        tracing.finish(delivery.span, "nacked", error)
        await msg.nak(delay=delay)

    async def _give_up(self, msg: Msg, error: str) -> None:
        try:
            await self._dead_letter(self.spec.durable, msg, error)
        except Exception:
            # Not recorded, so not terminated: it will come back and be tried again.
            log.exception("dead letter not written", extra=self._raw_fields(msg, "nacked"))
            await msg.nak(delay=5.0)
            return
        self._processed["dead_lettered"].inc()
        await msg.term()
