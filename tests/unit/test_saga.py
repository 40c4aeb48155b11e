"""The order saga's transition function (SPEC §5, STYLE practice 1), with no I/O.

Every (status, event) pair, the happy path, each compensation, timeouts, late payments,
duplicates, determinism, and invariants over random event sequences.
"""

from __future__ import annotations

import datetime
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import msgspec
import pytest

from jetsaga import contracts as c
from order_service.saga import TERMINAL, Decision, Event, Saga, SagaStatus, Timeout, transition
from tests.unit.saga_builders import (
    AFTER_PAYMENT_DEADLINE,
    AFTER_SAGA_DEADLINE,
    AMOUNT,
    BEFORE_DEADLINES,
    CURRENCY,
    CUSTOMER_ID,
    ORDER_ID,
    OTHER_PAYMENT_ID,
    PAYMENT_DEADLINE,
    PAYMENT_ID,
    PAYMENT_METHOD,
    PAYMENT_TIMEOUT_S,
    RESERVATION_ID,
    SAGA_DEADLINE,
    STATES,
    T0,
    ctx,
    events,
    failed,
    never_received,
    order_created,
    out_of_stock,
    refunded,
    released,
    reserved,
    run,
    saga,
    started,
    subjects,
    succeeded,
    timeout,
)

S = SagaStatus
PAYING = STATES["payment_processing"]

CREATED = c.ORDERS_CREATED
PROCESS = c.PAYMENTS_PROCESS_REQUEST
REFUND = c.PAYMENTS_REFUND_REQUEST
RELEASE = c.INVENTORY_RELEASE_REQUEST
CONFIRMED = c.ORDERS_CONFIRMED
CANCELLED = c.ORDERS_CANCELLED
FAILED = c.ORDERS_FAILED


