"""The composition root every worker process shares.

`serve` connects (inside the running loop, retrying until the dependencies answer), applies
migrations, asks the service to wire its parts, then runs consumers, the outbox relay, the
dead-letter advisory watcher, the service's background loops and the HTTP server under one
TaskGroup. On SIGTERM or SIGINT it drains: stop fetching, let in-flight batches finish, flush
the outbox, close.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jetsaga import db, natsclient, tracing
from jetsaga.config import Settings
from jetsaga.consumer import Consumer, Handler
from jetsaga.contracts import ConsumerSpec
from jetsaga.deadletter import DeadLetters, watch_advisories
from jetsaga.http import base_routes
from jetsaga.leanhttp import LeanServer, Route
from jetsaga.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING
from jetsaga.outbox import OutboxRelay
from jetsaga.waits import pause

log = logging.getLogger(__name__)

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
T = TypeVar("T")


@dataclass
class Runtime:
    """What a service's wiring gets: connections and the shared machinery."""

    service: str
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    relay: OutboxRelay
    dead_letters: DeadLetters


@dataclass
class Parts:
    """What a service contributes: its consumers, HTTP routes and background loops."""

    consumers: list[tuple[ConsumerSpec, Handler]] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)
    # Loops that serve HTTP requests (group commit of intake): they stop only once the
    # HTTP server has stopped and finished its requests.
    http_loops: list[Loop] = field(default_factory=list)


async def _retry(what: str, connect: Callable[[], Awaitable[T]]) -> T:
    delay = 0.2
    while True:
        try:
            return await connect()
        except (OSError, asyncpg.PostgresError, nats.errors.Error, TimeoutError) as exc:
            log.warning(f"{what} not reachable yet, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _connect_nats(settings: Settings, name: str) -> NATS:
    async def on_disconnect() -> None:
        log.warning("NATS disconnected")

    async def on_reconnect() -> None:
        log.info("NATS reconnected")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error", extra={"error": repr(exc)})

    return await natsclient.connect(
        settings.nats_url,
        name=name,
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
        # Workers publish and subscribe only to the contract's subjects and to reply
        # subjects the server gave them: checking each one again is wasted work.
        skip_subject_validation=True,
    )


async def _watch_backlog(
    js: JetStreamContext, specs: list[ConsumerSpec], stop: asyncio.Event
) -> None:
    jsm = js._jsm
    while not stop.is_set():
        for spec in specs:
            try:
                info = await jsm.consumer_info(spec.stream, spec.durable)
            except Exception:
                continue
            CONSUMER_PENDING.labels(spec.durable).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(spec.durable).set(info.num_ack_pending or 0)
        await pause(stop, 5.0)


async def _close_http(server: LeanServer, stop: asyncio.Event, closed: asyncio.Event) -> None:
    """On stop: stop accepting, let requests in progress finish, then release HTTP loops."""
    await stop.wait()
    await server.close()
    closed.set()


async def serve(
    service: str,
    settings: Settings,
    migrations: Path,
    wire: Callable[[Runtime], Awaitable[Parts]],
    stop: asyncio.Event | None = None,
    *,
    generic_plans: bool = False,
) -> None:
    """Run a worker until `stop` (or SIGTERM/SIGINT). `generic_plans` is for a service whose
    every statement finds its rows by key: PostgreSQL costs the generic plan of a statement
    on arrays of keys at ten elements per array, a custom plan at the one or two of a small
    batch, so it mostly plans such a statement again on each execution, though the generic
    plan is the same index lookups. Planning was 19 % of the payment database's CPU and
    11 % of the inventory database's at 1,000 orders/s (`perf`, `BuildCachedPlan`). The
    order service keeps custom plans: its orders list has optional filters (`$1 IS NULL OR
    …`), which only a custom plan turns into an index scan."""
    stop = stop or asyncio.Event()
    tracing.configure(f"{service}-service")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    url = settings.database_url_for(service)
    await _retry("PostgreSQL", lambda: db.ensure_database(url))
    size = settings.db_pool_size
    pool = await _retry(
        "PostgreSQL", lambda: db.create_pool(url, size, generic_plans=generic_plans)
    )
    await db.migrate(pool, [db.SHARED_MIGRATIONS, migrations])
    nc = await _retry("NATS", lambda: _connect_nats(settings, f"jetsaga-{service}"))
    js = nc.jetstream(timeout=10)
    runtime = Runtime(service, settings, pool, nc, js, OutboxRelay(pool, js), DeadLetters(js))
    parts = await wire(runtime)

    server = LeanServer(base_routes(nc, pool) + parts.routes)
    await server.start(settings.http_host, settings.port_of(service))
    log.info("serving", extra={"port": settings.port_of(service)})

    consumers = [
        Consumer(
            nc,
            spec,
            handler,
            runtime.dead_letters.from_msg,
            batch=settings.fetch_batch,
        )
        for spec, handler in parts.consumers
    ]
    http_closed = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(runtime.relay.run(stop))
            group.create_task(watch_advisories(js, runtime.dead_letters, stop))
            group.create_task(_watch_backlog(js, [c.spec for c in consumers], stop))
            for consumer in consumers:
                group.create_task(consumer.run(stop))
            for background in parts.loops:
                group.create_task(background(stop))
            for background in parts.http_loops:
                group.create_task(background(http_closed))
            group.create_task(_close_http(server, stop, http_closed))
    finally:
        log.info("draining")
        if not http_closed.is_set():
            await server.close()
        try:
            async with asyncio.timeout(5.0):
                await runtime.relay.flush()
        except Exception:
            log.warning("outbox not fully flushed; the next worker will publish it")
        await nc.close()
        await pool.close()
        await asyncio.to_thread(tracing.shutdown)  # exports the spans still buffered
        log.info("stopped")
