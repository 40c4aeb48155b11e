"""Read-only HTTP of the payment service: `GET /payments/{orderId}`, the payment record of an
order as JSON (for operators and tests). The payment method is never shown."""

from __future__ import annotations

import asyncpg

from jetsaga import leanhttp
from jetsaga.leanhttp import error, json_response
from payment_service import store


def routes(pool: asyncpg.Pool) -> list[leanhttp.Route]:
    async def get_payment(request: leanhttp.Request) -> leanhttp.Response:
        order_id = request.match_info["order_id"]
        rows = await store.load(pool, [order_id])
        row = rows.get(order_id)
        if row is None:
            return error(404, "no payment for this order", orderId=order_id)
        return json_response(
            {
                "orderId": row.order_id,
                "status": row.status,
                "amount": row.amount,
                "currency": row.currency,
                "paymentId": row.payment_id,
                "stripePaymentIntentId": row.intent_id,
                "refundId": row.refund_id,
                "failureReason": row.failure_reason,
                "createdAt": row.created_at.isoformat(),
                "updatedAt": row.updated_at.isoformat(),
            }
        )

    return [leanhttp.get("/payments/{order_id}", get_payment)]
