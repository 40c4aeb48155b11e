"""Which duplicate payment commands are answered again, and with what (`rounds.reanswers`),
and which inbox keys a round claims with its changes (`rounds.claims`)."""

from __future__ import annotations

from datetime import UTC, datetime

from jetsaga import contracts
from jetsaga.consumer import Delivery
from jetsaga.contracts import AnyMessage, PaymentRefunded, ProcessPayment, RefundPayment
from payment_service import rounds, rules
from payment_service.flows import Outcome, Work
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


def test_a_change_claims_its_key_only_if_applied_an_answer_from_the_row_always() -> None:
    refund = delivery(RefundPayment(order_id="o-1", reason="timeout"))
    settled = Work(refund, row("o-1", "processing", "pi_1"), outcome=Outcome(status="voided"))
    as_is = Work(delivery(RefundPayment(order_id="o-2", reason="timeout")), row("o-2", "voided"))
    redo = Work(delivery(RefundPayment(order_id="o-3", reason="timeout")),
                row("o-3", "processing"), redo=True)  # fmt: skip
    failed = Work(delivery(RefundPayment(order_id="o-4", reason="timeout")),
                  row("o-4", "processing"), error=RuntimeError("gateway"))  # fmt: skip
    assert rounds.claims([settled, as_is, redo, failed]) == [
        (settled.delivery.key, "o-1"),
        (as_is.delivery.key, None),
    ]
