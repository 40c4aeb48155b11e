"""What must hold once a chaos run has settled (issue 3), read from the outside and checked
by pure functions.

`read_world` gathers what the services and Stripe say after the run: every known order
(`GET /orders/{id}`), its payment (`GET /payments/{orderId}`), the PaymentIntents in
localstripe by `metadata.orderId`, each product's stock, and the inventory's reservations
(from its database: no API lists them). `violations` checks that snapshot: nothing lost,
stock conserved and held only by open reservations, confirmed orders paid once with their
stock sold, every other order holding no stock and keeping no money.

`unsettled` says why the system is not yet quiet (pending orders, open reservations,
undecided payments, unpublished outbox rows, unprocessed messages), so that the snapshot
is taken only when every asynchronous follow-up of a final status (a sale, a refund) is done.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import nats

from jetsaga import config, contracts, dlq
from tests.support.api import FINAL, Api

KEEPS_NO_MONEY = frozenset({"failed", "voided", "refunded"})


@dataclass(frozen=True)
class World:
    orders: dict[str, dict[str, Any]]  # GET /orders/{id} of every known order
    payments: dict[str, dict[str, Any] | None]  # GET /payments/{orderId}; None for a 404
    intents: dict[str, list[dict[str, Any]]]  # Stripe PaymentIntents by metadata.orderId
    stock: dict[str, dict[str, int]]  # GET /inventory/{productId}
    held: dict[str, int]  # per product, the quantities of open reservations
    reservations: dict[str, str]  # per order, its reservation row's status


# --- reading ----------------------------------------------------------------------------


async def gather_bounded(calls: Iterable[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Any) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def stripe_intents(
    http: aiohttp.ClientSession, api_base: str, key: str
) -> dict[str, list[dict[str, Any]]]:
    """Every PaymentIntent in the gateway, by `metadata.orderId` ('' when it has none)."""
    found: dict[str, list[dict[str, Any]]] = {}
    after: str | None = None
    while True:
        params = {"limit": "100", **({"starting_after": after} if after else {})}
        async with http.get(
            api_base + "/v1/payment_intents",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            assert resp.status == 200, (resp.status, await resp.text())
            page = await resp.json()
        for intent in page["data"]:
            found.setdefault((intent.get("metadata") or {}).get("orderId", ""), []).append(intent)
        if not page["has_more"] or not page["data"]:
            return found
        after = page["data"][-1]["id"]


async def reservations(database_url: str) -> tuple[dict[str, int], dict[str, str]]:
    """(quantities held by open reservations per product, reservation status per order)."""
    conn = await asyncpg.connect(config.with_database(database_url, "inventory_service"))
    try:
        rows = await conn.fetch(
            "SELECT r.order_id, r.status, i.product_id, i.quantity"
            " FROM reservations r LEFT JOIN reservation_items i USING (order_id)"
        )
    finally:
        await conn.close()
    held: Counter[str] = Counter()
    for row in rows:
        if row["status"] == "reserved" and row["product_id"] is not None:
            held[row["product_id"]] += row["quantity"]
    return dict(held), {r["order_id"]: r["status"] for r in rows}


async def read_world(
    api: Api,
    order_ids: Iterable[str],
    products: Iterable[str],
    database_url: str,
    stripe_base: str,
    stripe_key: str,
) -> World:
    ids, names = sorted(set(order_ids)), sorted(set(products))
    # localstripe lists slowly (each intent's export scans its store): overlap the reads.
    views, payments, levels, intents = await asyncio.gather(
        gather_bounded(api.order(i) for i in ids),
        gather_bounded(api.payment(i) for i in ids),
        gather_bounded(api.stock(p) for p in names),
        stripe_intents(api.http, stripe_base, stripe_key),
    )
    held, rows = await reservations(database_url)
    return World(
        orders={i: v for i, v in zip(ids, views, strict=True) if v is not None},
        payments=dict(zip(ids, payments, strict=True)),
        intents=intents,
        stock=dict(zip(names, levels, strict=True)),
        held=held,
        reservations=rows,
    )


async def existing_orders(database_url: str) -> set[str]:
    """Every order id the order service holds (to find orders whose POST went unanswered)."""
    conn = await asyncpg.connect(config.with_database(database_url, "order_service"))
    try:
        return {r["order_id"] for r in await conn.fetch("SELECT order_id FROM orders")}
    finally:
        await conn.close()


QUIET_CHECKS: dict[str, dict[str, str]] = {
    "order_service": {
        "pending orders": "SELECT count(*) FROM sagas WHERE ended_at IS NULL",
        "unpublished order outbox rows": "SELECT count(*) FROM outbox",
    },
    "inventory_service": {
        "open reservations": "SELECT count(*) FROM reservations WHERE status = 'reserved'",
        "unpublished inventory outbox rows": "SELECT count(*) FROM outbox",
    },
    "payment_service": {
        "undecided payments": "SELECT count(*) FROM payments WHERE status = 'processing'",
        "unpublished payment outbox rows": "SELECT count(*) FROM outbox",
    },
}


async def unsettled(database_url: str, nats_url: str) -> list[str]:
    """Why the system is not quiet yet; empty once every follow-up has run."""
    why: list[str] = []
    for database, checks in QUIET_CHECKS.items():
        conn = await asyncpg.connect(config.with_database(database_url, database))
        try:
            for what, sql in checks.items():
                if n := await conn.fetchval(sql):
                    why.append(f"{n} {what}")
        finally:
            await conn.close()
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        jsm = nc.jetstream()._jsm
        for spec in contracts.CONSUMERS:
            info = await jsm.consumer_info(spec.stream, spec.durable)
            if left := (info.num_pending or 0) + (info.num_ack_pending or 0):
                why.append(f"{left} messages not yet acked on {spec.durable}")
    finally:
        await nc.close()
    return why


# --- checking ---------------------------------------------------------------------------


def violations(world: World, set_to: dict[str, int], expected_ids: Iterable[str]) -> list[str]:
    found: list[str] = []
    found += _lost(world, expected_ids)
    found += _stock(world, set_to)
    for order_id, view in sorted(world.orders.items()):
        found += _order(order_id, view, world)
    known = set(world.orders)
    for order_id, intents in sorted(world.intents.items()):
        if order_id not in known and _kept(intents):
            found.append(f"Stripe keeps money for {order_id or 'an intent without orderId'}")
    return found


def _lost(world: World, expected_ids: Iterable[str]) -> list[str]:
    found = []
    for order_id in expected_ids:
        view = world.orders.get(order_id)
        if view is None:
            found.append(f"order {order_id}: accepted, then unknown (404)")
        elif view["status"] not in FINAL:
            found.append(f"order {order_id}: lost, still {view['status']}/{view['sagaStatus']}")
    return found


def _stock(world: World, set_to: dict[str, int]) -> list[str]:
    sold: Counter[str] = Counter()
    for view in world.orders.values():
        if view["status"] == "CONFIRMED":
            for item in view["items"]:
                sold[item["productId"]] += item["quantity"]
    found = []
    for product, initial in sorted(set_to.items()):
        level = world.stock[product]
        total = level["available"] + level["reserved"] + level["sold"]
        if total != initial:
            found.append(f"{product}: available+reserved+sold = {total}, set to {initial}")
        if level["reserved"] != world.held.get(product, 0):
            found.append(
                f"{product}: reserved {level['reserved']}, open reservations hold "
                f"{world.held.get(product, 0)}"
            )
        if level["reserved"] != 0:
            found.append(f"{product}: {level['reserved']} still reserved after every order ended")
        if level["sold"] != sold[product]:
            found.append(
                f"{product}: sold {level['sold']}, confirmed orders bought {sold[product]}"
            )
    return found


def _succeeded(intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in intents if i["status"] == "succeeded"]


def _refunded(intent: dict[str, Any]) -> int:
    charge = intent.get("latest_charge") or {}
    return int(charge.get("amount_refunded") or 0)


def _kept(intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The charges that kept money (succeeded and not refunded in full)."""
    return [i for i in _succeeded(intents) if _refunded(i) < i["amount"]]


