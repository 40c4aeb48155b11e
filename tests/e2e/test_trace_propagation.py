"""One order's path through the three services is one trace (issue 4).

Orders are posted with and without a W3C `traceparent`; the messages of each order are read
back from the ORDERS, INVENTORY and PAYMENTS streams by sequence. With tracing off (the
default) every message passes the order's context on unchanged. With the console exporter
on, each worker writes its spans to its log as JSON lines, and they form one tree per order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from jetsaga import contracts as c
from jetsaga import tracing
from tests.conftest import MakeSystem
from tests.support.api import Api, order_body
from tests.support.services import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

STREAMS = ("ORDERS", "INVENTORY", "PAYMENTS")
PAID = {
    "orders.created": "ORDERS",
    "inventory.reserved": "INVENTORY",
    "payments.process_request": "PAYMENTS",
    "payments.succeeded": "PAYMENTS",
    "orders.confirmed": "ORDERS",
}
DECLINED = {
    "orders.created": "ORDERS",
    "inventory.reserved": "INVENTORY",
    "payments.process_request": "PAYMENTS",
    "payments.failed": "PAYMENTS",
    "inventory.release_request": "INVENTORY",
    "inventory.released": "INVENTORY",
    "orders.cancelled": "ORDERS",
}
# The service whose handling of a subject is a span, and that span's parent's service.
CONSUMED_BY = {
    "orders.created": "inventory-service",
    "inventory.reserved": "order-service",
    "payments.process_request": "payment-service",
    "payments.succeeded": "order-service",
    "orders.confirmed": "inventory-service",
}

Found = dict[str, dict[str, str]]  # subject -> (stream, traceparent) of one order's messages


def caller_traceparent() -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"


def api_of(system: System, http: aiohttp.ClientSession) -> Api:
    return Api(http, system.order_url, system.inventory_url, system.payment_url)


async def post(api: Api, body: dict[str, Any], traceparent: str | None) -> str:
    headers = {c.TRACEPARENT: traceparent} if traceparent else None
    status, payload, _ = await api.post_order(body, headers=headers)
    assert status == 201, (status, payload)
    return str(payload["orderId"])


async def messages_of(system: System, order_ids: set[str]) -> dict[str, Found]:
    """Every message of these orders in the saga's streams, read by sequence."""
    found: dict[str, Found] = {order_id: {} for order_id in order_ids}
    nc = await nats.connect(system.env["NATS_URL"])
    try:
        jsm = nc.jsm()
        for stream in STREAMS:
            state = (await jsm.stream_info(stream)).state
            for seq in range(state.first_seq, state.last_seq + 1):
                msg = await jsm.get_msg(stream, seq)
                headers = msg.headers or {}
                order_id = headers.get(c.SAGA_ID, "")
                if order_id in found:
                    assert msg.subject is not None
                    found[order_id][msg.subject] = {
                        "stream": stream,
                        "traceparent": headers.get(c.TRACEPARENT, ""),
                    }
    finally:
        await nc.close()
    return found


async def wait_messages(system: System, expected: dict[str, dict[str, str]]) -> dict[str, Found]:
    """Until each order has every message expected (the outbox publishes after commit)."""

    async def complete() -> dict[str, Found] | None:
        found = await messages_of(system, set(expected))
        done = all(set(found[o]) >= set(subjects) for o, subjects in expected.items())
        return found if done else None

    return await wait_until(complete, timeout=30, message="every message of the orders")


def assert_streams(found: Found, expected: dict[str, str]) -> None:
    assert {s: m["stream"] for s, m in found.items()} == expected


async def test_without_tracing_every_message_of_an_order_carries_its_trace_id(
    make_system: MakeSystem, http: aiohttp.ClientSession
) -> None:
    system = await make_system()
    api = api_of(system, http)
    product = f"sku-{uuid.uuid4().hex[:8]}"
    await api.set_stock(product, 10)
    caller = caller_traceparent()
    paid = await post(api, order_body(product), caller)
    declined = await post(
        api, order_body(product, payment_method="pm_card_chargeCustomerFail"), None
    )
    assert (await api.wait_final(paid))["status"] == "CONFIRMED"
    assert (await api.wait_final(declined))["status"] == "CANCELLED"

    found = await wait_messages(system, {paid: PAID, declined: DECLINED})

    assert_streams(found[paid], PAID)
    assert_streams(found[declined], DECLINED)
    # Off: the caller's context passes through every hop unchanged.
    assert {m["traceparent"] for m in found[paid].values()} == {caller}
    # No caller context: intake started a trace, and the whole saga carries it.
    (generated,) = {m["traceparent"] for m in found[declined].values()}
    assert tracing.parse(generated) is not None
    assert tracing.trace_id(generated) != tracing.trace_id(caller)


def spans_in(logs: list[Path]) -> list[dict[str, Any]]:
    """The spans the console exporter wrote to the worker logs (one JSON line each)."""
    spans = []
    for path in logs:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{") and '"trace_id"' in line:
                spans.append(json.loads(line))
    return spans


def hex_id(value: str | None) -> str | None:
    return None if value is None else value.removeprefix("0x")


def span_tree(
    logs: list[Path], trace_id: str, complete: Callable[[list[dict[str, Any]]], bool]
) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        mine = [s for s in spans_in(logs) if hex_id(s["context"]["trace_id"]) == trace_id]
        return mine if complete(mine) else None

    return check


async def test_with_tracing_the_spans_of_all_three_services_form_one_trace(
    make_system: MakeSystem, http: aiohttp.ClientSession
) -> None:
    system = await make_system(OTEL_TRACES_EXPORTER="console")
    api = api_of(system, http)
    product = f"sku-{uuid.uuid4().hex[:8]}"
    await api.set_stock(product, 10)
    caller = caller_traceparent()
    trace_id, caller_span = caller[3:35], caller[36:52]
    order_id = await post(api, order_body(product), caller)
    assert (await api.wait_final(order_id))["status"] == "CONFIRMED"
    logs = [w.log_path for workers in system.workers.values() for w in workers]

    def complete(spans: list[dict[str, Any]]) -> bool:
        names = {s["name"] for s in spans}
        return {"POST /orders", *(f"process {subject}" for subject in CONSUMED_BY)} <= names

    spans = await wait_until(span_tree(logs, trace_id, complete), timeout=30, message="spans")
    found = (await wait_messages(system, {order_id: PAID}))[order_id]

    by_id = {hex_id(s["context"]["span_id"]): s for s in spans}
    service = {sid: s["resource"]["attributes"]["service.name"] for sid, s in by_id.items()}
    assert set(service.values()) == {"order-service", "inventory-service", "payment-service"}
    (intake,) = [s for s in spans if s["name"] == "POST /orders"]
    assert hex_id(intake["parent_id"]) == caller_span  # a child of the caller's span
    assert service[hex_id(intake["context"]["span_id"])] == "order-service"
    for subject, consumer in CONSUMED_BY.items():
        (span,) = [s for s in spans if s["name"] == f"process {subject}"]
        assert service[hex_id(span["context"]["span_id"])] == consumer
        assert span["attributes"]["jetsaga.order_id"] == order_id
        assert span["attributes"]["jetsaga.outcome"] == "acked"
        # The message is a child of the span that emitted it, and parent of this one.
        message = tracing.parse(found[subject]["traceparent"])
        assert message is not None and message.trace_id == trace_id
        assert message.span_id in by_id, f"{subject} names a span outside the trace"
        assert hex_id(span["parent_id"]) == message.span_id
    created = tracing.parse(found["orders.created"]["traceparent"])
    assert created is not None and created.span_id == hex_id(intake["context"]["span_id"])
