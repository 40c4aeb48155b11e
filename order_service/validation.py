"""Validation of `POST /orders` bodies (SPEC §2): every bad field is named, not just the
first, so a client can fix a request in one round. Pure: no I/O."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import msgspec

from jetsaga.contracts import Currency, LineItem

MAX_ITEMS = 100
MAX_QUANTITY = 10_000
MAX_UNIT_PRICE = 10**12  # keeps any total well inside a bigint
_CURRENCY = re.compile(r"^[a-z]{3}$")


class OrderRequest(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What a client posts; the schema published in the OpenAPI document."""

    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    items: Annotated[tuple[LineItem, ...], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    currency: Currency
    payment_method: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    order_id: str | None = None


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


def _text(body: dict[str, Any], name: str, limit: int, errors: list[FieldError]) -> None:
    value = body.get(name)
    if value is None:
        errors.append(FieldError(name, "is required"))
    elif not isinstance(value, str) or not value.strip():
        errors.append(FieldError(name, "must be a non-empty string"))
    elif len(value) > limit:
        errors.append(FieldError(name, f"must be at most {limit} characters"))


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _item(index: int, item: Any, errors: list[FieldError]) -> None:
    where = f"items[{index}]"
    if not isinstance(item, dict):
        errors.append(FieldError(where, "must be an object"))
        return
    sub: list[FieldError] = []
    _text(item, "productId", 128, sub)
    errors.extend(FieldError(f"{where}.{e.field}", e.message) for e in sub)
    quantity: Any = item.get("quantity")
    price: Any = item.get("unitPrice")
    if not _int(quantity) or not 1 <= quantity <= MAX_QUANTITY:
        errors.append(
            FieldError(f"{where}.quantity", f"must be an integer from 1 to {MAX_QUANTITY}")
        )
    if not _int(price) or not 0 <= price <= MAX_UNIT_PRICE:
        errors.append(
            FieldError(f"{where}.unitPrice", "must be a non-negative integer in minor units")
        )


def validate(body: Any) -> tuple[OrderRequest | None, list[FieldError]]:
    """Returns the typed request, or every field error found."""
    if not isinstance(body, dict):
        return None, [FieldError("body", "must be a JSON object")]
    errors: list[FieldError] = []
    _text(body, "customerId", 128, errors)
    _text(body, "paymentMethod", 255, errors)
    items = body.get("items")
    if items is None:
        errors.append(FieldError("items", "is required"))
    elif not isinstance(items, list):
        errors.append(FieldError("items", "must be an array"))
    elif not 1 <= len(items) <= MAX_ITEMS:
        errors.append(FieldError("items", f"must hold 1 to {MAX_ITEMS} items"))
    else:
        for index, item in enumerate(items):
            _item(index, item, errors)
    currency = body.get("currency")
    if currency is None:
        errors.append(FieldError("currency", "is required"))
    elif not isinstance(currency, str) or not _CURRENCY.match(currency.lower()):
        errors.append(FieldError("currency", "must be a three-letter ISO 4217 code, e.g. usd"))
    order_id = body.get("orderId")
    if order_id is not None:
        try:
            uuid.UUID(str(order_id))
            if not isinstance(order_id, str):
                raise ValueError
        except ValueError:
            errors.append(FieldError("orderId", "must be a UUID"))
    if errors:
        return None, errors
    normalized = {**body, "currency": currency.lower()}  # type: ignore[union-attr]
    if order_id is not None:
        normalized["orderId"] = str(uuid.UUID(order_id))
    return msgspec.convert(normalized, OrderRequest), []
