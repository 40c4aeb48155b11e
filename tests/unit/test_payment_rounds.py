"""What a payment round writes: rows as changed, and answers, each on its condition; a
command that changes nothing is answered from its row as it is (`rounds.answers`)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from jetsaga import contracts, outbox
from jetsaga.consumer import Delivery
from jetsaga.contracts import (
    AnyMessage,
    PaymentFailed,
    PaymentRefunded,
    ProcessPayment,
    RefundPayment,
)
from payment_service import rounds, rules
from payment_service.flows import Outcome, Work
from payment_service.store import Answer, Payment

AT = datetime(2025, 1, 2, tzinfo=UTC)


def delivery(message: AnyMessage) -> Delivery:
    subject = contracts.subject_of(message)
    return Delivery(subject, message, contracts.message_id(subject, message.order_id), 2)


def row(order_id: str, status: str, intent: str | None = None) -> Payment:
    return Payment(order_id=order_id, status=status, amount=100, currency="usd",
                   payment_method="pm_card_visa", intent_id=intent, payment_id=intent,
                   refund_id=None, failure_reason=None, version=2, created_at=AT,
                   updated_at=AT)  # fmt: skip


def process_(order_id: str) -> Delivery:
    return delivery(ProcessPayment(order_id=order_id, customer_id="c", amount=100,
                                   currency="usd", payment_method="pm_card_visa"))  # fmt: skip


def refund_(order_id: str) -> Delivery:
    return delivery(RefundPayment(order_id=order_id, reason="timeout"))


LATER = datetime(2025, 1, 3, tzinfo=UTC)


def test_the_row_after_a_change_keeps_what_the_change_leaves_out() -> None:
    before = row("o-1", "succeeded", "pi_1")
    refunded = rounds.after(before, Outcome(status="refunded", refund_id="re_1"), LATER)
    assert refunded == msgspec.structs.replace(
        before, status="refunded", refund_id="re_1", version=3, updated_at=LATER
    )
    declined = Outcome(status="failed", failure_reason="card_declined")
    failed = rounds.after(row("o-2", "processing"), declined, LATER)
    assert (failed.status, failed.failure_reason, failed.payment_id) == (
        "failed", "card_declined", None,
    )  # fmt: skip


def test_a_change_is_answered_if_applied_a_command_that_changes_nothing_from_its_row() -> None:
    declined = Work(process_("o-1"), row("o-1", "processing", "pi_1"),
                    outcome=Outcome(status="failed", failure_reason="card_declined"))  # fmt: skip
    as_is = Work(refund_("o-2"), row("o-2", "voided"))
    charged = Work(process_("o-6"), row("o-6", "succeeded", "pi_6"))
    undecided = Work(refund_("o-3"), row("o-3", "processing"))
    redo = Work(refund_("o-4"), row("o-4", "processing"), redo=True)
    failed = Work(refund_("o-5"), row("o-5", "processing"), error=RuntimeError("gateway"))
    found = rounds.answers([declined, as_is, charged, undecided, redo, failed], LATER)
    answer = rules.reply(declined.command, rounds.after(declined.row, declined.outcome, LATER))
    assert isinstance(answer, PaymentFailed) and answer.timestamp == LATER.isoformat()
    again = rules.reply(charged.command, charged.row)
    assert again is not None
    assert found == [
        Answer("o-1", outbox.outgoing(answer, declined.delivery.msg_id,
                                      declined.delivery.traceparent)),
        Answer(None, outbox.outgoing(PaymentRefunded(order_id="o-2"), as_is.delivery.msg_id,
                                     None)),
        Answer(None, outbox.outgoing(again, charged.delivery.msg_id, None)),
    ]  # fmt: skip


def test_once_written_an_applied_change_updates_its_row_and_one_not_applied_is_redone() -> None:
    applied = Work(refund_("o-1"), row("o-1", "succeeded", "pi_1"),
                   outcome=Outcome(status="refunded", refund_id="re_1"))  # fmt: skip
    raced = Work(refund_("o-2"), row("o-2", "succeeded", "pi_2"),
                 outcome=Outcome(status="refunded", refund_id="re_2"))  # fmt: skip
    as_is = Work(refund_("o-3"), row("o-3", "voided"))
    redo = Work(refund_("o-4"), row("o-4", "processing"), redo=True)
    changed, duplicates = rounds.written([applied, raced, as_is, redo], {"o-1"}, LATER)
    assert changed == [applied] and applied.row.status == "refunded"
    assert applied.row.version == 3 and applied.row.updated_at == LATER
    assert raced.redo and raced.row.status == "succeeded"
    assert duplicates == 1  # the command that changed nothing
