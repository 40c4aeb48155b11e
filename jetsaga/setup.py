"""`jetsaga setup`: declare the streams and durable consumers of SPEC §4, idempotently.

Each stream and consumer is read back and compared with its declaration; a missing one is
created, a drifted one is updated, a matching one is left alone, and each is reported. The
workers never create consumers (nats-py's `pull_subscribe` would not update a drifted one).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

import nats
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.manager import JetStreamManager

from jetsaga import config
from jetsaga.contracts import (
    CONSUMERS,
    DUPLICATE_WINDOW_S,
    MAX_DELIVER,
    STREAMS,
    ConsumerSpec,
    StreamSpec,
)

Report = Callable[[str], None]


def stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=replicas,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        name=spec.durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait_s,
        max_deliver=MAX_DELIVER,
        filter_subjects=list(spec.filter_subjects),
        max_ack_pending=spec.max_ack_pending,
    )


def _drift(want: Any, have: Any, fields: tuple[str, ...]) -> list[str]:
    changed = []
    for field in fields:
        a, b = getattr(want, field), getattr(have, field)
        if isinstance(a, list):
            a, b = sorted(a), sorted(b or [])
        if isinstance(a, float) or isinstance(b, float):
            if b is None or abs(float(a) - float(b)) > 1e-6:
                changed.append(field)
        elif a != b:
            changed.append(field)
    return changed


_STREAM_FIELDS = ("subjects", "storage", "retention", "max_age", "duplicate_window", "num_replicas")
_CONSUMER_FIELDS = (
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "backoff",
    "filter_subjects",
    "max_ack_pending",
)


async def ensure_stream(jsm: JetStreamManager, spec: StreamSpec, replicas: int, out: Report) -> str:
    want = stream_config(spec, replicas)
    try:
        have = (await jsm.stream_info(spec.name)).config
    except nats.js.errors.NotFoundError:
        await jsm.add_stream(want)
        out(f"stream {spec.name}: created")
        return "created"
    changed = _drift(want, have, _STREAM_FIELDS)
    if not changed:
        out(f"stream {spec.name}: unchanged")
        return "unchanged"
    await jsm.update_stream(want)
    out(f"stream {spec.name}: updated ({', '.join(changed)})")
    return "updated"


async def ensure_consumer(jsm: JetStreamManager, spec: ConsumerSpec, out: Report) -> str:
    want = consumer_config(spec)
    try:
        have = (await jsm.consumer_info(spec.stream, spec.durable)).config
    except nats.js.errors.NotFoundError:
        await jsm.add_consumer(spec.stream, want)
        out(f"consumer {spec.stream}/{spec.durable}: created")
        return "created"
    changed = _drift(want, have, _CONSUMER_FIELDS)
    if not changed:
        out(f"consumer {spec.stream}/{spec.durable}: unchanged")
        return "unchanged"
    await jsm.add_consumer(spec.stream, want)  # create-or-update on the server
    out(f"consumer {spec.stream}/{spec.durable}: updated ({', '.join(changed)})")
    return "updated"


async def apply(
    settings: config.Settings, replicas: int | None = None, out: Report = print
) -> dict[str, str]:
    """Create or update every stream and consumer; returns what happened to each."""
    nc = await nats.connect(settings.nats_url, name="jetsaga-setup", connect_timeout=5)
    try:
        jsm = nc.jsm()
        n = replicas if replicas is not None else settings.nats_replicas
        result = {}
        for stream in STREAMS:
            result[stream.name] = await ensure_stream(jsm, stream, n, out)
        for consumer in CONSUMERS:
            result[consumer.durable] = await ensure_consumer(jsm, consumer, out)
        return result
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    asyncio.run(apply(config.load(), args.replicas))
    return 0
