"""Validation of `PUT /inventory/{productId}` bodies, with no I/O."""

from __future__ import annotations

import pytest

from inventory_service.api import MAX_STOCK, Invalid, parse_stock_level


@pytest.mark.parametrize("body", [b'{"available": 0}', b'{"available": 500, "note": "x"}'])
def test_a_non_negative_integer_is_taken(body: bytes) -> None:
    assert parse_stock_level("sku-1", body) in (0, 500)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"available": 1,}'])
def test_malformed_json_is_400(body: bytes) -> None:
    with pytest.raises(Invalid) as raised:
        parse_stock_level("sku-1", body)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (b"{}", "available", "is required"),
        (b'{"available": -1}', "available", "between 0"),
        (b'{"available": 1.5}', "available", "integer"),
        (b'{"available": "5"}', "available", "integer"),
        (b'{"available": true}', "available", "integer"),
        (b'{"available": null}', "available", "integer"),
        (f'{{"available": {MAX_STOCK + 1}}}'.encode(), "available", "between 0"),
        (b"[1]", "body", "JSON object"),
    ],
)
def test_a_bad_value_is_422_naming_the_field(body: bytes, field: str, reason: str) -> None:
    with pytest.raises(Invalid) as raised:
        parse_stock_level("sku-1", body)
    assert raised.value.status == 422
    assert reason in raised.value.fields[field]


def test_an_overlong_product_id_is_422() -> None:
    with pytest.raises(Invalid) as raised:
        parse_stock_level("x" * 129, b'{"available": 1}')
    assert set(raised.value.fields) == {"productId"}
