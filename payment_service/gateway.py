"""The payment gateway as the payment service sees it: a narrow protocol over Stripe's
PaymentIntents and refunds, the errors that split its failures into business outcomes and
transient faults, and the test payment methods both implementations honour.

Implementations: `StripeGateway` (stripe_gateway.py, the real SDK) and `FakeGateway`
(fake_gateway.py, in-process). `GuardedGateway` (breaker.py) wraps either one.
"""

from __future__ import annotations

from typing import Final, Protocol

import msgspec

from jetsaga.consumer import TransientError

# Stripe's PaymentIntent statuses that matter to us.
SUCCEEDED: Final = "succeeded"
CANCELED: Final = "canceled"
REQUIRES_CONFIRMATION: Final = "requires_confirmation"
REQUIRES_PAYMENT_METHOD: Final = "requires_payment_method"
REQUIRES_ACTION: Final = "requires_action"
PROCESSING: Final = "processing"

# Test payment methods that Stripe declines at charge time, with the error code it gives.
# Every other `pm_card_*` token is a card that charges successfully.
DECLINED_TOKENS: Final = {
    "pm_card_chargeCustomerFail": "card_declined",
    "pm_card_visa_chargeDeclined": "card_declined",
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "card_declined",
    "pm_card_chargeDeclinedFraudulent": "card_declined",
    "pm_card_chargeDeclinedLostCard": "card_declined",
    "pm_card_chargeDeclinedStolenCard": "card_declined",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedIncorrectCvc": "incorrect_cvc",
    "pm_card_chargeDeclinedProcessingError": "processing_error",
}


class Intent(msgspec.Struct, frozen=True, kw_only=True):
    """A PaymentIntent: its id, Stripe status and, after a failed charge, the error code."""

    id: str
    status: str
    failure_code: str | None = None


class GatewayError(Exception):
    """The gateway answered, and the answer is a failure of this payment."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


class Declined(GatewayError):
    """The card was declined (a business outcome, never retried)."""


class Rejected(GatewayError):
    """The request was invalid, or the intent is not in a state that allows it."""


class Missing(Rejected):
    """The gateway does not know this intent (404), so nothing was charged through it. Real
    Stripe never forgets one; a localstripe restarted without its store does."""

    def __init__(self, code: str = "resource_missing", message: str = "") -> None:
        super().__init__(code, message)


class Unavailable(TransientError):
    """The gateway did not answer usefully (5xx, timeout, connection, rate limit, auth):
    the payment may or may not have happened, so the caller holds and retries."""


class PaymentGateway(Protocol):
    """Every call is idempotent on Stripe's side through a key derived from the order id;
    our own `payments` row is what guards across Stripe's 24-hour key memory."""

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        """Create a PaymentIntent, not confirmed, with `metadata.orderId`."""
        ...

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        """Charge it. `Declined` for a declined card, `Rejected` if its state forbids it."""
        ...

    async def retrieve_intent(self, intent_id: str) -> Intent: ...

    async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
        """Make it unconfirmable for good; `Rejected` if it already succeeded."""
        ...

    async def refund(self, order_id: str, intent_id: str) -> str:
        """Refund the intent's charge in full, or find the refund already made; its id."""
        ...

    async def close(self) -> None: ...
