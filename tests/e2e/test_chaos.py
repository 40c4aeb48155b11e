"""The chaos run of issue 3: orders flow at a steady rate while workers are killed with -9,
nats-server and PostgreSQL restart, the payment gateway goes away, poison lands on
`orders.created` and messages are delivered again; then, once the system has settled,
nothing is lost, no one is charged twice and no stock leaks.

Its own nats-server, PostgreSQL and localstripe (with a store file, so that the gateway's
records survive its outage); two order workers, one inventory and one payment worker.
`CHAOS_SEED=N` replays the same schedule of kills.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from jetsaga.devstack.nats import NatsServer
from jetsaga.devstack.postgres import PostgresServer
from jetsaga.devstack.stripe import LocalStripe
from tests.support import chaos, invariants
from tests.support.api import FINAL, Api
from tests.support.chaos import Catalog, Lane, OpenLoopSender, SendLog, Tally
from tests.support.services import System
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

RATE = 50.0  # orders per second
DURATION_S = 32.0
SETTLE_S = 120.0  # until no order is PENDING
QUIET_S = 90.0  # then until every follow-up has run (a redelivery waits out ack_wait)
TIMERS = {
    "SAGA_TIMEOUT_S": "30",
    "PAYMENT_TIMEOUT_S": "20",
    "RESERVATION_TTL_S": "60",
    "SWEEP_INTERVAL_S": "0.5",
}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[LocalStripe]:
    """A localstripe of this test's own, keeping its records in a file across restarts."""
    stripe = LocalStripe(
        port=None, store_path=tmp_path / "localstripe.pickle", log_path=tmp_path / "localstripe.log"
    )
    try:
        yield await stripe.astart()
    finally:
        await asyncio.to_thread(stripe.stop)


def schedule(
    system: System, nats: NatsServer, pg: PostgresServer, stripe: LocalStripe,
    rng: random.Random, tally: Tally,
) -> list[Lane]:  # fmt: skip
    workers = Lane("workers", tally)
    kinds = rng.sample(["order", "inventory", "payment"], 3)  # each kind at least once
    kinds += [rng.choice(["order", "order", "inventory", "payment"]) for _ in range(4)]
    for n, kind in enumerate(kinds):
        down = rng.uniform(0.5, 2.0)
        workers.at(2.0 + 4.0 * n, chaos.kill_worker(system, kind, rng.randrange(2), down, tally))
    servers = Lane("servers", tally)
    servers.at(4.0, chaos.publish_poison(nats.url, tally))
    servers.at(8.0, chaos.restart_nats(nats, tally))
    servers.at(12.0, chaos.gateway_outage(stripe, 4.0, tally))
    servers.at(20.0, chaos.redeliver_twice(nats.url, 7, random.Random(rng.random()), tally))
    servers.at(24.0, chaos.crash_postgres(pg, tally))
    return [workers, servers]


async def test_no_order_is_lost_charged_twice_or_left_holding_stock_under_chaos(
    make_system: Callable[..., Awaitable[System]], gateway: LocalStripe
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    lap = Laps()
    system = await make_system(
        STRIPE_API_BASE=gateway.api_base,
        LOG_LEVEL=os.environ.get("CHAOS_LOG_LEVEL", "INFO"),
        **TIMERS,
    )
    await system.add_worker("order")
    nats, pg = system.owns
    assert isinstance(nats, NatsServer) and isinstance(pg, PostgresServer)
    catalog, tally, sent = Catalog.make(), Tally(), SendLog()
    problems: list[str] = []
    figures: dict[str, object] = {"seed": seed, "laps": lap.laps}
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=300)
        ) as http:
            api = Api(http, system.order_url, system.inventory_url, system.payment_url)
            for product, level in catalog.stock.items():
                await api.set_stock(product, level)
            lap("start")

            sender = OpenLoopSender(
                http, [w.url for w in system.workers["order"]],
                lambda i: chaos.plan_order(i, catalog),
            )  # fmt: skip
            start = asyncio.get_running_loop().time()
            sending = asyncio.create_task(sender.run(RATE, int(RATE * DURATION_S)))
            try:
                lanes = schedule(system, nats, pg, gateway, rng, tally)
                await asyncio.gather(*(lane.run(start) for lane in lanes))
                sent = await sending
            finally:
                sending.cancel()  # a no-op once it is done; no POST outlives the test
            problems += [f"chaos step failed: {f}" for f in tally.failures]
            lap("chaos")

            await _settle(api, problems)
            lap("settle")
            existing = await invariants.existing_orders(pg.url)
            created = set(sent.accepted) | (existing & set(sent.maybe))
            figures["maybe_created"] = len(existing & set(sent.maybe))
            problems += [f"order {o} exists, but no POST created it" for o in existing - created]
            await _quiet(pg.url, nats.url, problems)
            lap("quiet")

            world = await invariants.read_world(
                api, created, catalog.stock, pg.url, gateway.api_base,
                system.env["STRIPE_SECRET_KEY"],
            )  # fmt: skip
            problems += invariants.violations(world, catalog.stock, created)
            figures["outcomes"] = _outcomes(world)
            figures["money"] = invariants.money_figures(world)
            figures["lost"] = len(created) - sum(
                1 for v in world.orders.values() if v["status"] in FINAL
            )
            figures["histories"] = _histories(world, problems)

            letters = await invariants.dead_letters(nats.url)
            cli = await invariants.dlq_cli_list(nats.url)
            figures["dead_letters"] = len(letters)
            figures["dlq_list"] = cli[1].strip().splitlines()[-1:] or ["(no output)"]
            problems += invariants.dead_letter_violations(letters, tally.poison, cli)
            lap("check")
    finally:
        summary = _summary(figures, sent, tally, problems)
        print("\n" + summary)
    assert not problems, summary


