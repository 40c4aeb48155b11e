"""Order ids that grow with time: UUID version 7 (RFC 9562).

An order id is the key of a row in nearly every table of all three services: orders, sagas,
saga history, each consumer's inbox (`subject:orderId`), reservations and payments. A random
id (version 4) sends each insert to a random leaf of each of those indexes, so the more
orders a database holds, the fewer of the pages a batch touches are still in the CPU's
caches. An id that starts with the time goes to the right-hand end of each index, where the
last batch's pages still are.

Measured with `jetsaga load` at 1,000 orders/s (two alternated pairs of fresh stacks, 40 s
each, then 40 s more on the grown databases): PostgreSQL's CPU per order fell from
0.307-0.321 to 0.276-0.291 ms for the order database, from 0.205-0.215 to 0.185-0.197 ms for
inventory, and from 0.158-0.168 to 0.150-0.162 ms for payment. Over eight more alternated
pairs (30 s at 1,000/s), p99 from POST to final status was lower with version-7 ids in seven,
429 ms against 602 on average.
"""

from __future__ import annotations

import os
import time
from typing import Final

# The variant's hex digit (RFC 9562: binary 10xx) from any hex digit, keeping its low bits.
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid7() -> str:
    """A new version-7 UUID in canonical text form: 48 bits of Unix time in milliseconds,
    then 74 random bits. Text order is time order, to the millisecond."""
    h = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex() + os.urandom(10).hex()
    return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
