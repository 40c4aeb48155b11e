"""The order saga: a frozen state and one pure function, `transition`.

    STARTED → INVENTORY_RESERVED → PAYMENT_PROCESSING → PAYMENT_SUCCEEDED → COMPLETED
    STARTED → FAILED                                  (inventory.out_of_stock)
    PAYMENT_PROCESSING → COMPENSATING → COMPENSATED   (payments.failed, or a timeout)

No I/O, no clock, no ids: time comes in through `Context`, so a replay is deterministic.
A (state, event) pair with no transition returns the state unchanged and emits nothing.
Compensation runs in reverse order of the steps done: refund (whenever a charge may have
happened), then release the reservation, then COMPENSATED.
"""

from __future__ import annotations

import datetime
from enum import StrEnum

import msgspec

from jetsaga import contracts as c


class SagaStatus(StrEnum):
    STARTED = "STARTED"
    INVENTORY_RESERVED = "INVENTORY_RESERVED"
    PAYMENT_PROCESSING = "PAYMENT_PROCESSING"
    PAYMENT_SUCCEEDED = "PAYMENT_SUCCEEDED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.FAILED, SagaStatus.COMPENSATED})
ORDER_STATUS = {
    SagaStatus.COMPLETED: "CONFIRMED",
    SagaStatus.COMPENSATED: "CANCELLED",
    SagaStatus.FAILED: "FAILED",
}


def order_status(saga_status: SagaStatus) -> str:
    """The order's status: PENDING until its saga ends."""
    return ORDER_STATUS.get(saga_status, "PENDING")


