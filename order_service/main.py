"""Composition root of the order service: HTTP intake, the saga coordinator on its two
consumers, the timeout sweep and the metrics refresher."""

from __future__ import annotations

from pathlib import Path

from jetsaga import runtime
from jetsaga.config import Settings
from jetsaga.contracts import CONSUMERS_BY_DURABLE
from order_service import api
from order_service.cache import SagaCache
from order_service.handlers import Coordinator
from order_service.intake import IntakeWriter

MIGRATIONS = Path(__file__).parent / "migrations"


async def wire(rt: runtime.Runtime) -> runtime.Parts:
    cache = SagaCache()  # sagas as this worker wrote them: intake starts them
    coordinator = Coordinator(rt.pool, rt.settings, rt.relay, cache)
    intake = IntakeWriter(rt.pool, rt.relay, cache=cache)
    return runtime.Parts(
        consumers=[
            (CONSUMERS_BY_DURABLE[d], coordinator.handle)
            for d in ("order-service-inventory", "order-service-payment")
        ],
        routes=api.routes(rt.pool, rt.settings, intake),
        loops=[coordinator.sweep, coordinator.refresh_metrics],
        http_loops=[intake.run],
    )


async def main(settings: Settings) -> None:
    await runtime.serve("order", settings, MIGRATIONS, wire)