class Laps:
    """How long each phase of the run took, for the summary."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name], self._last = now - self._last, now


async def _settle(api: Api, problems: list[str]) -> None:
    """Wait until no order is PENDING."""

    async def none_pending() -> bool:
        async with api.http.get(f"{api.order_url}/orders?status=PENDING&limit=1") as resp:
            return resp.status == 200 and not (await resp.json())["orders"]

    try:
        await wait_until(
            none_pending, timeout=SETTLE_S, interval=1.0, message="no PENDING order",
            ignore=(aiohttp.ClientError, TimeoutError),
        )  # fmt: skip
    except AssertionError as exc:
        problems.append(str(exc))


async def _quiet(database_url: str, nats_url: str, problems: list[str]) -> None:
    """Wait until every follow-up of a final status has run (a sale, a refund, a release,
    a message redelivered after its worker died)."""
    last: list[str] = []

    async def quiet() -> bool:
        nonlocal last
        last = await invariants.unsettled(database_url, nats_url)
        return not last

    try:
        await wait_until(quiet, timeout=QUIET_S, interval=1.0, message="a quiet system")
    except AssertionError:
        problems.append(f"not quiet after {QUIET_S:g} s: {'; '.join(last)}")


def _outcomes(world: invariants.World) -> str:
    """Final statuses with their reasons: "CANCELLED 781 (timeout 726, card_declined 55)"."""
    by: dict[str, Counter[str]] = {}
    for view in world.orders.values():
        by.setdefault(view["status"], Counter())[view["reason"] or ""] += 1
    parts = []
    for status, reasons in sorted(by.items()):
        why = ", ".join(f"{r} {n}" for r, n in reasons.most_common() if r)
        parts.append(f"{status} {reasons.total()}" + (f" ({why})" if why else ""))
    return "; ".join(parts)


def _histories(world: invariants.World, problems: list[str], limit: int = 3) -> list[str]:
    """The saga histories of a few orders named by the problems, for the report."""
    shown: list[str] = []
    for order_id, view in world.orders.items():
        if len(shown) < limit and any(order_id in p for p in problems):
            steps = "\n".join(
                f"      {h['at']} {h['sagaStatus']:<19} {h['event']:<26} {h['detail'] or ''}"
                for h in view["history"]
            )
            shown.append(f"    {order_id} {view['status']} ({view['reason']}):\n{steps}")
    return shown


def _summary(figures: dict[str, object], sent: SendLog, tally: Tally, problems: list[str]) -> str:
    laps = figures["laps"]
    assert isinstance(laps, dict)
    lines = [
        f"chaos run, seed {figures['seed']} (CHAOS_SEED={figures['seed']} replays its schedule)",
        f"  orders: sent {sent.sent} at {RATE:g}/s in {sent.elapsed_s:.1f} s "
        f"(max lag {sent.max_lag_s:.2f} s), accepted {len(sent.accepted)}, "
        f"rejected {dict(sent.rejected) or 0}, unsent {dict(sent.unsent) or 0}, "
        f"unanswered {dict(sent.maybe_why) or 0} of which created "
        f"{figures.get('maybe_created', '?')}",
        f"  kills (kill -9): {dict(tally.kills)}; restarts: {dict(tally.restarts)}",
        f"  poison published: {len(tally.poison)}; messages redelivered twice: {tally.redelivered}",
        f"  final: {figures.get('outcomes', '?')}; lost {figures.get('lost', '?')}",
        f"  money: {figures.get('money', '?')}",
        f"  invariant violations: {len(problems)}",
        f"  dead letters: {figures.get('dead_letters', '?')}; jetsaga dlq list: "
        f"{figures.get('dlq_list', '?')}",
        "  phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in laps.items()),
        "  timeline:",
        *(f"    {line}" for line in sorted(tally.timeline)),
    ]
    if problems:
        lines += ["  violations (first 40):", *(f"    {p}" for p in problems[:40])]
        histories = figures.get("histories") or []
        assert isinstance(histories, list)
        lines += ["  histories:", *histories] if histories else []
    return "\n".join(lines)
