"""The trace context helpers: the W3C header, intake and consumer spans, and set-up from the
environment. Spans are read back from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections.abc import Iterator

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jetsaga import tracing
from jetsaga.config import ConfigError
from jetsaga.devstack.procs import free_port

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
INCOMING = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture(autouse=True)
def tracing_off() -> Iterator[None]:
    tracing.use(None)
    yield
    tracing.use(None)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Tracing on, every ended span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    return exporter


# --- the header -----------------------------------------------------------------------------


def test_a_valid_traceparent_parses_into_its_fields() -> None:
    assert tracing.parse(INCOMING) == (TRACE, PARENT, "01")
    assert tracing.parse(f" {INCOMING} ") == (TRACE, PARENT, "01")
    assert tracing.trace_id(INCOMING) == TRACE


def test_a_later_version_may_carry_more_fields_and_is_read_as_version_00() -> None:
    parsed = tracing.parse(f"cc-{TRACE}-{PARENT}-01-what-comes-next")
    assert parsed is not None and parsed.header() == INCOMING


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        INCOMING.upper(),  # the format is lowercase hex
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE[:-1]}-{PARENT}-01",
    ],
)
def test_an_invalid_traceparent_is_ignored(header: str | None) -> None:
    assert tracing.parse(header) is None
    assert tracing.trace_id(header) is None


def test_a_new_root_is_a_valid_sampled_traceparent_with_fresh_ids() -> None:
    roots = [tracing.parse(tracing.new_root()) for _ in range(100)]
    assert all(root is not None and root.flags == "01" for root in roots)
    assert len({root.trace_id for root in roots if root}) == 100


# --- tracing off: propagation only ----------------------------------------------------------


def test_intake_without_tracing_keeps_the_callers_context() -> None:
    with tracing.intake("POST", "/orders", INCOMING) as trace:
        trace.respond(201)
    assert trace.traceparent == INCOMING and trace.span is None


def test_intake_without_tracing_gives_an_order_without_context_a_new_trace() -> None:
    with tracing.intake("POST", "/orders", None) as first:
        pass
    with tracing.intake("POST", "/orders", "not-a-traceparent") as second:
        pass
    assert tracing.parse(first.traceparent) and tracing.parse(second.traceparent)
    assert tracing.trace_id(first.traceparent) != tracing.trace_id(second.traceparent)


def test_a_message_without_tracing_passes_its_context_on_unchanged() -> None:
    assert tracing.consume("orders.created", "inventory-service", "o-1", 1, INCOMING) == (
        INCOMING,
        None,
    )
    assert tracing.consume("orders.created", "inventory-service", "o-1", 1, None) == (None, None)
    tracing.finish(None, "acked")  # nothing to end


# --- tracing on: spans ----------------------------------------------------------------------


def test_intake_span_is_a_child_of_the_caller_and_its_context_goes_with_the_order(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.intake("POST", "/orders", INCOMING) as trace:
        trace.respond(201)
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /orders" and span.kind is SpanKind.SERVER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert trace.traceparent == f"00-{TRACE}-{span.context.span_id:016x}-01"
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 201


def test_intake_span_without_a_caller_starts_a_trace(spans: InMemorySpanExporter) -> None:
    with tracing.intake("POST", "/orders", None) as trace:
        trace.respond(503)
    (span,) = spans.get_finished_spans()
    assert span.parent is None
    assert tracing.trace_id(trace.traceparent) == f"{span.context.trace_id:032x}"
    assert span.status.status_code is StatusCode.ERROR


def test_consumer_span_is_a_child_of_the_message_and_parent_of_what_it_emits(
    spans: InMemorySpanExporter,
) -> None:
    emitted, span = tracing.consume("orders.created", "inventory-service", "o-1", 2, INCOMING)
    assert span is not None
    tracing.finish(span, "acked")
    tracing.finish(span, "acked")  # a second end is ignored
    (done,) = spans.get_finished_spans()
    assert done.name == "process orders.created" and done.kind is SpanKind.CONSUMER
    assert done.parent is not None and f"{done.parent.span_id:016x}" == PARENT
    assert emitted == f"00-{TRACE}-{done.context.span_id:016x}-01"
    assert dict(done.attributes or {}) == {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders.created",
        "messaging.consumer.group.name": "inventory-service",
        "jetsaga.order_id": "o-1",
        "jetsaga.deliveries": 2,
        "jetsaga.outcome": "acked",
    }


def test_a_failed_delivery_ends_its_span_in_error(spans: InMemorySpanExporter) -> None:
    _, span = tracing.consume("payments.process_request", "payment-service", "o-2", 1, None)
    tracing.finish(span, "nacked", "TransientError: gateway away")
    (done,) = spans.get_finished_spans()
    assert done.parent is None  # a message without context starts a trace
    assert done.status.status_code is StatusCode.ERROR
    assert done.status.description == "TransientError: gateway away"


def test_one_order_across_three_services_is_one_trace(spans: InMemorySpanExporter) -> None:
    with tracing.intake("POST", "/orders", None) as trace:
        pass
    reserved, inventory = tracing.consume(
        "orders.created", "inventory-service", "o", 1, trace.traceparent
    )
    process, order = tracing.consume(
        "inventory.reserved", "order-service-inventory", "o", 1, reserved
    )
    _, payment = tracing.consume("payments.process_request", "payment-service", "o", 1, process)
    for span in (payment, order, inventory):
        tracing.finish(span, "acked")
    done = {s.name: s for s in spans.get_finished_spans()}
    assert len({s.context.trace_id for s in done.values()}) == 1
    chain = [
        "POST /orders",
        "process orders.created",
        "process inventory.reserved",
        "process payments.process_request",
    ]
    for parent, child in itertools.pairwise(chain):
        assert done[child].parent is not None
        assert done[child].parent.span_id == done[parent].context.span_id


def test_an_unsampled_caller_is_followed_without_recording(spans: InMemorySpanExporter) -> None:
    unsampled = f"00-{TRACE}-{PARENT}-00"
    emitted, span = tracing.consume("orders.created", "inventory-service", "o-3", 1, unsampled)
    tracing.finish(span, "acked")
    assert spans.get_finished_spans() == ()
    parsed = tracing.parse(emitted)
    assert parsed is not None and parsed.trace_id == TRACE and parsed.flags == "00"


# --- set-up from the environment ------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, ()),
    ],
)
def test_tracing_is_off_unless_an_exporter_is_configured(
    environ: dict[str, str], exporters: tuple[str, ...]
) -> None:
    assert tracing.exporters_of(environ) == exporters


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_exporter_this_build_lacks_is_a_config_error(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="OTEL_"):
        tracing.exporters_of(environ)


def test_configure_without_an_exporter_leaves_tracing_off() -> None:
    assert tracing.configure("order-service", {}) is False
    assert not tracing.enabled()


def test_console_exporter_writes_one_json_line_per_span_named_after_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    assert tracing.configure("payment-service", {"OTEL_TRACES_EXPORTER": "console"})
    _, span = tracing.consume("payments.process_request", "payment-service", "o-4", 1, INCOMING)
    tracing.finish(span, "acked")
    tracing.shutdown()
    assert not tracing.enabled()
    (line,) = out.getvalue().splitlines()
    exported = json.loads(line)
    assert exported["context"]["trace_id"] == f"0x{TRACE}"
    assert exported["parent_id"] == f"0x{PARENT}"
    assert exported["resource"]["attributes"]["service.name"] == "payment-service"


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({}, None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"},
            "http://127.0.0.1:4318/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9999/traces",
            },
            "http://127.0.0.1:9999/traces",
        ),
    ],
)
def test_the_otlp_endpoint_follows_the_otel_variables(
    environ: dict[str, str], endpoint: str | None
) -> None:
    assert tracing.traces_endpoint(environ) == endpoint


async def test_otlp_exports_the_spans_to_the_configured_endpoint_on_shutdown() -> None:
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.add_routes([web.post("/v1/traces", collect)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        assert tracing.configure("order-service", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        with tracing.intake("POST", "/orders", INCOMING):
            pass
        await asyncio.to_thread(tracing.shutdown)  # flushes the batch, off the event loop
    finally:
        await runner.cleanup()
    (body,) = received
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert attributes["service.name"] == "order-service"
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "POST /orders" and span.trace_id.hex() == TRACE