def timestamp_of(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


M = TypeVar("M", bound=msgspec.Struct)


def only(decision: Decision, kind: type[M]) -> M:
    """The one message a decision emits, which must be a `kind`."""
    (message,) = decision.emit
    assert isinstance(message, kind)
    return message


def assert_inert(before: Saga, decision: Decision) -> None:
    assert decision.saga is before
    assert decision.emit == ()
    assert decision.history == ()
    assert not decision.changed


# --- the full status-by-event matrix ----------------------------------------------------

# Every pair that moves the saga: (state, event) -> (next status, subjects emitted in order).
# Every pair not listed must be inert.
TRANSITIONS: dict[tuple[str, str], tuple[SagaStatus, tuple[str, ...]]] = {
    ("started", "inventory.reserved"): (S.PAYMENT_PROCESSING, (PROCESS,)),
    ("started", "inventory.out_of_stock"): (S.FAILED, (FAILED,)),
    ("started", "timeout_after_saga_deadline"): (S.COMPENSATING, (RELEASE,)),
    ("payment_processing", "payments.succeeded"): (S.COMPLETED, (CONFIRMED,)),
    ("payment_processing", "payments.failed"): (S.COMPENSATING, (RELEASE,)),
    ("payment_processing", "inventory.released"): (S.COMPENSATING, (REFUND,)),
    ("payment_processing", "timeout_after_payment_deadline"): (S.COMPENSATING, (REFUND,)),
    ("payment_processing", "timeout_after_saga_deadline"): (S.COMPENSATING, (REFUND,)),
    ("failed", "payments.succeeded"): (S.FAILED, (REFUND,)),
    # Stock expired while the refund is pending: noted, and the release is no longer needed.
    ("compensating_refund_requested", "inventory.released"): (S.COMPENSATING, ()),
    ("compensating_refund_requested", "payments.refunded"): (S.COMPENSATING, (RELEASE,)),
    ("compensating_refund_requested_stock_released", "payments.refunded"): (
        S.COMPENSATED,
        (CANCELLED,),
    ),
    ("compensating_release_requested", "inventory.released"): (S.COMPENSATED, (CANCELLED,)),
    ("compensating_release_requested", "payments.succeeded"): (S.COMPENSATING, (REFUND,)),
    ("compensating_refunded_release_requested", "inventory.released"): (
        S.COMPENSATED,
        (CANCELLED,),
    ),
    # A reservation made after the saga timed out: its id is noted for the pending release.
    ("compensating_release_requested_no_reservation", "inventory.reserved"): (
        S.COMPENSATING,
        (),
    ),
    ("compensating_release_requested_no_reservation", "inventory.released"): (
        S.COMPENSATED,
        (CANCELLED,),
    ),
    ("compensating_release_requested_no_reservation", "payments.succeeded"): (
        S.COMPENSATING,
        (REFUND,),
    ),
    ("compensated_after_decline", "payments.succeeded"): (S.COMPENSATED, (REFUND,)),
    # A confirmed order's reservation expired: its confirmation never reached inventory.
    ("completed", "inventory.released"): (S.COMPLETED, (CONFIRMED,)),
}

MATRIX = list(itertools.product(STATES, events()))


def test_matrix_covers_every_status_and_every_message_type() -> None:
    assert {s.status for s in STATES.values()} == set(SagaStatus)
    kinds = {type(event) for event, _ in events().values()}
    assert kinds == {*c.SUBJECT_TYPES.values(), Timeout}
    assert set(TRANSITIONS) <= set(MATRIX)


@pytest.mark.parametrize(("state", "event"), MATRIX)
def test_each_status_and_event_pair_transitions_as_tabled_or_changes_nothing(
    state: str, event: str
) -> None:
    before = STATES[state]
    message, now = events()[event]
    decision = transition(before, message, ctx(now))
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        assert_inert(before, decision)
        return
    status, emitted = expected
    assert decision.saga.status is status
    assert tuple(subjects(decision)) == emitted
    assert decision.changed
    assert decision.history, "every change is recorded in the history"
    assert decision.history[-1].saga_status is status
    assert all(step.at == now for step in decision.history)
    assert all(m.order_id == ORDER_ID for m in decision.emit)


# --- happy path, out of stock ---------------------------------------------------------


def test_new_order_starts_the_saga_and_announces_the_order() -> None:
    begin = started()
    assert begin.emit == (order_created(),)
    assert [(h.saga_status, h.event, h.at) for h in begin.history] == [(S.STARTED, CREATED, T0)]
    s = begin.saga
    assert (s.status, s.amount, s.currency, s.payment_method) == (
        S.STARTED,
        AMOUNT,
        CURRENCY,
        PAYMENT_METHOD,
    )
    assert (s.started_at, s.saga_deadline, s.deadline) == (T0, SAGA_DEADLINE, SAGA_DEADLINE)
    assert (s.reservation_id, s.payment_id, s.payment_deadline) == (None, None, None)


def test_happy_path_reserves_charges_and_confirms_the_order() -> None:
    begin = started()
    end, (on_reserved, on_paid) = run(begin.saga, (reserved(), T0 + 1), (succeeded(), T0 + 2))

    history = [*begin.history, *on_reserved.history, *on_paid.history]
    assert [h.saga_status for h in history] == [
        S.STARTED,
        S.INVENTORY_RESERVED,
        S.PAYMENT_PROCESSING,
        S.PAYMENT_SUCCEEDED,
        S.COMPLETED,
    ]
    assert [h.at for h in history] == [T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2]
    assert subjects([begin, on_reserved, on_paid]) == [CREATED, PROCESS, CONFIRMED]

    assert on_reserved.emit == (
        c.ProcessPayment(
            order_id=ORDER_ID,
            customer_id=CUSTOMER_ID,
            amount=AMOUNT,
            currency=CURRENCY,
            payment_method=PAYMENT_METHOD,
        ),
    )
    wire = msgspec.json.decode(c.encode(on_reserved.emit[0]))
    assert wire == {
        "orderId": ORDER_ID,
        "customerId": CUSTOMER_ID,
        "amount": AMOUNT,
        "currency": CURRENCY,
        "paymentMethod": PAYMENT_METHOD,
    }
    assert on_reserved.saga.reservation_id == RESERVATION_ID
    assert on_reserved.saga.payment_deadline == T0 + 1 + PAYMENT_TIMEOUT_S

    confirmed = only(on_paid, c.OrderConfirmed)
    assert (confirmed.order_id, confirmed.payment_id) == (ORDER_ID, PAYMENT_ID)
    assert timestamp_of(confirmed.timestamp) == T0 + 2
    assert (end.status, end.payment_id, end.reservation_id) == (
        S.COMPLETED,
        PAYMENT_ID,
        RESERVATION_ID,
    )
    assert end.deadline is None


def test_out_of_stock_fails_the_order_at_the_inventory_stage() -> None:
    end, [decision] = run(started().saga, out_of_stock())
    assert decision.emit == (
        c.OrderFailed(order_id=ORDER_ID, reason="out_of_stock", failure_stage="inventory"),
    )
    assert (end.status, end.reason, end.deadline) == (S.FAILED, "out_of_stock", None)
    [step] = decision.history
    assert (step.saga_status, step.event) == (S.FAILED, c.INVENTORY_OUT_OF_STOCK)
    assert "sku-2" in (step.detail or "")


# --- a declined payment ----------------------------------------------------------------


def test_declined_payment_releases_stock_and_refunds_nothing() -> None:
    end, [decision] = run(PAYING, failed("card_declined"))
    assert decision.emit == (
        c.ReleaseInventory(
            order_id=ORDER_ID, reservation_id=RESERVATION_ID, reason="card_declined"
        ),
    )
    assert (end.status, end.reason, end.release_requested) == (
        S.COMPENSATING,
        "card_declined",
        True,
    )
    assert not end.refund_requested
    assert end.deadline == end.retry_at == T0 + 5.0 + 150.0  # re-sent if unanswered


@pytest.mark.parametrize("reason", ["card_declined", "insufficient_funds"])
def test_released_stock_after_a_declined_payment_cancels_with_the_payment_reason(
    reason: str,
) -> None:
    end, [_, on_released] = run(PAYING, failed(reason), (released(reason), T0 + 9))
    cancelled = only(on_released, c.OrderCancelled)
    assert (cancelled.order_id, cancelled.reason) == (ORDER_ID, reason)
    assert timestamp_of(cancelled.timestamp) == T0 + 9
    assert (end.status, end.reason, end.released) == (S.COMPENSATED, reason, True)
    assert [h.saga_status for h in on_released.history] == [S.COMPENSATING, S.COMPENSATED]


# --- timeouts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "which"),
    [(AFTER_PAYMENT_DEADLINE, "payment timeout"), (AFTER_SAGA_DEADLINE, "saga timeout")],
)
def test_timed_out_payment_is_refunded_before_stock_is_released(now: float, which: str) -> None:
    compensating, [on_timeout] = run(PAYING, (timeout(), now))
    assert on_timeout.emit == (
        c.RefundPayment(order_id=ORDER_ID, payment_id=None, reason="timeout"),
    )
    assert (compensating.status, compensating.reason) == (S.COMPENSATING, "timeout")
    assert on_timeout.history[0].detail == which
    assert not compensating.release_requested

    refunded_saga, [on_refunded] = run(compensating, (refunded(None, None), now + 1))
    assert on_refunded.emit == (
        c.ReleaseInventory(order_id=ORDER_ID, reservation_id=RESERVATION_ID, reason="timeout"),
    )
    assert refunded_saga.status is S.COMPENSATING

    end, [on_released] = run(refunded_saga, (released("timeout"), now + 2))
    cancelled = only(on_released, c.OrderCancelled)
    assert (cancelled.order_id, cancelled.reason) == (ORDER_ID, "timeout")
    assert timestamp_of(cancelled.timestamp) == now + 2
    assert end.status is S.COMPENSATED


