"""The payment rules, pure: every command by row status, the answers, and intent outcomes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from jetsaga.contracts import (
    PaymentFailed,
    PaymentRefunded,
    PaymentSucceeded,
    ProcessPayment,
    RefundPayment,
)
from payment_service import rules
from payment_service.gateway import Intent
from payment_service.rules import Step
from payment_service.store import Payment

AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
PROCESS = ProcessPayment(
    order_id="o-1", customer_id="c-1", amount=1999, currency="usd", payment_method="pm_card_visa"
)
REFUND = RefundPayment(order_id="o-1", payment_id=None, reason="timeout")


def row(status: str, intent: str | None = None, **extra: object) -> Payment:
    fields: dict[str, object] = {
        "order_id": "o-1",
        "status": status,
        "amount": 1999,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "intent_id": intent,
        "payment_id": None,
        "refund_id": None,
        "failure_reason": None,
        "version": 3,
        "created_at": AT,
        "updated_at": AT,
    }
    return Payment(**{**fields, **extra})  # type: ignore[arg-type]


CHARGED = row("succeeded", "pi_1", payment_id="pi_1")


@pytest.mark.parametrize(
    "command, payment, expected",
    [
        (PROCESS, row("processing"), Step.CHARGE),
        (PROCESS, row("processing", "pi_1"), Step.SETTLE),
        (PROCESS, CHARGED, Step.REPLY),
        (PROCESS, row("failed", "pi_1"), Step.REPLY),
        (PROCESS, row("voided"), Step.REPLY),
        (PROCESS, row("refunded", "pi_1"), Step.REPLY),
        (REFUND, row("processing"), Step.VOID),
        (REFUND, row("processing", "pi_1"), Step.UNWIND),
        (REFUND, CHARGED, Step.REFUND),
        (REFUND, row("failed", "pi_1"), Step.REPLY),
        (REFUND, row("voided"), Step.REPLY),
        (REFUND, row("refunded", "pi_1"), Step.REPLY),
    ],
)
def test_step_for_every_command_and_status(
    command: rules.Command, payment: Payment, expected: Step
) -> None:
    assert rules.step(command, payment) is expected


def test_a_process_request_opens_a_processing_row() -> None:
    opening = rules.opening(PROCESS)
    assert (opening.status, opening.amount, opening.currency) == ("processing", 1999, "usd")
    assert opening.payment_method == "pm_card_visa"


def test_a_refund_request_first_opens_a_voided_row() -> None:
    opening = rules.opening(REFUND)
    assert (opening.status, opening.amount, opening.payment_method) == ("voided", None, None)


def test_process_answer_when_charged() -> None:
    assert rules.reply(PROCESS, CHARGED) == PaymentSucceeded(
        order_id="o-1", payment_id="pi_1", amount=1999, stripe_payment_intent_id="pi_1"
    )


def test_process_answer_when_declined_keeps_reason_and_time() -> None:
    failed = row("failed", "pi_1", failure_reason="card_declined")
    assert rules.reply(PROCESS, failed) == PaymentFailed(
        order_id="o-1", reason="card_declined", timestamp=AT.isoformat()
    )


# A refund that overtook the charge's answer (flows._unwind) leaves the reason `cancelled`.
UNWOUND = row("refunded", "pi_1", payment_id="pi_1", refund_id="re_1", failure_reason="cancelled")
REFUNDED_AFTER_CHARGE = row("refunded", "pi_1", payment_id="pi_1", refund_id="re_1")


@pytest.mark.parametrize("payment", [row("voided"), UNWOUND], ids=["voided", "unwound"])
def test_process_answer_after_compensation_is_cancelled(payment: Payment) -> None:
    answer = rules.reply(PROCESS, payment)
    assert isinstance(answer, PaymentFailed)
    assert answer.reason == "cancelled"


def test_process_answer_after_the_charge_was_refunded_is_still_succeeded() -> None:
    assert rules.reply(PROCESS, REFUNDED_AFTER_CHARGE) == rules.reply(PROCESS, CHARGED)


@pytest.mark.parametrize(
    "command, payment, expected",
    [
        (PROCESS, CHARGED, PaymentSucceeded(
            order_id="o-1", payment_id="pi_1", amount=1999, stripe_payment_intent_id="pi_1")),
        (PROCESS, REFUNDED_AFTER_CHARGE, PaymentSucceeded(
            order_id="o-1", payment_id="pi_1", amount=1999, stripe_payment_intent_id="pi_1")),
        (PROCESS, row("failed", "pi_1", failure_reason="expired_card"),
         PaymentFailed(order_id="o-1", reason="expired_card", timestamp=AT.isoformat())),
        (PROCESS, row("voided"),
         PaymentFailed(order_id="o-1", reason="cancelled", timestamp=AT.isoformat())),
        (PROCESS, UNWOUND,
         PaymentFailed(order_id="o-1", reason="cancelled", timestamp=AT.isoformat())),
        (PROCESS, row("processing", "pi_1"), None),
        (REFUND, REFUNDED_AFTER_CHARGE,
         PaymentRefunded(order_id="o-1", payment_id="pi_1", refund_id="re_1")),
        (REFUND, UNWOUND, PaymentRefunded(order_id="o-1", payment_id="pi_1", refund_id="re_1")),
        (REFUND, row("voided"), PaymentRefunded(order_id="o-1", payment_id=None, refund_id=None)),
        (REFUND, row("failed", "pi_1", failure_reason="card_declined"),
         PaymentRefunded(order_id="o-1", payment_id=None, refund_id=None)),
        (REFUND, row("processing", "pi_1"), None),
    ],
    ids=lambda v: v.status if isinstance(v, Payment) else None,
)  # fmt: skip
def test_a_command_applied_before_is_answered_again_as_its_row_implies(
    command: rules.Command, payment: Payment, expected: object
) -> None:
    """What a duplicate command is answered: the same answer, field for field, as the first
    time, read from the row it left behind; nothing while the row is still undecided."""
    assert rules.reply(command, payment) == expected


@pytest.mark.parametrize(
    "payment, expected",
    [
        (CHARGED, True),
        (REFUNDED_AFTER_CHARGE, True),
        (UNWOUND, False),
        (row("refunded"), False),  # no payment id: nothing to name in an answer
        (row("failed", "pi_1", failure_reason="card_declined"), False),
        (row("voided"), False),
        (row("processing", "pi_1"), False),
    ],
)
def test_which_rows_answered_their_charge_succeeded(payment: Payment, expected: bool) -> None:
    assert rules.answered_charged(payment) is expected


def test_no_answer_while_processing() -> None:
    assert rules.reply(PROCESS, row("processing", "pi_1")) is None
    assert rules.reply(REFUND, row("processing", "pi_1")) is None
    assert rules.reply(REFUND, CHARGED) is None


def test_refund_answer_names_the_refund() -> None:
    refunded = row("refunded", "pi_1", payment_id="pi_1", refund_id="re_1")
    assert rules.reply(REFUND, refunded) == PaymentRefunded(
        order_id="o-1", payment_id="pi_1", refund_id="re_1"
    )


@pytest.mark.parametrize("status", ["voided", "failed"])
def test_refund_answer_when_nothing_was_charged(status: str) -> None:
    assert rules.reply(REFUND, row(status)) == PaymentRefunded(order_id="o-1")


@pytest.mark.parametrize(
    "intent, expected",
    [
        (Intent(id="pi", status="succeeded"), ("succeeded", None)),
        (
            Intent(id="pi", status="requires_payment_method", failure_code="expired_card"),
            ("failed", "expired_card"),
        ),
        (Intent(id="pi", status="requires_payment_method"), ("failed", "card_declined")),
        (Intent(id="pi", status="canceled"), ("failed", "cancelled")),
        (Intent(id="pi", status="requires_action"), ("failed", "authentication_required")),
        (Intent(id="pi", status="processing"), None),
        (Intent(id="pi", status="requires_capture"), None),
    ],
)
def test_charge_result_from_intent_status(
    intent: Intent, expected: tuple[str, str | None] | None
) -> None:
    assert rules.charge_result(intent) == expected


def test_payment_repr_never_shows_the_payment_method() -> None:
    assert "pm_card_visa" not in repr(row("processing"))
