"""`StripeGateway`: the payment gateway on the real `stripe` SDK, through its async methods
on an aiohttp HTTP client, so no call blocks the event loop or needs a thread.

The same code talks to Stripe and to localstripe (`STRIPE_API_BASE`). Things localstripe does
differently, checked against localstripe 1.15: it ignores `Idempotency-Key` (two creates
make two intents, two refunds make two refunds, even past the charged amount), and an
intent in the wrong state answers a bare 400 with no error code where Stripe says
`payment_intent_unexpected_state`. So `refund` looks for an existing refund first, and
callers retrieve an intent after a `Rejected` confirm or cancel rather than trust the code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import stripe

from payment_service.gateway import Declined, Intent, Missing, Rejected, Unavailable

# The SDK logs request bodies (payment methods included) at debug level: never let it.
logging.getLogger("stripe").setLevel(logging.WARNING)

_LIVE_REFUND = ("succeeded", "pending", "requires_action")


@contextmanager
def _translated(call: str) -> Iterator[None]:
    """Stripe's errors, split into business outcomes and transient faults. Messages are
    dropped: Stripe's may quote the payment method, which we never log."""
    try:
        yield
    except stripe.CardError as exc:
        raise Declined(exc.code or "card_declined") from None
    except stripe.APIConnectionError:
        raise Unavailable(f"stripe {call}: no connection") from None
    except stripe.StripeError as exc:
        status = exc.http_status
        # 401/403: a key problem is ours to fix, not a reason to fail the customer's order.
        if status is None or status >= 500 or status in (401, 403, 409, 429):
            raise Unavailable(f"stripe {call}: HTTP {status}") from None
        if status == 404:
            raise Missing(exc.code or "resource_missing", f"stripe {call}") from None
        raise Rejected(exc.code or "invalid_request", f"stripe {call}: HTTP {status}") from None


def _intent(pi: Any) -> Intent:
    error = getattr(pi, "last_payment_error", None)
    return Intent(id=pi.id, status=pi.status, failure_code=getattr(error, "code", None))


class StripeGateway:
    def __init__(
        self,
        api_key: str,
        api_base: str,
        *,
        timeout_s: float = 20.0,
        max_network_retries: int = 2,
    ) -> None:
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=5.0)
        )
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )
        self._intents = self._client.v1.payment_intents
        self._refunds = self._client.v1.refunds

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        with _translated("create"):
            pi = await self._intents.create_async(
                {
                    "amount": amount,
                    "currency": currency,
                    "payment_method": payment_method,
                    "confirm": False,
                    "metadata": {"orderId": order_id},
                },
                {"idempotency_key": f"{order_id}:create"},
            )
        return _intent(pi)

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        with _translated("confirm"):
            pi = await self._intents.confirm_async(
                intent_id, None, {"idempotency_key": f"{order_id}:confirm"}
            )
        return _intent(pi)

    async def retrieve_intent(self, intent_id: str) -> Intent:
        with _translated("retrieve"):
            pi = await self._intents.retrieve_async(intent_id)
        return _intent(pi)

    async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
        with _translated("cancel"):
            pi = await self._intents.cancel_async(
                intent_id, None, {"idempotency_key": f"{order_id}:cancel"}
            )
        return _intent(pi)

    async def refund(self, order_id: str, intent_id: str) -> str:
        with _translated("refund"):
            # Stripe forgets the idempotency key after 24 h and localstripe never knew it:
            # an earlier refund of this intent (made before a crash) is found, not repeated.
            existing = await self._refunds.list_async({"payment_intent": intent_id, "limit": 10})
            for refund in existing.data:
                if refund.status in _LIVE_REFUND:
                    return str(refund.id)
            made = await self._refunds.create_async(
                {"payment_intent": intent_id, "metadata": {"orderId": order_id}},
                {"idempotency_key": f"{order_id}:refund"},
            )
        return str(made.id)

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]
