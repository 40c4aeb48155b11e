"""Order ids: version-7 UUIDs, well formed, distinct, and ordered by time as text."""

from __future__ import annotations

import time
import uuid

import pytest

from jetsaga import ids
from order_service.api import order_id_for
from order_service.validation import LineItem, OrderRequest


def test_a_uuid7_is_a_canonical_rfc_9562_version_7_uuid() -> None:
    for _ in range(5_000):
        text = ids.uuid7()
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)


def test_its_first_48_bits_are_the_unix_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = uuid.UUID(ids.uuid7()).int >> 80
    after = time.time_ns() // 1_000_000
    assert before <= stamp <= after


def test_the_74_other_bits_are_random() -> None:
    made = [uuid.UUID(ids.uuid7()).int for _ in range(20_000)]
    assert len(set(made)) == len(made)
    rand_a = {(n >> 64) & 0xFFF for n in made}
    rand_b = {n & ((1 << 62) - 1) for n in made}
    assert len(rand_a) > 4_000  # 12 bits: nearly every value shows up in 20,000 draws
    assert len(rand_b) == len(made)


def test_text_order_is_time_order(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(ms * 1_000_000 for ms in (1, 2, 255, 256, 2**40, 2**47, 2**48 - 1))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [ids.uuid7() for _ in range(7)]
    assert made == sorted(made)
    assert made[-1].startswith("ffffffff-ffff-7")


def _request(order_id: str | None = None) -> OrderRequest:
    item = LineItem(product_id="sku-1", quantity=1, unit_price=100)
    return OrderRequest(
        customer_id="c-1", items=(item,), currency="usd", payment_method="pm_card_visa",
        order_id=order_id,
    )  # fmt: skip


def test_the_order_service_makes_a_uuid7_when_the_client_gives_no_id_or_key() -> None:
    assert uuid.UUID(order_id_for(_request(), None)).version == 7


def test_a_client_id_or_an_idempotency_key_still_decides_the_id() -> None:
    client = str(uuid.uuid4())
    assert order_id_for(_request(client), None) == client
    assert order_id_for(_request(client), "key-1") == client
    keyed = order_id_for(_request(), "key-1")
    assert keyed == order_id_for(_request(), "key-1")
    assert uuid.UUID(keyed).version == 5
