"""Chaos for the e2e suite (issue 3): an open-loop order sender that rides out outages, and
timed fault schedules run against a `System` while the orders flow.

The sender fires order `i` at `start + i / rate` whatever the system does (a stalled system
must not slow the arrivals), and sorts every answer: 201 accepted, other statuses rejected,
a refused connection unsent, and no answer after sending (reset, timeout, 5xx) "maybe
created", to be probed later by its client-chosen order id.

The faults: kill -9 of a worker and its restart, a nats-server restart, a PostgreSQL crash
and restart, a payment gateway outage, undecodable messages on `orders.created`, and
messages already in the streams re-published twice under fresh `Nats-Msg-Id`s.
"""

from __future__ import annotations

import asyncio
import enum
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import nats
import nats.js.errors

from jetsaga import contracts
from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.stripe import LocalStripe
from tests.support.api import order_body
from tests.support.services import ServiceProcess, System

DECLINED_CARD = "pm_card_chargeCustomerFail"


# --- the order mix ----------------------------------------------------------------------


class Kind(enum.StrEnum):
    OK = "ok"  # pm_card_visa on a product with ample stock -> CONFIRMED
    DECLINE = "decline"  # a card declined at charge -> CANCELLED
    SCARCE = "scarce"  # the product with little stock -> CONFIRMED while it lasts, then FAILED


@dataclass(frozen=True)
class Catalog:
    ample: tuple[str, ...]
    scarce: str
    stock: dict[str, int]  # what each product's `available` is set to before the run

    @classmethod
    def make(cls, ample: int = 4, ample_stock: int = 100_000, scarce_stock: int = 40) -> Catalog:
        run = uuid.uuid4().hex[:8]
        names = tuple(f"chaos-{run}-{i}" for i in range(ample))
        scarce = f"chaos-{run}-scarce"
        return cls(names, scarce, {**dict.fromkeys(names, ample_stock), scarce: scarce_stock})


@dataclass(frozen=True)
class Planned:
    """One order the sender will post, and what it should become."""

    order_id: str
    kind: Kind
    product_id: str
    quantity: int
    body: dict[str, Any]


def plan_order(i: int, catalog: Catalog) -> Planned:
    """Order `i` of the run: 80 % OK, 10 % DECLINE, 10 % SCARCE, evenly interleaved."""
    slot = i % 10
    kind = Kind.DECLINE if slot == 3 else Kind.SCARCE if slot == 7 else Kind.OK
    product = catalog.scarce if kind is Kind.SCARCE else catalog.ample[i % len(catalog.ample)]
    quantity = 1 + i % 3
    method = DECLINED_CARD if kind is Kind.DECLINE else "pm_card_visa"
    order_id = str(uuid.uuid4())
    body = order_body(
        product, quantity, price=500 + i % 7 * 100, payment_method=method, order_id=order_id
    )
    return Planned(order_id, kind, product, quantity, body)


# --- the open-loop sender ---------------------------------------------------------------


@dataclass
class SendLog:
    accepted: dict[str, Planned] = field(default_factory=dict)
    rejected: Counter[int] = field(default_factory=Counter)  # by HTTP status
    unsent: Counter[str] = field(default_factory=Counter)  # refused connection, client cap
    maybe: dict[str, Planned] = field(default_factory=dict)  # sent, no clear answer
    maybe_why: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    max_lag_s: float = 0.0  # how far the sender fell behind its own schedule
    elapsed_s: float = 0.0


class OpenLoopSender:
    """POSTs orders at a fixed rate, spread over the order workers' URLs in turn."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        urls: Sequence[str],
        plan: Callable[[int], Planned],
        *,
        max_in_flight: int = 600,
        post_timeout_s: float = 15.0,
    ) -> None:
        self._http, self._urls, self._plan = http, list(urls), plan
        self._max_in_flight = max_in_flight
        self._timeout = aiohttp.ClientTimeout(total=post_timeout_s)
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = SendLog()

    async def run(self, rate: float, count: int) -> SendLog:
        try:
            await self._send_all(rate, count)
            if self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            for task in list(self._tasks):  # only when cancelled: no POST outlives the run
                task.cancel()
        return self.log

    async def _send_all(self, rate: float, count: int) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the arrivals: time is what is under test
            self.log.max_lag_s = max(self.log.max_lag_s, -delay)
            planned = self._plan(i)
            self.log.sent += 1
            if len(self._tasks) >= self._max_in_flight:
                self.log.unsent["client cap"] += 1
                continue
            task = asyncio.create_task(self._post(self._urls[i % len(self._urls)], planned))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.log.elapsed_s = loop.time() - start

    async def _post(self, url: str, planned: Planned) -> None:
        try:
            async with self._http.post(
                url + "/orders", json=planned.body, timeout=self._timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError:
            self.log.unsent["no connection"] += 1
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._maybe(planned, type(exc).__name__)
            return
        if status == 201:
            self.log.accepted[planned.order_id] = planned
        elif status >= 500:
            self._maybe(planned, f"HTTP {status}")
        else:
            self.log.rejected[status] += 1

    def _maybe(self, planned: Planned, why: str) -> None:
        self.log.maybe[planned.order_id] = planned
        self.log.maybe_why[why] += 1


# --- the faults -------------------------------------------------------------------------


@dataclass
class Tally:
    """What the chaos did, for the summary."""

    kills: Counter[str] = field(default_factory=Counter)  # by worker kind
    restarts: Counter[str] = field(default_factory=Counter)  # by server
    poison: list[bytes] = field(default_factory=list)
    redelivered: int = 0  # distinct messages, each published twice more
    timeline: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # faults that could not be carried out


Action = Callable[[], Awaitable[str]]


class Lane:
    """Faults run one after the other, each at its offset from the lane's start."""

    def __init__(self, name: str, tally: Tally) -> None:
        self.name, self._tally = name, tally
        self._steps: list[tuple[float, Action]] = []

    def at(self, offset_s: float, action: Action) -> None:
        self._steps.append((offset_s, action))

    async def run(self, start: float) -> None:
        loop = asyncio.get_running_loop()
        for offset, action in sorted(self._steps, key=lambda s: s[0]):
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the chaos schedule: time is what is under test
            began = loop.time()
            try:
                what = await action()
            except Exception as exc:
                what = f"FAILED {type(exc).__name__}: {str(exc)[:300]}"
                self._tally.failures.append(f"{self.name}: {what}")
            self._tally.timeline.append(
                f"+{began - start:5.1f}s [{self.name}] {what} ({loop.time() - began:.1f} s)"
            )