def test_timed_out_payment_releases_nothing_until_the_refund_is_confirmed() -> None:
    compensating, _ = run(PAYING, (timeout(), AFTER_PAYMENT_DEADLINE))
    waiting: list[Event | tuple[Event, float]] = [
        (timeout(), AFTER_PAYMENT_DEADLINE + 60),  # before the compensation's retry time
        failed(),
        succeeded(),
        reserved(),
        out_of_stock(),
    ]
    end, decisions = run(compensating, *waiting)
    assert subjects(decisions) == []
    assert end is compensating


def test_saga_timeout_before_any_reservation_releases_whatever_is_held() -> None:
    compensating, [on_timeout] = run(STATES["started"], (timeout(), AFTER_SAGA_DEADLINE))
    assert on_timeout.emit == (
        c.ReleaseInventory(order_id=ORDER_ID, reservation_id=None, reason="timeout"),
    )
    assert (compensating.status, compensating.reason) == (S.COMPENSATING, "timeout")
    assert not compensating.refund_requested, "nothing was charged"

    end, [on_released] = run(compensating, released("timeout", reservation_id=None))
    assert only(on_released, c.OrderCancelled).reason == "timeout"
    assert end.status is S.COMPENSATED


def test_reservation_made_after_a_saga_timeout_is_noted_and_released() -> None:
    compensating, _ = run(STATES["started"], (timeout(), AFTER_SAGA_DEADLINE))
    noted, [on_reserved] = run(compensating, reserved())
    assert on_reserved.emit == ()
    assert (noted.status, noted.reservation_id) == (S.COMPENSATING, RESERVATION_ID)
    assert [h.event for h in on_reserved.history] == [c.INVENTORY_RESERVED]

    end, [on_released] = run(noted, released("timeout"))
    assert subjects(on_released) == [CANCELLED]
    assert end.status is S.COMPENSATED


