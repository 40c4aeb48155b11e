"""Where a saga's time went, hop by hop, read back from the three services' databases.

    python -m bench.hops --database-url postgresql://postgres@127.0.0.1:PORT/postgres

For every saga that completed, it takes six moments from the tables the services keep
anyway, and prints the five hops between them, per second of the sagas' start and for the
whole run:

- `STARTED`: the order worker's history record of the saga's start (at intake);
- `reserve`: the inventory worker's transaction that wrote the reservation began;
- `reserved`: the order worker decided on `inventory.reserved` (its history record);
- `charge`: the payment worker's transaction that wrote the payment row began;
- `charged`: the payment worker's last transaction on that row began;
- `succeeded`: the order worker decided on `payments.succeeded` (its history record).

History times are the order worker's clock when it decided; table times are PostgreSQL's
`now()`, the start of the writing transaction. All share one machine's clock under `jetsaga
up`. A hop is then: waiting for the message to be published and delivered, waiting for the
batch before it to finish, and its own batch up to that moment.

The first hop of a saga (the client's POST to `STARTED`) and its last (the commit of
`COMPLETED` to the client seeing `orders.confirmed`) are the load runner's to measure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec

from jetsaga.config import SERVICE_DATABASES, with_database
from jetsaga.load.figures import nearest_rank

HOPS = ("to inventory", "back to order", "to payment", "payment", "back to order")


class Trace(msgspec.Struct, frozen=True):
    """Epoch seconds of the six moments of one completed saga, in saga order."""

    started: float
    reserve: float
    reserved: float
    charge: float
    charged: float
    succeeded: float

    def hops_ms(self) -> tuple[float, ...]:
        t = (self.started, self.reserve, self.reserved, self.charge, self.charged, self.succeeded)
        return tuple(1000 * (b - a) for a, b in itertools.pairwise(t))


_HISTORY = """
SELECT order_id,
       extract(epoch FROM min(at) FILTER (WHERE saga_status = 'STARTED')),
       extract(epoch FROM min(at) FILTER (WHERE saga_status = 'INVENTORY_RESERVED')),
       extract(epoch FROM min(at) FILTER (WHERE saga_status = 'PAYMENT_SUCCEEDED'))
FROM saga_history
WHERE order_id IN (SELECT order_id FROM sagas WHERE status = 'COMPLETED' AND started_at >= $1)
GROUP BY order_id
"""
_RESERVATIONS = (
    "SELECT order_id, extract(epoch FROM created_at) FROM reservations WHERE created_at >= $1"
)
_PAYMENTS = (
    "SELECT order_id, extract(epoch FROM created_at), extract(epoch FROM updated_at)"
    " FROM payments WHERE created_at >= $1 AND status = 'succeeded'"
)


async def _rows(url: str, database: str, query: str, since: datetime) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(with_database(url, database))
    try:
        return await conn.fetch(query, since)
    finally:
        await conn.close()


async def fetch(url: str, since: datetime) -> list[Trace]:
    """The moments of every saga started at or after `since` that completed, on the server
    at `url` (the services' databases are found on it by name)."""
    history, reservations, payments = await asyncio.gather(
        _rows(url, SERVICE_DATABASES["order"], _HISTORY, since),
        _rows(url, SERVICE_DATABASES["inventory"], _RESERVATIONS, since),
        _rows(url, SERVICE_DATABASES["payment"], _PAYMENTS, since),
    )
    reserve = {r[0]: float(r[1]) for r in reservations}
    charge = {r[0]: (float(r[1]), float(r[2])) for r in payments}
    traces = []
    for order_id, *moments in history:
        if order_id in reserve and order_id in charge and None not in moments:
            started, reserved, succeeded = moments
            traces.append(
                Trace(float(started), reserve[order_id], float(reserved), *charge[order_id],
                      float(succeeded))
            )  # fmt: skip
    return traces


def table(traces: Iterable[Trace]) -> str:
    """Median of each hop per second of the sagas' start, then p50/p90/p99 of each over all."""
    by_second: dict[int, list[tuple[float, ...]]] = defaultdict(list)
    for trace in traces:
        by_second[int(trace.started)].append(trace.hops_ms())
    if not by_second:
        return "no completed saga with all its moments recorded"
    first = min(by_second)
    head = f"{'s':>4} {'sagas':>6} {'sum':>7} |" + "".join(f"{h:>15}" for h in HOPS)
    lines = ["median ms per second of the sagas' start", head]
    everything: list[tuple[float, ...]] = []
    for second in sorted(by_second):
        hops = by_second[second]
        everything.extend(hops)
        medians = [statistics.median(column) for column in zip(*hops, strict=True)]
        total = statistics.median(sum(h) for h in hops)
        lines.append(
            f"{second - first:>4} {len(hops):>6} {total:>7.1f} |"
            + "".join(f"{m:>15.1f}" for m in medians)
        )
    columns = [sorted(column) for column in zip(*everything, strict=True)]
    totals = sorted(sum(h) for h in everything)
    lines.append(f"{len(everything)} sagas")
    for p in (50, 90, 99):
        lines.append(
            f"{f'p{p}':>4} {'':>6} {nearest_rank(totals, p):>7.1f} |"
            + "".join(f"{nearest_rank(c, p):>15.1f}" for c in columns)
        )
    return "\n".join(lines)


def when(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hops", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--database-url", required=True, help="the server the services use")
    parser.add_argument(
        "--since", type=when, default=when("1970-01-01"),
        help="only sagas started at or after this ISO time, UTC unless it says (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    print(table(asyncio.run(fetch(args.database_url, args.since))))


if __name__ == "__main__":
    main()
