"""Bookkeeping of a batch of payment commands, pure: which commands go in a round, which
row changes to write, and what each command is answered, decided before the one statement
that writes them all.

A `Work` carries one command through a round. A command whose row changed under it (its
compare-and-set found another version) is marked `redo` and decided again next round.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from jetsaga import outbox
from jetsaga.consumer import Delivery
from jetsaga.contracts import ProcessPayment, RefundPayment
from jetsaga.outbox import Outgoing
from payment_service import rules
from payment_service.flows import Outcome, Work
from payment_service.store import Answer, Change, Payment


def command(delivery: Delivery) -> ProcessPayment | RefundPayment:
    assert isinstance(delivery.message, ProcessPayment | RefundPayment)
    return delivery.message


def next_round(
    pending: Sequence[Delivery], held: set[str]
) -> tuple[list[Delivery], list[Delivery]]:
    """The first command of each order (stream order kept), and the rest for later rounds.
    Commands of a `held` order (one of its commands is unfinished) are dropped: the whole
    batch comes back, and their order with it."""
    now: list[Delivery] = []
    later: list[Delivery] = []
    orders: set[str] = set()
    for delivery in pending:
        order_id = delivery.message.order_id
        if order_id in held:
            continue
        (later if order_id in orders else now).append(delivery)
        orders.add(order_id)
    return now, later


def changes(works: Sequence[Work]) -> list[Change]:
    """Row changes in order id order, so that concurrent batches lock rows in one order."""
    found = [
        Change(
            order_id=w.row.order_id,
            version=w.row.version,
            status=w.outcome.status,
            failure_reason=w.outcome.failure_reason,
            payment_id=w.outcome.payment_id,
            refund_id=w.outcome.refund_id,
        )
        for w in works
        if w.outcome is not None and not w.redo and w.error is None
    ]
    return sorted(found, key=lambda c: c.order_id)


def after(row: Payment, outcome: Outcome, at: datetime) -> Payment:
    """The row as `store.settle` writes `outcome` to it at `at`."""

    def kept(new: str | None, old: str | None) -> str | None:
        return old if new is None else new

    return msgspec.structs.replace(
        row,
        status=outcome.status,
        payment_id=kept(outcome.payment_id, row.payment_id),
        refund_id=kept(outcome.refund_id, row.refund_id),
        failure_reason=kept(outcome.failure_reason, row.failure_reason),
        version=row.version + 1,
        updated_at=at,
    )


def answers(works: Sequence[Work], at: datetime) -> list[Answer]:
    """What settling the round answers, decided before it is written. A command with a
    change is answered from its row as changed, if the change is applied; one with no
    change (applied before, or one its row already answers) from its row as it is, which
    is what it was answered the first time. A row still undecided answers nothing yet, nor
    does a command that failed or is decided again."""
    found = []
    for w in works:
        if w.redo or w.error is not None:
            continue
        if w.outcome is None:
            message = _answer(w, w.row)
            if message is not None:
                found.append(Answer(None, message))
        else:
            message = _answer(w, after(w.row, w.outcome, at))
            if message is not None:
                found.append(Answer(w.row.order_id, message))
    return found


def _answer(w: Work, row: Payment) -> Outgoing | None:
    answer = rules.reply(w.command, row)
    if answer is None:
        return None
    return outbox.outgoing(answer, w.delivery.msg_id, w.delivery.traceparent)


def written(works: Sequence[Work], applied: set[str], at: datetime) -> tuple[list[Work], int]:
    """Once the round is settled: the commands whose change was applied (their rows now as
    written), and how many commands changed nothing (duplicates). A change that was not
    applied marks its command `redo`."""
    changed: list[Work] = []
    duplicates = 0
    for w in works:
        if w.redo or w.error is not None:
            continue
        if w.outcome is None:
            duplicates += 1
        elif w.row.order_id in applied:
            w.row = after(w.row, w.outcome, at)
            changed.append(w)
        else:
            w.redo = True
    return changed, duplicates