@pytest.mark.parametrize(
    ("state", "now"),
    [
        ("started", BEFORE_DEADLINES),
        ("started", AFTER_PAYMENT_DEADLINE),  # a STARTED saga has no payment deadline yet
        ("started", SAGA_DEADLINE - 0.001),
        ("payment_processing", BEFORE_DEADLINES),
        ("payment_processing", PAYMENT_DEADLINE - 0.001),
    ],
)
def test_timeout_before_the_deadline_changes_nothing(state: str, now: float) -> None:
    before = STATES[state]
    assert_inert(before, transition(before, timeout(), ctx(now)))


@pytest.mark.parametrize(
    ("state", "now", "emitted"),
    [("started", SAGA_DEADLINE, RELEASE), ("payment_processing", PAYMENT_DEADLINE, REFUND)],
)
def test_timeout_fires_at_the_deadline_itself(state: str, now: float, emitted: str) -> None:
    decision = transition(STATES[state], timeout(), ctx(now))
    assert decision.saga.status is S.COMPENSATING
    assert subjects(decision) == [emitted]


def test_saga_deadline_that_comes_first_ends_the_payment_step() -> None:
    # A payment deadline later than the saga's: the saga deadline decides.
    late = saga(
        status=S.PAYMENT_PROCESSING,
        reservation_id=RESERVATION_ID,
        payment_deadline=SAGA_DEADLINE + 60,
    )
    assert late.deadline == SAGA_DEADLINE
    assert_inert(late, transition(late, timeout(), ctx(SAGA_DEADLINE - 1)))
    decision = transition(late, timeout(), ctx(SAGA_DEADLINE))
    assert subjects(decision) == [REFUND]
    assert decision.history[0].detail == "saga timeout"


@pytest.mark.parametrize("state", sorted(STATES))
def test_deadline_is_none_once_compensating_or_ended_and_the_earliest_otherwise(
    state: str,
) -> None:
    s = STATES[state]
    if s.status in TERMINAL or s.status is S.COMPENSATING:
        assert s.deadline is None
    elif s.payment_deadline is None:
        assert s.deadline == s.saga_deadline
    else:
        assert s.deadline == min(s.saga_deadline, s.payment_deadline)


