"""Which duplicate payment commands are answered again, and with what (`rounds.reanswers`)."""

from __future__ import annotations

from datetime import UTC, datetime

from jetsaga import contracts
from jetsaga.consumer import Delivery
from jetsaga.contracts import AnyMessage, PaymentRefunded, ProcessPayment, RefundPayment
from payment_service import rounds, rules
from payment_service.store import Payment

AT = datetime(2025, 1, 2, tzinfo=UTC)


def delivery(message: AnyMessage) -> Delivery:
    subject = contracts.subject_of(message)
    return Delivery(subject, message, contracts.message_id(subject, message.order_id), 2)


def row(order_id: str, status: str, intent: str | None = None) -> Payment:
    return Payment(order_id=order_id, status=status, amount=100, currency="usd",
                   payment_method="pm_card_visa", intent_id=intent, payment_id=intent,
                   refund_id=None, failure_reason=None, version=2, created_at=AT,
                   updated_at=AT)  # fmt: skip


def test_each_duplicate_gets_what_its_row_implies_and_undecided_or_missing_rows_nothing() -> None:
    voided = delivery(RefundPayment(order_id="o-1", reason="timeout"))
    charged = delivery(ProcessPayment(order_id="o-2", customer_id="c", amount=100,
                                      currency="usd", payment_method="pm_card_visa"))  # fmt: skip
    undecided = delivery(RefundPayment(order_id="o-3", reason="timeout"))
    missing = delivery(RefundPayment(order_id="o-4", reason="timeout"))
    rows = {
        "o-1": row("o-1", "voided"),
        "o-2": row("o-2", "succeeded", "pi_2"),
        "o-3": row("o-3", "processing", "pi_3"),
    }
    again = rounds.reanswers([voided, charged, undecided, missing], rows)
    assert again == [
        (voided, PaymentRefunded(order_id="o-1")),
        (charged, rules.reply(rounds.command(charged), rows["o-2"])),
    ]


def test_no_duplicates_no_answers() -> None:
    assert rounds.reanswers([], {}) == []
