"""HTTP endpoints every service serves (SPEC §1)."""

from __future__ import annotations

import asyncpg
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jetsaga import db
from jetsaga.leanhttp import Request, Response, Route, get, json_response


def base_routes(nc: NATS, pool: asyncpg.Pool) -> list[Route]:
    async def healthz(_: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = {"nats": nc.is_connected, "database": await db.ping(pool)}
        ready = all(checks.values())
        return json_response(
            {"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503
        )

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    return [get("/healthz", healthz), get("/readyz", readyz), get("/metrics", metrics)]