def test_payment_step_deadline_is_set_when_stock_is_reserved() -> None:
    paying, _ = run(started().saga, (reserved(), T0 + 7))
    assert paying.deadline == min(SAGA_DEADLINE, T0 + 7 + PAYMENT_TIMEOUT_S)
    # A payment window longer than what is left of the saga: the saga's deadline wins.
    paying, _ = run(started().saga, (reserved(), SAGA_DEADLINE - 10))
    assert paying.deadline == SAGA_DEADLINE


# --- reservation expiry -----------------------------------------------------------------


def test_reservation_expiring_during_payment_refunds_and_needs_no_release() -> None:
    compensating, [on_expired] = run(PAYING, released("expired"))
    refund = only(on_expired, c.RefundPayment)
    assert (refund.order_id, refund.payment_id) == (ORDER_ID, None), "whatever was charged"
    assert refund.reason == compensating.reason
    assert compensating.status is S.COMPENSATING
    assert compensating.released

    end, [on_refunded] = run(compensating, refunded(None, None))
    assert only(on_refunded, c.OrderCancelled).reason == compensating.reason
    assert end.status is S.COMPENSATED


# --- late and duplicate payments ---------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        "failed",
        "compensated_after_decline",
        "compensating_release_requested",
        "compensating_release_requested_no_reservation",
    ],
)
def test_late_payment_is_refunded(state: str) -> None:
    before = STATES[state]
    after, [late] = run(before, succeeded(PAYMENT_ID))
    assert late.emit == (
        c.RefundPayment(order_id=ORDER_ID, payment_id=PAYMENT_ID, reason="late_payment"),
    )
    assert after.status is before.status
    assert after.refund_requested
    assert [h.event for h in late.history] == [c.PAYMENTS_SUCCEEDED]
    assert_inert(after, transition(after, succeeded(PAYMENT_ID), ctx()))


def test_payment_after_the_order_was_cancelled_is_refunded() -> None:
    cancelled, _ = run(PAYING, failed(), released("card_declined"))
    assert cancelled.status is S.COMPENSATED
    _, [late] = run(cancelled, succeeded(PAYMENT_ID))
    assert late.emit == (
        c.RefundPayment(order_id=ORDER_ID, payment_id=PAYMENT_ID, reason="late_payment"),
    )


@pytest.mark.parametrize(
    "state",
    [
        "compensating_refund_requested",
        "compensating_refund_requested_stock_released",
        "compensating_refunded_release_requested",
        "compensated_after_timeout",
    ],
)
def test_late_payment_is_not_refunded_twice_when_a_refund_was_requested(state: str) -> None:
    before = STATES[state]
    assert_inert(before, transition(before, succeeded(PAYMENT_ID), ctx()))


def test_duplicate_payment_on_a_completed_order_changes_nothing() -> None:
    before = STATES["completed"]
    assert_inert(before, transition(before, succeeded(PAYMENT_ID), ctx()))


def test_second_charge_on_a_completed_order_is_refunded_and_the_order_keeps_its_payment() -> None:
    before = STATES["completed"]
    after, [second] = run(before, succeeded(OTHER_PAYMENT_ID))
    assert second.emit == (
        c.RefundPayment(order_id=ORDER_ID, payment_id=OTHER_PAYMENT_ID, reason="late_payment"),
    )
    assert after.status is S.COMPLETED
    # The order was confirmed with PAYMENT_ID; GET /orders/{id} must keep showing that one,
    # not the charge being refunded.
    assert after.payment_id == PAYMENT_ID


# --- terminal states and duplicates -------------------------------------------------------


@pytest.mark.parametrize("state", [name for name, s in STATES.items() if s.status in TERMINAL])
def test_ended_saga_ignores_everything_but_a_late_payment(state: str) -> None:
    before = STATES[state]
    for name, (event, now) in events().items():
        if name == "payments.succeeded" or (state, name) == ("completed", "inventory.released"):
            continue
        assert_inert(before, transition(before, event, ctx(now)))


