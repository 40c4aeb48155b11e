"""Bookkeeping of a batch of payment commands, pure: which commands go in a round, which
row changes to write, once written, which commands are answered and with what, and what a
command applied before is answered again.

A `Work` carries one command through a round. A command whose row changed under it (its
compare-and-set found another version) is marked `redo` and decided again next round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jetsaga import outbox
from jetsaga.consumer import Delivery
from jetsaga.contracts import AnyMessage, ProcessPayment, RefundPayment
from jetsaga.outbox import Outgoing
from payment_service import rules
from payment_service.flows import Work
from payment_service.store import Change, Payment


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


def claims(works: Sequence[Work]) -> list[tuple[str, str | None]]:
    """The inbox keys to claim with the changes: (key, order id) of a command with a change,
    claimed only if its change is applied; (key, None) of one answered from its row as it
    is. A command that failed or is decided again claims nothing."""
    return [
        (w.delivery.key, None if w.outcome is None else w.row.order_id)
        for w in works
        if not w.redo and w.error is None
    ]


def written(works: Sequence[Work], applied: dict[str, Payment]) -> tuple[list[Work], list[Work]]:
    """After the changes were written: (the commands whose change was applied, every command
    that can be answered now). A change that was not applied marks its command `redo`."""
    changed: list[Work] = []
    answering: list[Work] = []
    for w in works:
        if w.redo or w.error is not None:
            continue
        if w.outcome is not None:
            row = applied.get(w.row.order_id)
            if row is None:
                w.redo = True
                continue
            w.row = row
            changed.append(w)
        answering.append(w)
    return changed, answering


def answers(answering: Sequence[Work], claimed: set[str]) -> tuple[list[Outgoing], int]:
    """The messages to enqueue, and how many commands were duplicates: a command that changed
    nothing and whose inbox key another delivery claimed first."""
    out: list[Outgoing] = []
    duplicates = 0
    for w in answering:
        if w.outcome is None and w.delivery.key not in claimed:
            duplicates += 1
            continue
        answer = rules.reply(w.command, w.row)
        if answer is not None:
            out.append(outbox.outgoing(answer, w.delivery.msg_id, w.delivery.traceparent))
    return out, duplicates


def reanswers(
    duplicates: Sequence[Delivery], rows: Mapping[str, Payment]
) -> list[tuple[Delivery, AnyMessage]]:
    """What commands applied before are answered again: what their rows now imply, which is
    what they were answered the first time (`rules.reply`). The first answer may have been
    lost, and the saga re-sends a compensation until it hears one. A row still undecided
    gets nothing: the command deciding it answers."""
    again: list[tuple[Delivery, AnyMessage]] = []
    for delivery in duplicates:
        row = rows.get(delivery.message.order_id)
        answer = None if row is None else rules.reply(command(delivery), row)
        if answer is not None:
            again.append((delivery, answer))
    return again
