"""The payment rules, pure: what a command does to an order's payment row, and what the
service answers. No I/O, no clock: timestamps come from the row.

A `ProcessPayment` charges an order at most once. A `RefundPayment` undoes whatever was
charged, and when it arrives first it voids the order, so that a late `ProcessPayment` never
charges (the saga already compensated) and answers `payments.failed` with reason `cancelled`.

The answer is a function of the row alone, so a command applied before is answered again
exactly as the first time. A `refunded` row answers a `ProcessPayment` as succeeded if it was
charged and answered so before its refund; a refund that overtook the charge's answer
leaves the reason `cancelled` on the row, which is what that command was told.
"""

from __future__ import annotations

import enum
from typing import Final

from jetsaga.contracts import (
    AnyMessage,
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    ProcessPayment,
    RefundPayment,
)
from payment_service.gateway import (
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    Intent,
)
from payment_service.store import CHARGED as CHARGED
from payment_service.store import FAILED as FAILED
from payment_service.store import PROCESSING as PROCESSING
from payment_service.store import REFUNDED as REFUNDED
from payment_service.store import VOIDED as VOIDED
from payment_service.store import Opening, Payment

CANCELLED_REASON: Final = "cancelled"

Command = ProcessPayment | RefundPayment


class Step(enum.Enum):
    REPLY = "reply"  # the row already holds the answer
    CHARGE = "charge"  # create an intent: none was made for this order
    SETTLE = "settle"  # confirm the recorded intent, or learn what it did
    REFUND = "refund"  # the order was charged: refund it
    VOID = "void"  # no intent was ever recorded: nothing can be charged, void the row
    UNWIND = "unwind"  # an intent exists and may be charged: cancel it, or refund it


def opening(command: Command) -> Opening:
    """The row an order gets if it has none: a refund first voids it."""
    if isinstance(command, RefundPayment):
        return Opening(order_id=command.order_id, status=VOIDED)
    return Opening(
        order_id=command.order_id,
        status=PROCESSING,
        amount=command.amount,
        currency=command.currency,
        payment_method=command.payment_method,
    )


def step(command: Command, row: Payment) -> Step:
    if isinstance(command, RefundPayment) and row.status == CHARGED:
        return Step.REFUND
    if row.status != PROCESSING:
        return Step.REPLY
    if isinstance(command, ProcessPayment):
        return Step.SETTLE if row.intent_id else Step.CHARGE
    return Step.UNWIND if row.intent_id else Step.VOID


def reply(command: Command, row: Payment) -> AnyMessage | None:
    """The answer to a command given the row's settled state; None while undecided."""
    at = row.updated_at.isoformat()
    if isinstance(command, ProcessPayment):
        if answered_charged(row):
            assert row.payment_id and row.intent_id and row.amount is not None
            return PaymentSucceeded(
                order_id=row.order_id,
                payment_id=row.payment_id,
                amount=row.amount,
                stripe_payment_intent_id=row.intent_id,
            )
        if row.status == FAILED:
            return PaymentFailed(
                order_id=row.order_id, reason=row.failure_reason or FAILED, timestamp=at
            )
        if row.status in (VOIDED, REFUNDED):
            return PaymentFailed(order_id=row.order_id, reason=CANCELLED_REASON, timestamp=at)
        return None
    if row.status == REFUNDED:
        return PaymentRefunded(
            order_id=row.order_id, payment_id=row.payment_id, refund_id=row.refund_id
        )
    if row.status in (VOIDED, FAILED):
        return PaymentRefunded(order_id=row.order_id)
    return None


def answered_charged(row: Payment) -> bool:
    """Whether the order's `ProcessPayment` was answered succeeded: the row is charged, or was
    before its refund. A refund that overtook the charge's answer (`unwind`) left the reason
    `cancelled`: that command was told the charge failed."""
    if row.status == CHARGED:
        return True
    return (
        row.status == REFUNDED
        and row.payment_id is not None
        and row.failure_reason != CANCELLED_REASON
    )


def charge_result(intent: Intent) -> tuple[str, str | None] | None:
    """(status, failure reason) of a charge from its intent's state; None if undecided."""
    if intent.status == SUCCEEDED:
        return CHARGED, None
    if intent.status == REQUIRES_PAYMENT_METHOD:
        return FAILED, intent.failure_code or "card_declined"
    if intent.status == CANCELED:
        return FAILED, CANCELLED_REASON
    if intent.status == REQUIRES_ACTION:
        return FAILED, "authentication_required"
    return None  # processing, requires_capture: not ours to decide yet