SCENARIOS: dict[str, list[tuple[Event, float]]] = {
    "happy_path": [(reserved(), T0 + 1), (succeeded(), T0 + 2)],
    "out_of_stock": [(out_of_stock(), T0 + 1)],
    "declined": [(reserved(), T0 + 1), (failed(), T0 + 2), (released("card_declined"), T0 + 3)],
    "payment_timeout": [
        (reserved(), T0 + 1),
        (timeout(), AFTER_PAYMENT_DEADLINE),
        (refunded(None, None), AFTER_PAYMENT_DEADLINE + 1),
        (released("timeout"), AFTER_PAYMENT_DEADLINE + 2),
    ],
    "saga_timeout": [
        (timeout(), AFTER_SAGA_DEADLINE),
        (reserved(), AFTER_SAGA_DEADLINE + 1),
        (released("timeout"), AFTER_SAGA_DEADLINE + 2),
    ],
    "reservation_expired": [
        (reserved(), T0 + 1),
        (released("expired"), T0 + 2),
        (refunded(None, None), T0 + 3),
    ],
    "late_payment": [
        (reserved(), T0 + 1),
        (failed(), T0 + 2),
        (released("card_declined"), T0 + 3),
        (succeeded(), T0 + 4),
        (refunded(), T0 + 5),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_event_delivered_twice_acts_once(scenario: str) -> None:
    s = started().saga
    for event, now in SCENARIOS[scenario]:
        first = transition(s, event, ctx(now))
        s = first.saga
        for later in (now, now + 1):
            assert_inert(s, transition(s, event, ctx(later)))


@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        ("happy_path", S.COMPLETED),
        ("out_of_stock", S.FAILED),
        ("declined", S.COMPENSATED),
        ("payment_timeout", S.COMPENSATED),
        ("saga_timeout", S.COMPENSATED),
        ("reservation_expired", S.COMPENSATED),
        ("late_payment", S.COMPENSATED),
    ],
)
def test_each_scenario_ends_in_its_final_status(scenario: str, status: SagaStatus) -> None:
    end, _ = run(started().saga, *SCENARIOS[scenario])
    assert end.status is status


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(STATES))
def test_same_inputs_give_equal_outputs(state: str) -> None:
    before = STATES[state]
    copy = msgspec.json.decode(msgspec.json.encode(before), type=Saga)
    for event, now in events().values():
        assert transition(before, event, ctx(now)) == transition(copy, event, ctx(now))


def test_saga_reads_no_clock_and_makes_no_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> object:
        raise AssertionError("the saga must take time and ids from its arguments")

    expected = {name: run(started().saga, *steps) for name, steps in SCENARIOS.items()}
    for name in ("time", "time_ns", "monotonic", "monotonic_ns"):
        monkeypatch.setattr(time, name, forbidden)
    for name in ("uuid1", "uuid4"):
        monkeypatch.setattr(uuid, name, forbidden)
    monkeypatch.setattr(random, "random", forbidden)
    for name, steps in SCENARIOS.items():
        assert run(started().saga, *steps) == expected[name]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_times_in_history_and_messages_come_from_the_context(scenario: str) -> None:
    shift = 86_400.0 * 365
    for offset in (0.0, shift):
        s = started().saga
        s = msgspec.structs.replace(s, started_at=T0 + offset, saga_deadline=SAGA_DEADLINE + offset)
        for event, now in SCENARIOS[scenario]:
            decision = transition(s, event, ctx(now + offset))
            assert all(step.at == now + offset for step in decision.history)
            for message in decision.emit:
                stamp = getattr(message, "timestamp", None)
                if stamp is not None:
                    assert timestamp_of(stamp) == now + offset
            s = decision.saga


# --- invariants over random event sequences -----------------------------------------------

POOL: dict[str, Event] = {
    "reserved": reserved(),
    "out_of_stock": out_of_stock(),
    "released_expired": released("expired"),
    "released_on_request": released("timeout"),
    "released_nothing_held": released("timeout", reservation_id=None),
    "succeeded": succeeded(PAYMENT_ID),
    "succeeded_other": succeeded(OTHER_PAYMENT_ID),
    "failed": failed(),
    "refunded": refunded(PAYMENT_ID),
    "refunded_nothing_charged": refunded(None, None),
    "timeout": timeout(),
    **never_received(),
}
STEPS_S = (0.0, 1.0, 30.0, 150.0)  # some steps jump past the payment or the saga deadline


