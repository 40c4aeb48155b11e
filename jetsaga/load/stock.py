"""Stock set-up before a run and the conservation check after it (SPEC §3).

For each product of the run: `available + reserved + sold` must equal the stock that was
set, and once every order is final, `reserved` must be 0 and `sold` must equal the
quantities of the run's CONFIRMED orders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
import msgspec


class StockError(RuntimeError):
    """The inventory service did not take or give stock levels."""


class StockLevel(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    product_id: str
    available: int
    reserved: int
    sold: int


class StockCheck(msgspec.Struct, kw_only=True, rename="camel"):
    checked: bool
    ok: bool
    products: int = 0
    set_total: int = 0
    counted_total: int = 0
    reserved: int = 0
    sold: int = 0
    sold_expected: int | None = None  # None: some orders are not final, so unknown
    violations: list[str] = msgspec.field(default_factory=list)
    note: str | None = None
    waited_s: float = 0.0  # from the last final status until the stock was right (or gave up)


_REREAD_S = 0.25
_encoder = msgspec.json.Encoder()
_level = msgspec.json.Decoder(StockLevel)


async def set_stock(session: aiohttp.ClientSession, url: str, levels: Mapping[str, int]) -> None:
    async def put(product_id: str, available: int) -> None:
        body = _encoder.encode({"available": available})
        async with session.put(
            f"{url}/inventory/{product_id}", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise StockError(f"PUT /inventory/{product_id}: {resp.status} {text[:200]}")

    try:
        await asyncio.gather(*(put(p, n) for p, n in levels.items()))
    except aiohttp.ClientError as exc:
        raise StockError(f"inventory service at {url}: {exc}") from exc


async def read_stock(session: aiohttp.ClientSession, url: str, product_id: str) -> StockLevel:
    async with session.get(f"{url}/inventory/{product_id}") as resp:
        body = await resp.read()
        if resp.status != 200:
            raise StockError(f"GET /inventory/{product_id}: {resp.status} {body[:200]!r}")
        return _level.decode(body)


def judge(
    set_levels: Mapping[str, int],
    counted: Mapping[str, StockLevel],
    sold_expected: Mapping[str, int] | None,
) -> StockCheck:
    """Compare what was set with what the inventory service counts now."""
    check = StockCheck(checked=True, ok=True, products=len(set_levels))
    for product_id, initial in set_levels.items():
        level = counted[product_id]
        total = level.available + level.reserved + level.sold
        check.set_total += initial
        check.counted_total += total
        check.reserved += level.reserved
        check.sold += level.sold
        if min(level.available, level.reserved, level.sold) < 0:
            check.violations.append(f"{product_id}: negative stock {level}")
        if total != initial:
            check.violations.append(f"{product_id}: set {initial}, now counts {total}")
        if sold_expected is not None:
            if level.reserved != 0:
                check.violations.append(f"{product_id}: {level.reserved} still reserved")
            if level.sold != sold_expected.get(product_id, 0):
                check.violations.append(
                    f"{product_id}: sold {level.sold}, confirmed {sold_expected.get(product_id, 0)}"
                )
    if sold_expected is not None:
        check.sold_expected = sum(sold_expected.values())
    check.ok = not check.violations
    return check


async def check_stock(
    session: aiohttp.ClientSession,
    url: str,
    set_levels: Mapping[str, int],
    sold_expected: Mapping[str, int] | None,
    wait_s: float,
) -> StockCheck:
    """Judge the stock, re-reading it for up to `wait_s` while it is not yet right: the
    inventory service moves reserved stock to sold only when it consumes
    `orders.confirmed`, a moment after the order itself went final."""
    began = time.monotonic()
    while True:
        try:
            levels = await asyncio.gather(*(read_stock(session, url, p) for p in set_levels))
        except (aiohttp.ClientError, StockError, msgspec.DecodeError) as exc:
            check = StockCheck(checked=False, ok=False, note=f"could not read stock: {exc}")
        else:
            check = judge(set_levels, dict(zip(set_levels, levels, strict=True)), sold_expected)
        waited = time.monotonic() - began
        if check.ok or waited >= wait_s:
            check.waited_s = round(waited, 3)
            return check
        await asyncio.sleep(min(_REREAD_S, wait_s - waited))