def _order(order_id: str, view: dict[str, Any], world: World) -> list[str]:
    status, payment = view["status"], world.payments.get(order_id)
    intents = world.intents.get(order_id, [])
    charged, kept = _succeeded(intents), _kept(intents)
    reservation = world.reservations.get(order_id)
    found = []
    if len(charged) > 1:
        found.append(f"{status} {order_id}: charged {len(charged)} times")
    for intent in charged:
        if _refunded(intent) > intent["amount"]:
            found.append(f"{status} {order_id}: refunded {_refunded(intent)} of {intent['amount']}")
    if status == "CONFIRMED":
        if reservation != "confirmed":
            found.append(f"CONFIRMED {order_id}: reservation {reservation}, not confirmed")
        if payment is None or payment["status"] != "succeeded":
            found.append(f"CONFIRMED {order_id}: payment {payment and payment['status']}")
        elif len(kept) != 1 or kept[0]["id"] != payment["stripePaymentIntentId"]:
            found.append(
                f"CONFIRMED {order_id}: Stripe keeps {[i['id'] for i in kept]}, "
                f"payment service says {payment['stripePaymentIntentId']}"
            )
        elif kept[0]["amount"] != view["totalAmount"] or view["paymentId"] != payment["paymentId"]:
            found.append(f"CONFIRMED {order_id}: amount or payment id differs")
        return found
    if reservation not in (None, "released"):
        found.append(f"{status} {order_id}: reservation still {reservation}")
    if payment is not None and payment["status"] not in KEEPS_NO_MONEY:
        found.append(f"{status} {order_id}: payment {payment['status']}")
    if kept:
        found.append(f"{status} {order_id}: Stripe keeps the money of {kept[0]['id']}")
    if status == "FAILED" and view["reason"] == "out_of_stock" and charged:
        found.append(f"FAILED {order_id}: out of stock, yet charged")
    return found


