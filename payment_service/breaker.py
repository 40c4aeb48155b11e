"""A circuit breaker around the payment gateway, so that a gateway that is down is not
hammered by every held batch: after `threshold` consecutive transient failures it opens, and
for `cooldown_s` every call fails fast with `Unavailable`; then one trial call goes through
(half-open), and its outcome closes the breaker or opens it again.

`CircuitBreaker` is pure logic with an injected clock. Each admitted call gets a `Ticket`
naming the breaker's generation; an outcome reported on a ticket from an older generation
(a call admitted before the breaker last opened or closed) is ignored, so stragglers cannot
undo a decision. `GuardedGateway` applies it to every call of a `PaymentGateway`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from payment_service.gateway import Intent, PaymentGateway, Unavailable

State = Literal["closed", "open", "half_open"]
T = TypeVar("T")


class BreakerOpen(Unavailable):
    def __init__(self) -> None:
        super().__init__("payment gateway unavailable")


@dataclass(frozen=True, slots=True)
class Ticket:
    generation: int
    trial: bool


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown_s < 0:
            raise ValueError("threshold must be >= 1 and cooldown_s >= 0")
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._generation = 0
        self._failures = 0
        self._opened_at: float | None = None  # None: closed
        self._trial_out = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() >= self._opened_at + self.cooldown_s else "open"

    def admit(self) -> Ticket:
        """A ticket for one call, or `BreakerOpen` if the call must fail fast."""
        state = self.state
        if state == "closed":
            return Ticket(self._generation, trial=False)
        if state == "half_open" and not self._trial_out:
            self._trial_out = True
            return Ticket(self._generation, trial=True)
        raise BreakerOpen()

    def record(self, ticket: Ticket, ok: bool) -> None:
        """The outcome of an admitted call: `ok` unless the gateway was unavailable."""
        if ticket.generation != self._generation:
            return
        if ticket.trial:
            self._trial_out = False
            self._turn(open_=not ok)
        elif ok:
            self._failures = 0
        else:
            self._failures += 1
            if self._failures >= self.threshold:
                self._turn(open_=True)

    def release(self, ticket: Ticket) -> None:
        """An admitted call ended without an outcome (cancelled): free the trial slot."""
        if ticket.trial and ticket.generation == self._generation:
            self._trial_out = False

    def _turn(self, *, open_: bool) -> None:
        self._generation += 1
        self._failures = 0
        self._opened_at = self._clock() if open_ else None


class GuardedGateway:
    """A `PaymentGateway` whose calls go through a `CircuitBreaker`."""

    def __init__(self, gateway: PaymentGateway, breaker: CircuitBreaker) -> None:
        self.inner, self.breaker = gateway, breaker

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        ticket = self.breaker.admit()
        try:
            result = await call()
        except Unavailable:
            self.breaker.record(ticket, ok=False)
            raise
        except Exception:
            self.breaker.record(ticket, ok=True)  # the gateway answered (a decline, say)
            raise
        except BaseException:
            self.breaker.release(ticket)  # cancelled: no verdict on the gateway
            raise
        self.breaker.record(ticket, ok=True)
        return result

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        return await self._call(
            lambda: self.inner.create_intent(order_id, amount, currency, payment_method)
        )

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        return await self._call(lambda: self.inner.confirm_intent(order_id, intent_id))

    async def retrieve_intent(self, intent_id: str) -> Intent:
        return await self._call(lambda: self.inner.retrieve_intent(intent_id))

    async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
        return await self._call(lambda: self.inner.cancel_intent(order_id, intent_id))

    async def refund(self, order_id: str, intent_id: str) -> str:
        return await self._call(lambda: self.inner.refund(order_id, intent_id))

    async def close(self) -> None:
        await self.inner.close()