def violations(sequence: list[tuple[str, float]]) -> list[str]:
    """What the sequence breaks of the saga's invariants; empty when it keeps them all."""
    begin = started()
    s, now = begin.saga, T0
    emitted: list[c.AnyMessage] = list(begin.emit)
    charges: set[str] = set()
    found: list[str] = []
    for label, step in sequence:
        now += step
        event = POOL[label]
        d = transition(s, event, ctx(now))
        if not d.changed and d.saga is not s:
            found.append(f"{label}: state replaced without a change")
        if d.saga != s and not d.history:
            found.append(f"{label}: state changed without a history record")
        if d.history and d.history[-1].saga_status is not d.saga.status:
            found.append(f"{label}: last history step is not the new status")
        if any(m.order_id != ORDER_ID for m in d.emit):
            found.append(f"{label}: message for another order")
        if RELEASE in subjects(d) and not d.saga.refunded:
            found.append(f"{label}: stock released before the refund settled")
        if s.status in TERMINAL and d.saga.status is not s.status:
            found.append(f"{label}: left terminal status {s.status}")
        if isinstance(event, c.PaymentSucceeded) and any(
            isinstance(m, c.ProcessPayment) for m in emitted
        ):
            charges.add(event.payment_id)
        resending = (isinstance(event, Timeout) and s.status is S.COMPENSATING) or (
            isinstance(event, c.InventoryReleased) and s.status is S.COMPLETED
        )
        if resending:  # a message sent again must be one sent before (same Nats-Msg-Id)
            for m in d.emit:
                before = [x for x in emitted if type(x) is type(m)]
                same = isinstance(m, c.OrderConfirmed) and any(
                    isinstance(x, c.OrderConfirmed) and x.payment_id == m.payment_id for x in before
                )
                if m not in before and not same:
                    found.append(f"{label}: re-sent {c.subject_of(m)} never sent before")
        else:
            emitted.extend(d.emit)
        s = d.saga
        waiting = s.status not in TERMINAL
        if (s.deadline is not None) != waiting:
            found.append(f"{label}: wrong deadline in {s.status}")

    sent = [c.subject_of(m) for m in emitted]
    for subject in (PROCESS, REFUND, RELEASE):
        if sent.count(subject) > 1:
            found.append(f"{subject} emitted {sent.count(subject)} times")
    endings = [x for x in sent if x in (CONFIRMED, CANCELLED, FAILED)]
    expected_ending = {S.COMPLETED: [CONFIRMED], S.COMPENSATED: [CANCELLED], S.FAILED: [FAILED]}
    if endings != expected_ending.get(s.status, []):
        found.append(f"{s.status} with endings {endings}")
    if s.status is S.COMPLETED:
        confirmed = [m for m in emitted if isinstance(m, c.OrderConfirmed)]
        if s.payment_id is None or [m.payment_id for m in confirmed] != [s.payment_id]:
            found.append("COMPLETED saga keeps another paymentId than orders.confirmed gave")
    if s.status is S.COMPENSATED and not (s.released or s.reservation_id is None):
        found.append("COMPENSATED with stock still reserved")
    unpaid = charges - ({s.payment_id} if s.status is S.COMPLETED else set())
    if unpaid and s.status in (S.COMPENSATING, *TERMINAL) and REFUND not in sent:
        found.append(f"a charge is kept, not refunded, in {s.status}")
    return found


