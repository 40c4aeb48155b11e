"""The OpenAPI 3.1 document of the order service, generated from the same Structs that the
API validates and returns, so it cannot drift from them."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from order_service.store import OrderView
from order_service.validation import FieldError, OrderRequest


class Accepted(msgspec.Struct, frozen=True, rename="camel"):
    order_id: str
    status: str
    saga_status: str


class OrderPage(msgspec.Struct, frozen=True, rename="camel"):
    orders: list[OrderView]
    next_cursor: str | None


class Problem(msgspec.Struct, frozen=True):
    error: str
    fields: list[FieldError] = []


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


@functools.cache
def document() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        [OrderRequest, Accepted, OrderView, OrderPage, Problem],
        ref_template="#/components/schemas/{name}",
    )
    problem = {"description": "", **_ref("Problem")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jetsaga order service", "version": "1"},
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Place an order and start its saga",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                    "requestBody": {"required": True, **_ref("OrderRequest")},
                    "responses": {
                        "201": {"description": "order accepted, saga started", **_ref("Accepted")},
                        "200": {"description": "idempotent replay", **_ref("Accepted")},
                        "400": {**problem, "description": "malformed JSON"},
                        "409": {**problem, "description": "key reused with another body"},
                        "413": {"description": "body over 64 KiB"},
                        "422": {**problem, "description": "invalid fields, each named"},
                    },
                },
                "get": {
                    "summary": "List orders, newest first",
                    "parameters": [
                        {"name": n, "in": "query", "required": False, "schema": {"type": t}}
                        for n, t in (
                            ("customerId", "string"),
                            ("status", "string"),
                            ("limit", "integer"),
                            ("cursor", "string"),
                        )
                    ],
                    "responses": {"200": {"description": "a page", **_ref("OrderPage")}},
                },
            },
            "/orders/{orderId}": {
                "get": {
                    "summary": "An order with its saga's full history",
                    "parameters": [
                        {
                            "name": "orderId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "the order", **_ref("OrderView")},
                        "404": {**problem, "description": "unknown order"},
                    },
                }
            },
        },
        "components": {"schemas": components},
    }