def money_figures(world: World) -> str:
    """What the gateway saw: payments by final status, and the charges given back."""
    statuses = Counter(p["status"] for p in world.payments.values() if p is not None)
    refunded = sum(
        1
        for order_id, view in world.orders.items()
        if view["status"] != "CONFIRMED" and _succeeded(world.intents.get(order_id, []))
    )
    intents = Counter(i["status"] for group in world.intents.values() for i in group)
    return (
        f"payments {dict(sorted(statuses.items()))}; unconfirmed orders charged then refunded "
        f"{refunded}; Stripe intents {dict(sorted(intents.items()))}"
    )


# --- dead letters -----------------------------------------------------------------------


async def dead_letters(nats_url: str) -> list[tuple[int, contracts.DeadLetter]]:
    """Every entry of the dead-letter stream, with its sequence number."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        return [entry async for entry in dlq.letters(nc.jetstream())]
    finally:
        await nc.close()


async def dlq_cli_list(nats_url: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """Run the real `jetsaga dlq list`; its exit code and output."""
    # The entry point of the `jetsaga` script, run as the workers are (tests/support/services.py)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetsaga.cli", "dlq", "list",
        env={**os.environ, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace")


def dead_letter_violations(
    letters: list[tuple[int, contracts.DeadLetter]],
    poison: list[bytes],
    cli: tuple[int, str],
) -> list[str]:
    """The dead-letter stream holds exactly the poison messages, and `jetsaga dlq list`
    lists each of them."""
    found = []
    for seq, letter in letters:
        if letter.subject != contracts.ORDERS_CREATED or letter.payload not in poison:
            order = letter.headers.get(contracts.SAGA_ID, "-")
            found.append(
                f"dead letter {seq} is not poison: {letter.durable} {letter.subject} order={order}"
                f" deliveries={letter.delivery_count} error={letter.last_error[:200]}"
            )
    if sorted(x.payload for _, x in letters if x.payload in poison) != sorted(poison):
        found.append(
            f"poison in the dead-letter stream: {[x.payload for _, x in letters]}, sent {poison}"
        )
    code, out = cli
    lines = out.splitlines()
    listed = {int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit()}
    if code != 0 or f"{len(letters)} dead letter(s)" not in lines:
        found.append(f"jetsaga dlq list exited {code}: {out[-500:]}")
    if listed != {seq for seq, _ in letters}:
        found.append(f"jetsaga dlq list shows {sorted(listed)}, the stream holds "
                     f"{sorted(s for s, _ in letters)}")  # fmt: skip
    return found
