"""Tracing: one W3C trace per order, across HTTP and the bus, with OpenTelemetry spans when an
exporter is configured.

The `traceparent` travels with every message (a NATS header written by the outbox). Intake
gives each order one: the caller's, or a new root. Each handled message passes on the
context it arrived with, so every message of an order carries the order's trace id.

With tracing on (`OTEL_TRACES_EXPORTER`, or an `OTEL_EXPORTER_OTLP_ENDPOINT`), intake opens a
server span and each handled message a consumer span, and the messages a handler emits
carry that span's context: the spans of the three services form one tree. With tracing off
(the default) nothing but the header is touched: no SDK, no span objects.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode, TraceFlags

from jetsaga.config import ConfigError

if TYPE_CHECKING:  # the SDK is imported only when tracing is on
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

__all__ = ["Span", "configure", "consume", "finish", "intake", "new_root", "parse", "use"]

EXPORTERS: Final = ("otlp", "console")
_HEADER: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


# --- the header, pure -----------------------------------------------------------------------


class TraceParent(NamedTuple):
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits: the span the receiver's work is a child of
    flags: str  # 2 hex digits; 01 = sampled

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse(header: str | None) -> TraceParent | None:
    """The fields of a valid `traceparent`, or None for a missing or invalid one (which the
    W3C rules say to ignore: the receiver starts a new trace)."""
    if not header:
        return None
    match = _HEADER.fullmatch(header.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, flags)


def trace_id(header: str | None) -> str | None:
    parsed = parse(header)
    return parsed.trace_id if parsed else None


def new_root() -> str:
    """A `traceparent` that starts a trace. Sampled, so that services that do trace record
    the order's path even when the intake service does not."""
    return TraceParent(f"{_nonzero(128):032x}", f"{_nonzero(64):016x}", "01").header()


def _nonzero(bits: int) -> int:
    return random.getrandbits(bits) or 1


def _of(span: Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _parent(header: str | None) -> Context | None:
    parsed = parse(header)
    if parsed is None:
        return None  # a new root
    remote = SpanContext(
        trace_id=int(parsed.trace_id, 16),
        span_id=int(parsed.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parsed.flags, 16)),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


# --- set-up ---------------------------------------------------------------------------------


def exporters_of(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the environment asks for; none (tracing off) unless it names one.

    `OTEL_TRACES_EXPORTER` is a comma list of `otlp`, `console` and `none`. Without it, an
    `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) turns on `otlp`.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    listed = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not listed:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ("otlp",) if endpoint else ()
    names = tuple(n.strip().lower() for n in listed.split(",") if n.strip())
    unknown = set(names) - {*EXPORTERS, "none"}
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown {sorted(unknown)}; use otlp, console")
    protocol = environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if "otlp" in names and protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf")
    return tuple(n for n in names if n != "none")


def configure(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """At worker start: install a tracer provider with the configured exporters, named
    `service` unless `OTEL_SERVICE_NAME` says otherwise. Returns whether tracing is on."""
    env = os.environ if environ is None else environ
    names = exporters_of(env)
    if not names:
        use(None)
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if "otlp" in names:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=traces_endpoint(env))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if "console" in names:
        # For debugging: one JSON line per span in the worker's log, written as it ends.
        console = ConsoleSpanExporter(out=sys.stderr, formatter=_one_line)
        provider.add_span_processor(SimpleSpanProcessor(console))
    use(provider)
    return True


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where OTLP/http sends spans, read from `environ` as the exporter would read it from
    the process environment (None: its default, http://localhost:4318/v1/traces)."""
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return endpoint.rstrip("/") + "/v1/traces"
    return None


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def use(provider: TracerProvider | None) -> None:
    """Trace through `provider` from now on (None: tracing off)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("jetsaga") if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered (on drain)."""
    if _provider is not None:
        _provider.shutdown()
    use(None)


# --- spans ----------------------------------------------------------------------------------


@dataclass
class Intake:
    """The trace context of one intake request: `traceparent` goes with the new order."""

    traceparent: str
    span: Span | None = None

    def respond(self, status: int) -> None:
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", status)
            if status >= 500:
                self.span.set_status(StatusCode.ERROR)


@contextlib.contextmanager
def intake(method: str, route: str, incoming: str | None) -> Iterator[Intake]:
    """A server span for a request that starts an order: a child of the caller's
    `traceparent`, or a new root. With tracing off, the caller's (valid) context as it came,
    or a new root, so that every order has a trace id."""
    tracer = _tracer
    if tracer is None:
        parsed = parse(incoming)
        yield Intake(parsed.header() if parsed else new_root())
        return
    with tracer.start_as_current_span(
        f"{method} {route}",
        context=_parent(incoming),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": route},
    ) as span:
        yield Intake(_of(span), span)


def consume(
    subject: str,
    durable: str,
    order_id: str,
    deliveries: int,
    traceparent: str | None,
) -> tuple[str | None, Span | None]:
    """Start the consumer span of one delivery; returns the context for the messages its
    handling emits, and the span to `finish`. With tracing off: (traceparent, None)."""
    tracer = _tracer
    if tracer is None:
        return traceparent, None
    span = tracer.start_span(
        f"process {subject}",
        context=_parent(traceparent),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": subject,
            "messaging.consumer.group.name": durable,
            "jetsaga.order_id": order_id,
            "jetsaga.deliveries": deliveries,
        },
    )
    return _of(span), span


def finish(span: Span | None, outcome: str, error: str | None = None) -> None:
    """End a consumer span with the delivery's outcome (acked, nacked, dead_lettered, ...)."""
    if span is None or not span.is_recording():  # off, not sampled, or already ended
        return
    span.set_attribute("jetsaga.outcome", outcome)
    if error is not None:
        span.set_status(StatusCode.ERROR, error)
    span.end()
