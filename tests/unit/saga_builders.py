"""Builders for the saga unit tests: one order, its events, and a saga in every status.

States are written out field by field rather than replayed through `transition`, so a bug in
the function under test cannot leak into the inputs of the tests that judge it. Times are
epoch seconds relative to `T0`, the order's creation.
"""

from __future__ import annotations

import msgspec

from jetsaga import contracts as c
from order_service.saga import (
    Context,
    Decision,
    Event,
    Saga,
    SagaStatus,
    Timeout,
    start,
    transition,
)

ORDER_ID = "ord-1"
CUSTOMER_ID = "c-42"
RESERVATION_ID = "res-1"
PAYMENT_ID = "pay-1"
OTHER_PAYMENT_ID = "pay-2"
REFUND_ID = "re-1"
PAYMENT_METHOD = "pm_card_visa"
CURRENCY = "usd"
AMOUNT = 2 * 1999 + 500

T0 = 1_700_000_000.0
SAGA_TIMEOUT_S = 300.0
PAYMENT_TIMEOUT_S = 120.0
RESERVED_AT = T0 + 1.0
SAGA_DEADLINE = T0 + SAGA_TIMEOUT_S
PAYMENT_DEADLINE = RESERVED_AT + PAYMENT_TIMEOUT_S

# Instants for a Timeout: before both deadlines, after the payment deadline only, after both.
BEFORE_DEADLINES = T0 + 10.0
AFTER_PAYMENT_DEADLINE = PAYMENT_DEADLINE + 30.0
AFTER_SAGA_DEADLINE = SAGA_DEADLINE + 30.0
assert BEFORE_DEADLINES < PAYMENT_DEADLINE < AFTER_PAYMENT_DEADLINE < SAGA_DEADLINE


def ctx(now: float = T0 + 5.0) -> Context:
    return Context(now=now, payment_timeout_s=PAYMENT_TIMEOUT_S)


# --- messages ---------------------------------------------------------------------------

ITEMS = (
    c.LineItem(product_id="sku-1", quantity=2, unit_price=1999),
    c.LineItem(product_id="sku-2", quantity=1, unit_price=500),
)


def order_created() -> c.OrderCreated:
    return c.OrderCreated(
        order_id=ORDER_ID,
        customer_id=CUSTOMER_ID,
        items=ITEMS,
        total_amount=AMOUNT,
        currency=CURRENCY,
    )


def reserved(reservation_id: str = RESERVATION_ID) -> c.InventoryReserved:
    return c.InventoryReserved(
        order_id=ORDER_ID,
        reservation_id=reservation_id,
        items=ITEMS,
        expires_at="2023-11-14T23:28:20.000+00:00",
    )


def out_of_stock() -> c.InventoryOutOfStock:
    missing = c.UnavailableItem(product_id="sku-2", requested=1, available=0)
    return c.InventoryOutOfStock(order_id=ORDER_ID, unavailable_items=(missing,))


def released(
    reason: str = "expired", reservation_id: str | None = RESERVATION_ID
) -> c.InventoryReleased:
    return c.InventoryReleased(order_id=ORDER_ID, reservation_id=reservation_id, reason=reason)


def succeeded(payment_id: str = PAYMENT_ID) -> c.PaymentSucceeded:
    return c.PaymentSucceeded(
        order_id=ORDER_ID,
        payment_id=payment_id,
        amount=AMOUNT,
        stripe_payment_intent_id=f"pi_{payment_id}",
    )


def failed(reason: str = "card_declined") -> c.PaymentFailed:
    return c.PaymentFailed(order_id=ORDER_ID, reason=reason, timestamp="2023-11-14T22:13:30Z")


def refunded(
    payment_id: str | None = PAYMENT_ID, refund_id: str | None = REFUND_ID
) -> c.PaymentRefunded:
    return c.PaymentRefunded(order_id=ORDER_ID, payment_id=payment_id, refund_id=refund_id)


def timeout() -> Timeout:
    return Timeout(ORDER_ID)


def never_received() -> dict[str, c.AnyMessage]:
    """Messages the order service emits or ignores: none of them may move the saga."""
    return {
        "orders.created": order_created(),
        "payments.process_request": c.ProcessPayment(
            order_id=ORDER_ID,
            customer_id=CUSTOMER_ID,
            amount=AMOUNT,
            currency=CURRENCY,
            payment_method=PAYMENT_METHOD,
        ),
        "inventory.release_request": c.ReleaseInventory(
            order_id=ORDER_ID, reservation_id=RESERVATION_ID, reason="timeout"
        ),
        "payments.refund_request": c.RefundPayment(
            order_id=ORDER_ID, payment_id=PAYMENT_ID, reason="timeout"
        ),
        "orders.confirmed": c.OrderConfirmed(
            order_id=ORDER_ID, payment_id=PAYMENT_ID, timestamp="2023-11-14T22:13:30Z"
        ),
        "orders.cancelled": c.OrderCancelled(
            order_id=ORDER_ID, reason="timeout", timestamp="2023-11-14T22:13:30Z"
        ),
        "orders.failed": c.OrderFailed(
            order_id=ORDER_ID, reason="out_of_stock", failure_stage="inventory"
        ),
    }


