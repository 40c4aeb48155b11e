"""HTTP API of the order service (SPEC §2): intake, order lookup and listing.

Intake only translates a request into a new saga: validation, idempotency, then one
statement that writes the order, its saga and `orders.created` (transactional outbox). The
response is sent after that commit.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
import uuid

import asyncpg
import msgspec

from jetsaga import contracts as c
from jetsaga import leanhttp, tracing
from jetsaga.config import Settings
from jetsaga.ids import uuid7
from jetsaga.leanhttp import error, json_response
from jetsaga.outbox import outgoing
from order_service import metrics, store
from order_service.intake import IntakeWriter
from order_service.openapi import document
from order_service.saga import start
from order_service.validation import FieldError, OrderRequest, validate

ORDER_NAMESPACE = uuid.UUID("5b0f3c0e-7a51-4e6c-9d86-3f2c1a0b9e11")
STATUSES = frozenset({"PENDING", "CONFIRMED", "CANCELLED", "FAILED"})
_encoder = msgspec.json.Encoder(order="sorted")


def request_hash(request: OrderRequest) -> str:
    return hashlib.sha256(_encoder.encode(request)).hexdigest()


def order_id_for(request: OrderRequest, key: str | None) -> str:
    if request.order_id:
        return request.order_id
    if key:  # the same key always names the same order
        return str(uuid.uuid5(ORDER_NAMESPACE, key))
    return uuid7()


def _accepted(order_id: str, status: str, saga_status: str, code: int) -> leanhttp.Response:
    body = {"orderId": order_id, "status": status, "sagaStatus": saga_status}
    return json_response(body, status=code, headers={"Location": f"/orders/{order_id}"})


def _encode_cursor(view: store.OrderView) -> str:
    return base64.urlsafe_b64encode(f"{view.created_at}|{view.order_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    created, order_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    return datetime.datetime.fromisoformat(created), order_id


def routes(pool: asyncpg.Pool, settings: Settings, intake: IntakeWriter) -> list[leanhttp.Route]:
    async def create(request: leanhttp.Request) -> leanhttp.Response:
        # The intake's trace context is the order's: orders.created carries it.
        with tracing.intake("POST", "/orders", request.headers.get(c.TRACEPARENT)) as trace:
            response = await accept(request, trace.traceparent)
            trace.respond(response.status)
            return response

    async def accept(request: leanhttp.Request, traceparent: str) -> leanhttp.Response:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            metrics.RECEIVED["bad_json"].inc()
            return error(400, f"malformed JSON: {exc}")
        parsed, errors = validate(body)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            errors.append(FieldError("Idempotency-Key", "must be 1 to 255 characters"))
        if parsed is None or errors:
            metrics.RECEIVED["invalid"].inc()
            return error(422, "invalid order", fields=errors)
        order_id = order_id_for(parsed, key)
        total = sum(i.quantity * i.unit_price for i in parsed.items)
        order = c.OrderCreated(
            order_id=order_id, customer_id=parsed.customer_id, items=parsed.items,
            total_amount=total, currency=parsed.currency,
        )  # fmt: skip
        first = start(order, parsed.payment_method, time.time(), settings.saga_timeout_s)
        new = store.NewOrder(
            order=order, idempotency_key=key, request_hash=request_hash(parsed), first=first,
            created=outgoing(order, traceparent=traceparent),
        )  # fmt: skip
        if await intake.create(new):
            metrics.RECEIVED["created"].inc()
            return _accepted(order_id, "PENDING", "STARTED", 201)
        async with pool.acquire() as conn:
            existing = await store.find_existing(conn, order_id, key)
        if existing is None:  # raced with nothing: cannot happen unless rows are deleted
            return error(500, "order neither created nor found")
        if existing.request_hash != new.request_hash:
            metrics.RECEIVED["conflict"].inc()
            return error(409, "idempotency key or orderId already used with another body",
                         orderId=existing.order_id)  # fmt: skip
        metrics.RECEIVED["replayed"].inc()
        return _accepted(existing.order_id, existing.status, existing.saga_status, 200)

    async def get_one(request: leanhttp.Request) -> leanhttp.Response:
        async with pool.acquire() as conn:
            view = await store.get_order(conn, request.match_info["order_id"])
        if view is None:
            return error(404, "order not found")
        return json_response(view)

    async def list_page(request: leanhttp.Request) -> leanhttp.Response:
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            return error(422, "invalid query", fields=[FieldError("status", "unknown")])
        try:
            limit = int(q.get("limit", "50"))
            after = _decode_cursor(q["cursor"]) if q.get("cursor") else None
        except ValueError:
            return error(422, "invalid query: limit must be an integer, cursor as returned")
        if not 1 <= limit <= 500:
            return error(422, "invalid query", fields=[FieldError("limit", "1 to 500")])
        async with pool.acquire() as conn:
            page = await store.list_orders(conn, q.get("customerId") or None, status, limit, after)
        cursor = _encode_cursor(page[-1]) if len(page) == limit else None
        return json_response({"orders": page, "nextCursor": cursor})

    async def openapi(_: leanhttp.Request) -> leanhttp.Response:
        return json_response(document())

    return [
        leanhttp.post("/orders", create),
        leanhttp.get("/orders", list_page),
        leanhttp.get("/orders/{order_id}", get_one),
        leanhttp.get("/openapi.json", openapi),
    ]
