"""`FakeGateway`: an in-process payment gateway (`PAYMENT_GATEWAY=fake`) with Stripe's test
tokens and PaymentIntent states, for benchmarks of the saga engine and for handler tests.

Like localstripe, and unlike Stripe within 24 hours, it ignores idempotency keys: a second
create makes a second intent, so a test sees any double charge our own records let through.
`fail` and `down` make it unavailable on purpose; `calls` counts every call by name.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field

from payment_service.gateway import (
    CANCELED,
    DECLINED_TOKENS,
    REQUIRES_ACTION,
    REQUIRES_CONFIRMATION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    Declined,
    Intent,
    Missing,
    Rejected,
    Unavailable,
)

_CANCELABLE = (REQUIRES_CONFIRMATION, REQUIRES_PAYMENT_METHOD, REQUIRES_ACTION, "requires_capture")


def _new_id(prefix: str) -> str:
    """Unique across processes and restarts, as a worker's ids land in a shared database."""
    return f"{prefix}_fake{uuid.uuid4().hex[:20]}"


@dataclass(slots=True)
class FakeIntent:
    id: str
    order_id: str
    amount: int
    currency: str
    payment_method: str
    status: str = REQUIRES_CONFIRMATION
    failure_code: str | None = None
    refund_id: str | None = None

    def view(self) -> Intent:
        return Intent(id=self.id, status=self.status, failure_code=self.failure_code)


@dataclass
class FakeGateway:
    intents: dict[str, FakeIntent] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    is_down: bool = False
    _failures: Counter[str] = field(default_factory=Counter)

    # --- test controls ------------------------------------------------------------------

    def fail(self, call: str = "*", times: int = 1) -> None:
        """The next `times` calls named `call` (`*`: any) raise `Unavailable`."""
        self._failures[call] += times

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def intents_of(self, order_id: str) -> list[FakeIntent]:
        return [i for i in self.intents.values() if i.order_id == order_id]

    def charged(self, order_id: str) -> int:
        """How many times money was taken for the order and not refunded."""
        return sum(
            1 for i in self.intents_of(order_id) if i.status == SUCCEEDED and not i.refund_id
        )

    # --- the gateway ----------------------------------------------------------------------

    def _enter(self, call: str) -> None:
        self.calls[call] += 1
        if self.is_down:
            raise Unavailable(f"fake {call}: gateway down")
        for name in (call, "*"):
            if self._failures[name] > 0:
                self._failures[name] -= 1
                raise Unavailable(f"fake {call}: injected failure")

    def _get(self, intent_id: str) -> FakeIntent:
        try:
            return self.intents[intent_id]
        except KeyError:
            raise Missing() from None

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        self._enter("create")
        if not payment_method.startswith("pm_card_"):
            raise Rejected("resource_missing")
        # Every intent is kept, as Stripe keeps them: a few distinct strings are shared.
        intent = FakeIntent(
            _new_id("pi"), order_id, amount, sys.intern(currency), sys.intern(payment_method)
        )
        self.intents[intent.id] = intent
        return intent.view()

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        self._enter("confirm")
        intent = self._get(intent_id)
        if intent.status != REQUIRES_CONFIRMATION:
            raise Rejected("payment_intent_unexpected_state")
        code = DECLINED_TOKENS.get(intent.payment_method)
        if code is not None:
            intent.status, intent.failure_code = REQUIRES_PAYMENT_METHOD, code
            raise Declined(code)
        intent.status = SUCCEEDED
        return intent.view()

    async def retrieve_intent(self, intent_id: str) -> Intent:
        self._enter("retrieve")
        return self._get(intent_id).view()

    async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
        self._enter("cancel")
        intent = self._get(intent_id)
        if intent.status not in _CANCELABLE:
            raise Rejected("payment_intent_unexpected_state")
        intent.status = CANCELED
        return intent.view()

    async def refund(self, order_id: str, intent_id: str) -> str:
        self._enter("refund")
        intent = self._get(intent_id)
        if intent.status != SUCCEEDED:
            raise Rejected("charge_not_succeeded")
        if intent.refund_id is None:
            intent.refund_id = _new_id("re")
        return intent.refund_id

    async def close(self) -> None:
        return None
