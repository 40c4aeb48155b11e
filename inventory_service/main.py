"""The inventory worker: its consumers, HTTP routes and expiry loop, wired into the shared
runtime (`jetsaga worker inventory`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from inventory_service import api
from inventory_service.expiry import Expiry
from inventory_service.handlers import CONFIRM, RELEASE, RESERVE, Handlers
from jetsaga.config import Settings
from jetsaga.contracts import CONSUMERS_BY_DURABLE
from jetsaga.runtime import Parts, Runtime, serve

MIGRATIONS: Final = Path(__file__).parent / "migrations"


async def wire(runtime: Runtime) -> Parts:
    settings = runtime.settings
    handlers = Handlers(
        runtime.pool,
        settings.reservation_ttl_s,
        transaction=runtime.relay.transaction,
        statements=runtime.relay.statements,
    )
    expiry = Expiry(runtime.pool, runtime.relay.transaction, settings.sweep_interval_s)
    return Parts(
        consumers=[
            (CONSUMERS_BY_DURABLE[RESERVE], handlers.reserve),
            (CONSUMERS_BY_DURABLE[RELEASE], handlers.release),
            (CONSUMERS_BY_DURABLE[CONFIRM], handlers.confirm),
        ],
        routes=api.routes(runtime.pool),
        loops=[expiry.run],
    )


async def main(settings: Settings) -> None:
    await serve("inventory", settings, MIGRATIONS, wire, generic_plans=True)