def shrink(sequence: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Drop events one at a time while the sequence still breaks an invariant."""
    shrunk = True
    while shrunk:
        shrunk = False
        for i in range(len(sequence)):
            candidate = sequence[:i] + sequence[i + 1 :]
            if violations(candidate):
                sequence, shrunk = candidate, True
                break
    return sequence


def random_sequences(count: int) -> Iterator[list[tuple[str, float]]]:
    """`count` event sequences from a fixed seed, so a failure replays identically."""
    rng = random.Random(20_240_601)
    labels = sorted(POOL)
    # Bias towards the events that move a saga, so most runs reach deep states.
    weighted = labels + [x for x in labels if x in {"reserved", "succeeded", "failed"}] * 3
    for _ in range(count):
        yield [(rng.choice(weighted), rng.choice(STEPS_S)) for _ in range(rng.randint(1, 12))]


def test_random_event_sequences_keep_the_saga_invariants() -> None:
    # Every distinct smallest counterexample, so one bug does not hide another.
    broken: dict[tuple[str, ...], list[tuple[str, float]]] = {}
    for sequence in random_sequences(3_000):
        if violations(sequence):
            smallest = shrink(sequence)
            broken.setdefault(tuple(violations(smallest)), smallest)
    assert not broken, "\n".join(f"{seq} breaks: {why}" for why, seq in broken.items())


def test_random_sequences_reach_every_final_status() -> None:
    # Guards the test above: its sequences must actually exercise every ending.
    seen: set[SagaStatus] = set()
    for sequence in random_sequences(3_000):
        s, now = started().saga, T0
        for label, step in sequence:
            now += step
            s = transition(s, POOL[label], ctx(now)).saga
        seen.add(s.status)
    assert {S.COMPLETED, S.FAILED, S.COMPENSATED, S.COMPENSATING} <= seen


# --- lost messages: compensation re-sent, confirmation re-sent ----------------------------


def test_unanswered_refund_is_sent_again_after_the_retry_time() -> None:
    compensating, _ = run(PAYING, (timeout(), AFTER_PAYMENT_DEADLINE))
    retry_at = compensating.retry_at
    assert retry_at == AFTER_PAYMENT_DEADLINE + 150.0

    early = transition(compensating, timeout(), ctx(retry_at - 1))
    again = transition(compensating, timeout(), ctx(retry_at))

    assert_inert(compensating, early)
    assert only(again, c.RefundPayment) == c.RefundPayment(
        order_id=ORDER_ID, payment_id=None, reason="timeout"
    )
    assert again.saga.status is S.COMPENSATING and again.saga.retry_at == retry_at + 150.0
    assert "re-sent payments.refund_request" in (again.history[0].detail or "")


def test_unanswered_release_is_sent_again_and_the_answer_still_completes() -> None:
    compensating, _ = run(PAYING, failed("card_declined"))
    again = transition(compensating, timeout(), ctx(compensating.retry_at or 0))
    assert subjects(again) == [RELEASE]
    done = transition(again.saga, released("card_declined"), ctx(T0 + 400))
    assert done.saga.status is S.COMPENSATED and subjects(done) == [CANCELLED]
    assert done.saga.deadline is None


def test_refund_answered_moves_the_retry_time_to_the_next_step() -> None:
    compensating, _ = run(PAYING, (timeout(), AFTER_PAYMENT_DEADLINE))
    answered = transition(compensating, refunded(None, None), ctx(AFTER_PAYMENT_DEADLINE + 10))
    assert subjects(answered) == [RELEASE]
    assert answered.saga.retry_at == AFTER_PAYMENT_DEADLINE + 10 + 150.0


def test_released_reservation_of_a_confirmed_order_sends_the_confirmation_again() -> None:
    done, _ = run(PAYING, succeeded())
    again = transition(done, released("expired"), ctx(T0 + 900))
    confirmed = only(again, c.OrderConfirmed)
    assert (confirmed.order_id, confirmed.payment_id) == (ORDER_ID, done.payment_id)
    assert again.saga == msgspec.structs.replace(done, confirmation_resent=True)
    assert again.history[0].saga_status is S.COMPLETED
    # The same release delivered again finds the confirmation sent: nothing changes twice.
    for later in (T0 + 900, T0 + 1_000):
        assert_inert(again.saga, transition(again.saga, released("expired"), ctx(later)))
