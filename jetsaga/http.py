"""HTTP endpoints every service serves (SPEC §1) and small helpers for JSON handlers."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jetsaga import db

_encoder = msgspec.json.Encoder()
MAX_BODY = 64 * 1024


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_encoder.encode(body), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, **details: Any) -> web.Response:
    return json_response({"error": message, **details}, status=status)


@web.middleware
async def unavailable_as_503(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that needs the database while it is away gets 503 and a hint to retry,
    not a 500. (An order whose commit was cut off may exist: retry with the same
    Idempotency-Key or orderId, which makes the retry safe.)"""
    try:
        return await handler(request)
    except db.UNAVAILABLE:
        response = error(503, "database unavailable, retry shortly")
        response.headers["Retry-After"] = "1"
        return response


def base_app(nc: NATS, pool: asyncpg.Pool) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = {"nats": nc.is_connected, "database": await db.ping(pool)}
        ready = all(checks.values())
        return json_response(
            {"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=MAX_BODY, middlewares=[unavailable_as_503])
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )
    return app
