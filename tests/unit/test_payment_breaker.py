"""The circuit breaker around the payment gateway: pure logic on a hand-driven clock."""

from __future__ import annotations

import asyncio

import pytest

from payment_service.breaker import BreakerOpen, CircuitBreaker, GuardedGateway, Ticket
from payment_service.fake_gateway import FakeGateway
from payment_service.gateway import Declined, Intent, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failing(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record(breaker.admit(), ok=False)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(threshold=3, cooldown_s=5.0, clock=clock)


def test_starts_closed_and_admits(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    assert breaker.admit() == Ticket(0, trial=False)


def test_stays_closed_below_the_threshold(breaker: CircuitBreaker) -> None:
    failing(breaker, 2)
    assert breaker.state == "closed"


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    failing(breaker, 3)
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen, match="payment gateway unavailable"):
        breaker.admit()


def test_a_success_resets_the_failure_count(breaker: CircuitBreaker) -> None:
    failing(breaker, 2)
    breaker.record(breaker.admit(), ok=True)
    failing(breaker, 2)
    assert breaker.state == "closed"


def test_open_fails_fast_until_the_cooldown_ends(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 4.999
    assert breaker.state == "open"
    clock.now += 0.001
    assert str(breaker.state) == "half_open"


def test_half_open_admits_exactly_one_trial(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 5
    trial = breaker.admit()
    assert trial.trial
    with pytest.raises(BreakerOpen):
        breaker.admit()


def test_a_successful_trial_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 5
    breaker.record(breaker.admit(), ok=True)
    assert breaker.state == "closed"
    failing(breaker, 2)  # the failure count starts again from zero
    assert breaker.state == "closed"


def test_a_failed_trial_opens_for_another_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 5
    breaker.record(breaker.admit(), ok=False)
    assert breaker.state == "open"
    clock.now += 4.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.admit().trial


def test_a_released_trial_frees_the_slot(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 5
    breaker.release(breaker.admit())
    assert breaker.state == "half_open"
    assert breaker.admit().trial


def test_stragglers_from_before_opening_are_ignored(breaker: CircuitBreaker, clock: Clock) -> None:
    early = [breaker.admit() for _ in range(5)]
    for ticket in early[:3]:
        breaker.record(ticket, ok=False)
    assert breaker.state == "open"
    breaker.record(early[3], ok=True)  # a late success must not close an open breaker
    assert breaker.state == "open"
    clock.now += 5
    trial = breaker.admit()
    breaker.record(early[4], ok=False)  # nor a late failure decide the trial
    assert str(breaker.state) == "half_open"
    breaker.record(trial, ok=True)
    assert str(breaker.state) == "closed"


def test_stragglers_from_before_closing_are_ignored(breaker: CircuitBreaker, clock: Clock) -> None:
    failing(breaker, 3)
    clock.now += 5
    trial = breaker.admit()
    breaker.record(trial, ok=True)
    breaker.record(trial, ok=False)  # reported twice: the second is stale
    failing(breaker, 2)
    assert breaker.state == "closed"


@pytest.mark.parametrize("threshold, cooldown", [(0, 1.0), (1, -1.0)])
def test_rejects_nonsense_settings(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold, cooldown)


async def test_guarded_gateway_opens_on_transient_faults_only(clock: Clock) -> None:
    fake = FakeGateway()
    gateway = GuardedGateway(fake, CircuitBreaker(threshold=2, cooldown_s=5.0, clock=clock))
    intent = await gateway.create_intent("o-1", 100, "usd", "pm_card_chargeCustomerFail")
    for _ in range(3):  # declines are answers, not faults
        with pytest.raises(Declined):
            fake.intents[intent.id].status = "requires_confirmation"
            await gateway.confirm_intent("o-1", intent.id)
    assert gateway.breaker.state == "closed"
    fake.fail(times=2)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await gateway.retrieve_intent(intent.id)
    calls = sum(fake.calls.values())
    with pytest.raises(BreakerOpen):
        await gateway.retrieve_intent(intent.id)
    assert sum(fake.calls.values()) == calls  # failed fast, the gateway was not called
    clock.now += 5
    assert (await gateway.retrieve_intent(intent.id)).id == intent.id
    assert gateway.breaker.state == "closed"


async def test_guarded_gateway_releases_a_cancelled_trial(clock: Clock) -> None:
    started, never = asyncio.Event(), asyncio.Event()

    class Hanging(FakeGateway):
        async def retrieve_intent(self, intent_id: str) -> Intent:
            started.set()
            await never.wait()
            raise AssertionError("unreachable")

    breaker = CircuitBreaker(threshold=1, cooldown_s=1.0, clock=clock)
    gateway = GuardedGateway(Hanging(), breaker)
    failing(breaker, 1)
    clock.now += 1
    call = asyncio.create_task(gateway.retrieve_intent("pi_1"))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert breaker.admit().trial
