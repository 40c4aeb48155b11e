"""The gateway side of one order's command: the calls each `Step` makes, in order, and the
row change they lead to. No SQL here: the handler reads rows before and writes changes after.

A call that fails with `Unavailable` leaves the order undecided ("maybe charged"): the row
stays as it is and the command is held and retried. `Declined` and `Rejected` are outcomes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec

from jetsaga.consumer import Delivery
from jetsaga.contracts import ProcessPayment, RefundPayment
from payment_service import rules
from payment_service.gateway import (
    CANCELED,
    REQUIRES_CONFIRMATION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    Declined,
    Intent,
    Missing,
    PaymentGateway,
    Rejected,
)
from payment_service.rules import Command, Step
from payment_service.store import Payment

log = logging.getLogger(__name__)


class Undecided(Exception):
    """The intent is in a state we cannot settle from (`processing`, say). Not an outage, so
    not held: the message is redelivered with back-off, then dead-lettered for an operator."""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The row change a command leads to (None fields keep their value)."""

    status: str
    failure_reason: str | None = None
    payment_id: str | None = None
    refund_id: str | None = None


@dataclass
class Work:
    """One command of a batch on its way through the handler."""

    delivery: Delivery
    row: Payment
    outcome: Outcome | None = None  # a change to write
    created: Intent | None = None  # an intent this attempt made, not yet recorded
    redo: bool = False  # the row changed under us: decide again from its new state
    error: Exception | None = None  # nothing is written for this command

    @property
    def command(self) -> Command:
        assert isinstance(self.delivery.message, ProcessPayment | RefundPayment)
        return self.delivery.message


async def create(gw: PaymentGateway, work: Work) -> None:
    """CHARGE, first half: make the intent (recorded by the handler before any confirm)."""
    row = work.row
    assert row.amount is not None and row.currency and row.payment_method
    try:
        work.created = await gw.create_intent(
            row.order_id, row.amount, row.currency, row.payment_method
        )
    except (Declined, Rejected) as exc:
        work.outcome = Outcome(status=rules.FAILED, failure_reason=exc.code)


async def cancel_stray(gw: PaymentGateway, order_id: str, intent_id: str) -> None:
    """Cancel an intent our row does not name (we lost the race to record ours)."""
    try:
        await gw.cancel_intent(order_id, intent_id)
    except Exception as exc:  # never confirmed by anyone: harmless if it stays
        log.warning("stray intent not cancelled", extra={"orderId": order_id, "error": repr(exc)})


async def advance(gw: PaymentGateway, work: Work) -> None:
    """Make the gateway calls of the command's step and set `work.outcome`."""
    row = work.row
    match rules.step(work.command, row):
        case Step.SETTLE:
            just_created = work.created is not None and work.created.id == row.intent_id
            try:
                work.outcome = await _settle(gw, row, just_created)
            except Missing as exc:  # an intent the gateway never had charged nothing
                work.outcome = Outcome(status=rules.FAILED, failure_reason=exc.code)
        case Step.REFUND:
            assert row.intent_id
            work.outcome = Outcome(
                status=rules.REFUNDED, refund_id=await gw.refund(row.order_id, row.intent_id)
            )
        case Step.UNWIND:
            try:
                work.outcome = await _unwind(gw, row)
            except Missing:
                work.outcome = Outcome(status=rules.VOIDED)
        case Step.VOID:
            work.outcome = Outcome(status=rules.VOIDED)
        case Step.REPLY | Step.CHARGE:
            pass


async def _settle(gw: PaymentGateway, row: Payment, just_created: bool) -> Outcome:
    assert row.intent_id
    # After a crash we do not know what happened: look before charging. Stripe would
    # re-attempt a declined intent's charge once the confirm key is forgotten.
    intent = None if just_created else await gw.retrieve_intent(row.intent_id)
    if intent is None or intent.status == REQUIRES_CONFIRMATION:
        try:
            intent = await gw.confirm_intent(row.order_id, row.intent_id)
        except Declined as exc:
            intent = Intent(id=row.intent_id, status=REQUIRES_PAYMENT_METHOD, failure_code=exc.code)
        except Rejected as exc:
            # Its state forbade the confirm (already charged, say): see what that state is.
            intent = await gw.retrieve_intent(row.intent_id)
            if intent.status == REQUIRES_CONFIRMATION:
                return Outcome(status=rules.FAILED, failure_reason=exc.code)
    result = rules.charge_result(intent)
    if result is None:
        raise Undecided(f"payment intent still {intent.status}")
    status, reason = result
    payment_id = intent.id if status == rules.CHARGED else None
    return Outcome(status=status, failure_reason=reason, payment_id=payment_id)


async def _unwind(gw: PaymentGateway, row: Payment) -> Outcome:
    """A refund while the charge may be under way: cancel the intent so that it can never be
    confirmed, or, if it already charged, refund it."""
    assert row.intent_id
    intent = await gw.retrieve_intent(row.intent_id)
    if intent.status not in (SUCCEEDED, CANCELED):
        try:
            intent = await gw.cancel_intent(row.order_id, row.intent_id)
        except Rejected:
            intent = await gw.retrieve_intent(row.intent_id)  # it just charged, most likely
    if intent.status == SUCCEEDED:
        refund_id = await gw.refund(row.order_id, row.intent_id)
        # The charge was never answered succeeded, and never will be: its process request is
        # told `cancelled`, and the reason on the row keeps that answer (rules.unwound).
        return Outcome(
            status=rules.REFUNDED,
            payment_id=intent.id,
            refund_id=refund_id,
            failure_reason=rules.CANCELLED_REASON,
        )
    if intent.status == CANCELED:
        return Outcome(status=rules.VOIDED)
    raise Undecided(f"payment intent {intent.status} could not be cancelled yet")