def kill_worker(system: System, kind: str, replica: int, down_s: float, tally: Tally) -> Action:
    """kill -9 one replica of a worker, leave it dead for `down_s`, then start it again."""

    async def act() -> str:
        worker: ServiceProcess = system.workers[kind][replica % len(system.workers[kind])]
        await asyncio.to_thread(worker.kill)
        tally.kills[kind] += 1
        await asyncio.sleep(down_s)  # how long it stays dead is the fault itself
        await worker.start()
        return f"kill -9 {worker.child.name}, down {down_s:.1f} s, restarted"

    return act


def restart_nats(server: NatsServer, tally: Tally) -> Action:
    async def act() -> str:
        await asyncio.to_thread(server.stop)
        await server.astart()  # spawned on the loop's thread: see jetsaga/devstack/procs.py
        tally.restarts["nats-server"] += 1
        return "nats-server stopped and started (same port and store)"

    return act


def crash_postgres(server: PostgresServer, tally: Tally) -> Action:
    async def act() -> str:
        await asyncio.to_thread(server.kill)
        await server.astart()
        tally.restarts["postgres"] += 1
        return "PostgreSQL kill -9 and crash-recovery start"

    return act


def gateway_outage(stripe: LocalStripe, seconds: float, tally: Tally) -> Action:
    async def act() -> str:
        await asyncio.to_thread(stripe.stop)  # SIGTERM: it writes its store on the way out
        await asyncio.sleep(seconds)  # the length of the outage is the fault itself
        await stripe.astart()
        tally.restarts["localstripe"] += 1
        return f"payment gateway (localstripe) down for {seconds:.0f} s"

    return act


POISON: tuple[bytes, ...] = (
    b'{"orderId": "poison-1", "items": [',  # truncated JSON
    b"\x00\xff not json at all",
    b'["an", "array", "not", "an", "object"]',
    b'{"orderId": "poison-4", "customerId": "c", "items": [], "totalAmount": -1}',  # schema
    b'{"orderId": "", "customerId": 7, "items": "none", "currency": "dollars"}',  # schema
)


def publish_poison(nats_url: str, tally: Tally) -> Action:
    """Undecodable messages on `orders.created`, each under its own `Nats-Msg-Id`."""

    async def act() -> str:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10)
            for payload in POISON:
                headers = {contracts.MSG_ID: f"poison:{uuid.uuid4()}"}
                ack = await js.publish(contracts.ORDERS_CREATED, payload, headers=headers)
                assert not ack.duplicate
                tally.poison.append(payload)
        finally:
            await nc.close()
        return f"published {len(POISON)} undecodable messages on {contracts.ORDERS_CREATED}"

    return act


def redeliver_twice(nats_url: str, per_stream: int, rng: random.Random, tally: Tally) -> Action:
    """Re-publish messages already in ORDERS, INVENTORY and PAYMENTS, twice each, under fresh
    `Nats-Msg-Id`s (JetStream would drop the original id as a duplicate)."""

    async def act() -> str:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            js = nc.jetstream(timeout=10)
            jsm = js._jsm
            seen: Counter[str] = Counter()
            for stream in ("ORDERS", "INVENTORY", "PAYMENTS"):
                state = (await jsm.stream_info(stream)).state
                seqs = list(range(state.first_seq, state.last_seq + 1))
                for seq in rng.sample(seqs, min(len(seqs), per_stream * 3)):
                    if seen[stream] >= per_stream:
                        break
                    try:
                        raw = await jsm.get_msg(stream, seq)
                        contracts.decode(raw.subject or "", raw.data or b"")
                    except (nats.js.errors.NotFoundError, msgspec.MsgspecError, KeyError):
                        continue  # gone, or one of the poison messages: not a redelivery
                    kept = {k: str(v) for k, v in (raw.headers or {}).items()}
                    kept = {k: v for k, v in kept.items() if not k.startswith("Nats-")}
                    for _ in range(2):
                        headers = {**kept, contracts.MSG_ID: f"redeliver:{uuid.uuid4()}"}
                        ack = await js.publish(raw.subject or "", raw.data or b"", headers=headers)
                        assert not ack.duplicate
                    seen[stream] += 1
            tally.redelivered += sum(seen.values())
        finally:
            await nc.close()
        return "re-published twice: " + ", ".join(f"{s} {n}" for s, n in seen.items())

    return act