class Saga(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    # Stored as a MessagePack array of the fields in this order (order_service.store): add
    # a field at the end only, with a default, so that states written before still decode.
    order_id: str
    customer_id: str
    amount: int
    currency: str
    payment_method: str
    status: SagaStatus = SagaStatus.STARTED
    started_at: float  # epoch seconds
    saga_deadline: float
    payment_deadline: float | None = None
    retry_at: float | None = None  # while COMPENSATING: when to re-send the pending step
    reservation_id: str | None = None
    payment_id: str | None = None
    reason: str | None = None
    refund_requested: bool = False
    refunded: bool = False
    release_requested: bool = False
    released: bool = False
    confirmation_resent: bool = False  # COMPLETED: orders.confirmed sent again once

    @property
    def deadline(self) -> float | None:
        """When the saga must next be woken by the timeout sweep, if ever."""
        if self.status in TERMINAL:
            return None
        if self.status is SagaStatus.COMPENSATING:
            return self.retry_at
        if self.payment_deadline is None:
            return self.saga_deadline
        return min(self.saga_deadline, self.payment_deadline)


class Timeout(msgspec.Struct, frozen=True):
    """Internal event from the timeout sweep; never crosses the bus."""

    order_id: str


class Context(msgspec.Struct, frozen=True):
    now: float
    payment_timeout_s: float
    # How long a compensation step may go unanswered before its command is sent again.
    # Longer than JetStream's 2-minute duplicate window, so that the re-send is stored.
    compensation_retry_s: float = 150.0


class Step(msgspec.Struct, frozen=True):
    """One record of the saga's append-only history."""

    at: float
    saga_status: SagaStatus
    event: str
    detail: str | None = None


class Decision(msgspec.Struct, frozen=True):
    saga: Saga
    emit: tuple[c.AnyMessage, ...] = ()
    history: tuple[Step, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.history or self.emit)


Event = c.AnyMessage | Timeout


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def start(
    order: c.OrderCreated, payment_method: str, now: float, saga_timeout_s: float
) -> Decision:
    """The saga of a new order: STARTED, with `orders.created` to emit."""
    saga = Saga(
        order_id=order.order_id,
        customer_id=order.customer_id,
        amount=order.total_amount,
        currency=order.currency,
        payment_method=payment_method,
        started_at=now,
        saga_deadline=now + saga_timeout_s,
    )
    return Decision(saga, (order,), (Step(now, SagaStatus.STARTED, c.ORDERS_CREATED),))


def _event_name(event: Event) -> str:
    return "timeout" if isinstance(event, Timeout) else c.subject_of(event)


def transition(saga: Saga, event: Event, ctx: Context) -> Decision:
    """Apply one event; returns the next state, the messages to emit and the history."""
    s, name = saga.status, _event_name(event)
    match event:
        case c.InventoryReserved() if s is SagaStatus.STARTED:
            return _reserved(saga, event, ctx, name)
        case c.InventoryReserved() if s is SagaStatus.COMPENSATING and saga.reservation_id is None:
            # Reserved after a timeout asked to release "whatever is held": note the id.
            return Decision(
                msgspec.structs.replace(saga, reservation_id=event.reservation_id),
                (),
                (Step(ctx.now, s, name, "reserved after compensation began"),),
            )
        case c.InventoryOutOfStock() if s is SagaStatus.STARTED:
            items = ", ".join(i.product_id for i in event.unavailable_items)
            failed = msgspec.structs.replace(saga, status=SagaStatus.FAILED, reason="out_of_stock")
            emit = c.OrderFailed(
                order_id=saga.order_id, reason="out_of_stock", failure_stage="inventory"
            )
            return Decision(failed, (emit,), (Step(ctx.now, SagaStatus.FAILED, name, items),))
        case c.PaymentSucceeded() if s is SagaStatus.PAYMENT_PROCESSING:
            return _paid(saga, event, ctx, name)
        case c.PaymentSucceeded() if s in (SagaStatus.COMPENSATING, *TERMINAL):
            return _late_payment(saga, event, ctx, name)
        case c.PaymentFailed() if s is SagaStatus.PAYMENT_PROCESSING:
            return _compensate(saga, ctx, name, event.reason, charged=False)
        case Timeout() if s is SagaStatus.STARTED and ctx.now >= saga.saga_deadline:
            return _compensate(saga, ctx, name, "timeout", charged=False, detail="saga timeout")
        case Timeout() if (
            s is SagaStatus.PAYMENT_PROCESSING
            and saga.deadline is not None
            and ctx.now >= saga.deadline
        ):
            which = "saga timeout" if ctx.now >= saga.saga_deadline else "payment timeout"
            # The charge may have happened: compensation refunds whatever was charged.
            return _compensate(saga, ctx, name, "timeout", charged=True, detail=which)
        case Timeout() if (
            s is SagaStatus.COMPENSATING and saga.retry_at is not None and ctx.now >= saga.retry_at
        ):
            return _resend_compensation(saga, ctx, name)
        case c.InventoryReleased() if s is SagaStatus.COMPLETED and not saga.confirmation_resent:
            # The reservation of a confirmed order expired: its orders.confirmed never
            # reached inventory (lost with a crashed broker). Confirm it again, once: a
            # reservation is released once, so another such event is the same one again.
            again = c.OrderConfirmed(
                order_id=saga.order_id, payment_id=saga.payment_id or "", timestamp=iso(ctx.now)
            )
            step = Step(ctx.now, s, name, f"{event.reason}: confirmation sent again")
            resent = msgspec.structs.replace(saga, confirmation_resent=True)
            return Decision(resent, (again,), (step,))
        case c.InventoryReleased() if s is SagaStatus.PAYMENT_PROCESSING:
            # The reservation expired under a payment still in flight.
            expired = msgspec.structs.replace(saga, released=True, release_requested=True)
            return _compensate(expired, ctx, name, "reservation_expired", charged=True)
        case c.PaymentRefunded() if s is SagaStatus.COMPENSATING and not saga.refunded:
            refunded = msgspec.structs.replace(saga, refunded=True)
            return _compensation_reply(refunded, ctx, name, event.refund_id or "nothing charged")
        case c.InventoryReleased() if s is SagaStatus.COMPENSATING and not saga.released:
            released = msgspec.structs.replace(saga, released=True)
            return _compensation_reply(released, ctx, name, event.reason)
    return Decision(saga)


def _reserved(saga: Saga, event: c.InventoryReserved, ctx: Context, name: str) -> Decision:
    paying = msgspec.structs.replace(
        saga,
        status=SagaStatus.PAYMENT_PROCESSING,
        reservation_id=event.reservation_id,
        payment_deadline=ctx.now + ctx.payment_timeout_s,
    )
    request = c.ProcessPayment(
        order_id=saga.order_id,
        customer_id=saga.customer_id,
        amount=saga.amount,
        currency=saga.currency,
        payment_method=saga.payment_method,
    )
    return Decision(
        paying,
        (request,),
        (
            Step(ctx.now, SagaStatus.INVENTORY_RESERVED, name, event.reservation_id),
            Step(ctx.now, SagaStatus.PAYMENT_PROCESSING, c.PAYMENTS_PROCESS_REQUEST),
        ),
    )


def _paid(saga: Saga, event: c.PaymentSucceeded, ctx: Context, name: str) -> Decision:
    done = msgspec.structs.replace(
        saga, status=SagaStatus.COMPLETED, payment_id=event.payment_id, payment_deadline=None
    )
    confirmed = c.OrderConfirmed(
        order_id=saga.order_id, payment_id=event.payment_id, timestamp=iso(ctx.now)
    )
    return Decision(
        done,
        (confirmed,),
        (
            Step(ctx.now, SagaStatus.PAYMENT_SUCCEEDED, name, event.payment_id),
            Step(ctx.now, SagaStatus.COMPLETED, c.ORDERS_CONFIRMED),
        ),
    )


def _late_payment(saga: Saga, event: c.PaymentSucceeded, ctx: Context, name: str) -> Decision:
    """A charge reported after the saga gave up on it: make sure it is refunded."""
    if saga.refund_requested or saga.payment_id == event.payment_id:
        return Decision(saga)  # the refund already asked for covers whatever was charged
    # A confirmed order keeps the payment it was confirmed with; the extra charge is refunded.
    keep = saga.payment_id or event.payment_id
    marked = msgspec.structs.replace(saga, payment_id=keep, refund_requested=True)
    refund = c.RefundPayment(
        order_id=saga.order_id, payment_id=event.payment_id, reason="late_payment"
    )
    return Decision(marked, (refund,), (Step(ctx.now, saga.status, name, "late payment refunded"),))


def _resend_compensation(saga: Saga, ctx: Context, name: str) -> Decision:
    """The pending compensation step went unanswered: send its command again (the command
    or its answer was lost; every handler answers a repeated command from its state)."""
    if not saga.refunded:
        pending = msgspec.structs.replace(saga, refund_requested=False)
    else:
        pending = msgspec.structs.replace(saga, release_requested=False)
    nxt = _next_compensation(pending, ctx)
    again = msgspec.structs.replace(nxt.saga, retry_at=ctx.now + ctx.compensation_retry_s)
    sent = ", ".join(c.subject_of(m) for m in nxt.emit) or "nothing"
    return Decision(again, nxt.emit, (Step(ctx.now, saga.status, name, f"re-sent {sent}"),))


def _compensate(
    saga: Saga, ctx: Context, name: str, reason: str, *, charged: bool, detail: str | None = None
) -> Decision:
    compensating = msgspec.structs.replace(
        saga,
        status=SagaStatus.COMPENSATING,
        reason=reason,
        refunded=saga.refunded or not charged,
        retry_at=ctx.now + ctx.compensation_retry_s,
    )
    nxt = _next_compensation(compensating, ctx)
    step = Step(ctx.now, SagaStatus.COMPENSATING, name, detail or reason)
    return Decision(nxt.saga, nxt.emit, (step, *nxt.history))


def _compensation_reply(saga: Saga, ctx: Context, name: str, detail: str | None) -> Decision:
    nxt = _next_compensation(saga, ctx)
    step = Step(ctx.now, SagaStatus.COMPENSATING, name, detail)
    moved = msgspec.structs.replace(nxt.saga, retry_at=ctx.now + ctx.compensation_retry_s)
    return Decision(moved, nxt.emit, (step, *nxt.history))


def _next_compensation(saga: Saga, ctx: Context) -> Decision:
    """The next compensation step, in reverse order: refund, then release, then done."""
    if not saga.refunded:
        if saga.refund_requested:
            return Decision(saga)
        refund = c.RefundPayment(
            order_id=saga.order_id, payment_id=saga.payment_id, reason=saga.reason or ""
        )
        return Decision(msgspec.structs.replace(saga, refund_requested=True), (refund,))
    if not saga.released:
        if saga.release_requested:
            return Decision(saga)
        release = c.ReleaseInventory(
            order_id=saga.order_id, reservation_id=saga.reservation_id, reason=saga.reason or ""
        )
        return Decision(msgspec.structs.replace(saga, release_requested=True), (release,))
    done = msgspec.structs.replace(saga, status=SagaStatus.COMPENSATED, payment_deadline=None)
    cancelled = c.OrderCancelled(
        order_id=saga.order_id, reason=saga.reason or "", timestamp=iso(ctx.now)
    )
    return Decision(
        done, (cancelled,), (Step(ctx.now, SagaStatus.COMPENSATED, c.ORDERS_CANCELLED),)
    )
