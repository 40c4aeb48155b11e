"""HTTP endpoints every service serves (SPEC §1) and small helpers for JSON handlers."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from aiohttp import web
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

    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )
    return app