# --- sagas in every status --------------------------------------------------------------

STARTED = Saga(
    order_id=ORDER_ID,
    customer_id=CUSTOMER_ID,
    amount=AMOUNT,
    currency=CURRENCY,
    payment_method=PAYMENT_METHOD,
    started_at=T0,
    saga_deadline=SAGA_DEADLINE,
)


def saga(**fields: object) -> Saga:
    """The STARTED saga with some fields replaced."""
    return msgspec.structs.replace(STARTED, **fields)


S = SagaStatus
_HELD = {"reservation_id": RESERVATION_ID}
_PAYING = {**_HELD, "payment_deadline": PAYMENT_DEADLINE}

# Every status, and in COMPENSATING every combination of the refund and release flags that a
# compensation can reach. INVENTORY_RESERVED and PAYMENT_SUCCEEDED are steps of the history
# that `transition` passes through within one call; a saga at rest is never in them.
STATES: dict[str, Saga] = {
    "started": STARTED,
    "inventory_reserved": saga(status=S.INVENTORY_RESERVED, **_HELD),
    "payment_processing": saga(status=S.PAYMENT_PROCESSING, **_PAYING),
    "payment_succeeded": saga(status=S.PAYMENT_SUCCEEDED, payment_id=PAYMENT_ID, **_PAYING),
    "completed": saga(status=S.COMPLETED, payment_id=PAYMENT_ID, **_HELD),
    # A confirmed order whose expired reservation already had its confirmation sent again.
    "completed_confirmation_resent": saga(
        status=S.COMPLETED, payment_id=PAYMENT_ID, confirmation_resent=True, **_HELD
    ),
    "failed": saga(status=S.FAILED, reason="out_of_stock"),
    # A timeout during payment: refund asked for, release waits for it.
    "compensating_refund_requested": saga(
        status=S.COMPENSATING, reason="timeout", refund_requested=True, **_PAYING
    ),
    # The reservation expired during payment: refund asked for, nothing left to release.
    "compensating_refund_requested_stock_released": saga(
        status=S.COMPENSATING,
        reason="reservation_expired",
        refund_requested=True,
        release_requested=True,
        released=True,
        **_PAYING,
    ),
    # The card was declined: nothing to refund, release asked for.
    "compensating_release_requested": saga(
        status=S.COMPENSATING,
        reason="card_declined",
        refunded=True,
        release_requested=True,
        **_PAYING,
    ),
    # A timeout during payment, refund done, release asked for.
    "compensating_refunded_release_requested": saga(
        status=S.COMPENSATING,
        reason="timeout",
        refund_requested=True,
        refunded=True,
        release_requested=True,
        **_PAYING,
    ),
    # The saga timed out before any reservation was heard of: release whatever is held.
    "compensating_release_requested_no_reservation": saga(
        status=S.COMPENSATING, reason="timeout", refunded=True, release_requested=True
    ),
    "compensated_after_decline": saga(
        status=S.COMPENSATED,
        reason="card_declined",
        refunded=True,
        release_requested=True,
        released=True,
        **_HELD,
    ),
    "compensated_after_timeout": saga(
        status=S.COMPENSATED,
        reason="timeout",
        refund_requested=True,
        refunded=True,
        release_requested=True,
        released=True,
        **_HELD,
    ),
}


def events() -> dict[str, tuple[Event, float]]:
    """Every event the saga can be handed, with the instant it is handled at."""
    at = T0 + 5.0
    return {
        "inventory.reserved": (reserved(), at),
        "inventory.out_of_stock": (out_of_stock(), at),
        "inventory.released": (released(), at),
        "payments.succeeded": (succeeded(), at),
        "payments.failed": (failed(), at),
        "payments.refunded": (refunded(), at),
        "timeout_before_deadlines": (timeout(), BEFORE_DEADLINES),
        "timeout_after_payment_deadline": (timeout(), AFTER_PAYMENT_DEADLINE),
        "timeout_after_saga_deadline": (timeout(), AFTER_SAGA_DEADLINE),
        **{subject: (message, at) for subject, message in never_received().items()},
    }


def run(saga: Saga, *steps: Event | tuple[Event, float]) -> tuple[Saga, list[Decision]]:
    """Apply events in order (at `T0 + 5` unless an instant is given); the end state and
    every decision."""
    decisions = []
    for step in steps:
        event, now = step if isinstance(step, tuple) else (step, T0 + 5.0)
        decision = transition(saga, event, ctx(now))
        decisions.append(decision)
        saga = decision.saga
    return saga, decisions


def started() -> Decision:
    return start(order_created(), PAYMENT_METHOD, T0, SAGA_TIMEOUT_S)


def subjects(decisions: Decision | list[Decision]) -> list[str]:
    """The subjects emitted, in order."""
    if isinstance(decisions, Decision):
        decisions = [decisions]
    return [c.subject_of(m) for d in decisions for m in d.emit]
