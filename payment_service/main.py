"""Composition root of the payment service: the gateway (Stripe or fake) behind a circuit
breaker, the `payment-service` consumer and `GET /payments/{orderId}`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from jetsaga import runtime
from jetsaga.config import Settings
from jetsaga.contracts import CONSUMERS_BY_DURABLE
from payment_service import api
from payment_service.breaker import CircuitBreaker, GuardedGateway
from payment_service.fake_gateway import FakeGateway
from payment_service.gateway import PaymentGateway
from payment_service.handlers import CONSUMER, PaymentHandler
from payment_service.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
BREAKER_THRESHOLD = 5  # consecutive transient failures before the gateway is left alone
BREAKER_COOLDOWN_S = 5.0
DRAIN_LIMIT_S = 30.0


def build_gateway(settings: Settings) -> PaymentGateway:
    if settings.payment_gateway == "fake":
        return FakeGateway()
    return StripeGateway(settings.stripe_secret_key, settings.stripe_api_base)


async def wire(rt: runtime.Runtime) -> runtime.Parts:
    gateway = GuardedGateway(
        build_gateway(rt.settings), CircuitBreaker(BREAKER_THRESHOLD, BREAKER_COOLDOWN_S)
    )
    handler = PaymentHandler(rt.pool, gateway, statements=rt.relay.statements)
    log.info("payment gateway", extra={"gateway": rt.settings.payment_gateway})

    async def close_gateway(stop: asyncio.Event) -> None:
        await stop.wait()
        try:  # let in-flight batches finish their gateway calls first
            async with asyncio.timeout(DRAIN_LIMIT_S):
                await handler.wait_idle()
        except TimeoutError:
            log.warning("closing the payment gateway with a batch still in flight")
        finally:
            await gateway.close()

    return runtime.Parts(
        consumers=[(CONSUMERS_BY_DURABLE[CONSUMER], handler)],
        routes=api.routes(rt.pool),
        loops=[close_gateway],
    )


async def main(settings: Settings) -> None:
    await runtime.serve("payment", settings, MIGRATIONS, wire, generic_plans=True)
