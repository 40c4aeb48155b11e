"""What happened to every order of a run: sent, answered, final, and when.

The hot path (one call per send, response and final status) only appends and counts;
percentiles are computed when asked. Latency is kept twice, from the order's due time
(free of coordinated omission) and from its actual send, in microsecond HDR histograms.
The latency from the due time is kept per final status, and the overall one is their sum:
a declined order's saga compensates, two hops longer than a confirmed one, so the slowest
orders of a mixed run are mostly cancelled ones. Orders before `measured_from` are the
warm-up: tracked like every other order (they can be lost), but kept out of the latency
histograms; the per-second series has them all.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator

from hdrh.histogram import HdrHistogram

from jetsaga.load.arrivals import Kind
from jetsaga.load.workload import Order

_NS_PER_US = 1_000
_MAX_US = 3_600_000_000  # one hour: anything slower is clamped, not dropped


class Post(enum.IntEnum):
    """What the `POST /orders` of an order came to."""

    UNSENT = 0
    IN_FLIGHT = 1
    ACCEPTED = 2  # 201, or found on the server after an ambiguous answer
    REJECTED = 3  # an HTTP status other than 201
    AMBIGUOUS = 4  # 5xx or a transport error after the request may have left: probe it
    NOT_SENT = 5  # could not connect: the order surely does not exist


class Outcome(enum.IntEnum):
    NONE = 0
    CONFIRMED = 1
    CANCELLED = 2
    FAILED = 3


OUTCOME_BY_NAME = {o.name: o for o in Outcome if o is not Outcome.NONE}
EXPECTED = {
    Kind.OK: Outcome.CONFIRMED,
    Kind.DECLINE: Outcome.CANCELLED,
    Kind.OUT_OF_STOCK: Outcome.FAILED,
}


def clamped_us(ns: int) -> int:
    """A duration in nanoseconds as the microseconds a histogram records."""
    return min(max(ns // _NS_PER_US, 1), _MAX_US)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _MAX_US, 3)


# Values below 2**_EXACT_BITS are told apart by the histogram; above, one in 2**k is.
_EXACT_BITS = new_histogram().sub_bucket_count.bit_length() - 1


class Latencies:
    """Microsecond values for an HDR histogram, counted at its resolution as they come.

    hdrh's `record_value` is several microseconds of Python, four times per order; a dict
    increment per value, and one `record_value` per distinct bucket when the histogram is
    asked for, give the same histogram.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: defaultdict[int, int] = defaultdict(int)

    def record(self, ns: int) -> int:
        """Record a duration in nanoseconds; returns it in (clamped) microseconds."""
        us = clamped_us(ns)
        shift = max(us.bit_length() - _EXACT_BITS, 0)
        self._counts[us >> shift << shift] += 1  # the lowest value of its bucket, or finer
        return us

    @classmethod
    def merged(cls, parts: Iterable[Latencies]) -> Latencies:
        """The values of every part, in one."""
        merged = cls()
        for part in parts:
            for us, n in part._counts.items():
                merged._counts[us] += n
        return merged

    def histogram(self) -> HdrHistogram:
        histogram = new_histogram()
        for us, n in self._counts.items():
            histogram.record_value(us, n)
        return histogram


class Second:
    """One second of the run: counts, and the latencies of orders that went final in it."""

    __slots__ = ("accepted", "final", "latencies_us", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0
        self.final = 0
        self.latencies_us: list[int] = []


class Tracker:
    def __init__(self, count: int, start_ns: int, measured_from: int = 0) -> None:
        if not 0 <= measured_from <= count:
            raise ValueError("measured_from must be between 0 and count")
        self.count = count
        self.start_ns = start_ns
        self.measured_from = measured_from  # index of the first order after the warm-up
        self.order_ids: list[str] = [""] * count
        self.index: dict[str, int] = {}
        self.kinds = bytearray(count)
        self.lines: list[tuple[tuple[int, int], ...]] = [()] * count
        self.due_ns = [0] * count
        self.sent_ns = [0] * count
        self.post = bytearray(count)
        self.final = bytearray(count)
        self.final_ns = [0] * count
        self.sent = self.accepted = self.found_after_error = 0
        self.http_status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.final_source: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.open: set[int] = set()  # accepted and not final
        self.latency_by_outcome: dict[Outcome, Latencies] = {
            o: Latencies() for o in Outcome if o is not Outcome.NONE
        }
        self.latency_sent = Latencies()
        self.post_latency = Latencies()
        self.send_lag = Latencies()
        self.seconds: list[Second] = []
        self.idle = asyncio.Event()  # nothing in flight and nothing accepted is open
        self.idle.set()

    def second(self, at_ns: int) -> Second:
        s = max(0, (at_ns - self.start_ns) // 1_000_000_000)
        while len(self.seconds) <= s:
            self.seconds.append(Second())
        return self.seconds[s]

    def on_send(self, i: int, order: Order, kind: Kind, due_ns: int, now_ns: int) -> None:
        self.order_ids[i] = order.order_id
        self.index[order.order_id] = i
        self.kinds[i] = kind
        self.lines[i] = order.lines
        self.due_ns[i] = due_ns
        self.sent_ns[i] = now_ns
        self.post[i] = Post.IN_FLIGHT
        self.sent += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.idle.clear()
        self.send_lag.record(now_ns - due_ns)
        self.second(now_ns).sent += 1

    def on_answer(self, i: int, outcome: Post, now_ns: int, what: str | int) -> None:
        """The POST of order `i` ended: `what` is the HTTP status or the error's name."""
        self.in_flight -= 1
        self.post[i] = outcome
        if isinstance(what, int):
            self.http_status[what] += 1
        else:
            self.errors[what] += 1
        if outcome is Post.ACCEPTED:
            if i >= self.measured_from:
                self.post_latency.record(now_ns - self.sent_ns[i])
            self.second(now_ns).accepted += 1
            self._accept(i)
        self._check_idle()

    def on_found(self, i: int) -> None:
        """An order whose POST was ambiguous exists on the server after all."""
        if self.post[i] == Post.AMBIGUOUS:
            self.post[i] = Post.ACCEPTED
            self.found_after_error += 1
            self._accept(i)

    @property
    def unresolved(self) -> int:
        return len(self.open)

    def _accept(self, i: int) -> None:
        self.accepted += 1
        if self.final[i] == Outcome.NONE:
            self.open.add(i)

    @property
    def latency_due(self) -> Latencies:
        """From the due time, of the measured orders that reached any final status."""
        return Latencies.merged(self.latency_by_outcome.values())

    def on_final(self, order_id: str, final: Outcome, at_ns: int, source: str) -> bool:
        """Record that an order went final at `at_ns`; False if unknown or already final."""
        i = self.index.get(order_id)
        if i is None or self.final[i] != Outcome.NONE:
            return False
        at_ns = max(at_ns, self.sent_ns[i])
        self.final[i] = final
        self.final_ns[i] = at_ns
        self.final_source[source] += 1
        if i >= self.measured_from:
            us = self.latency_by_outcome[final].record(at_ns - self.due_ns[i])
            self.latency_sent.record(at_ns - self.sent_ns[i])
        else:
            us = clamped_us(at_ns - self.due_ns[i])
        bucket = self.second(at_ns)
        bucket.final += 1
        bucket.latencies_us.append(us)
        if self.post[i] == Post.ACCEPTED:
            self.open.discard(i)
            self._check_idle()
        return True

    def _check_idle(self) -> None:
        if self.in_flight == 0 and not self.open:
            self.idle.set()

    def open_orders(self, accepted_before_ns: int | None = None) -> list[int]:
        """Accepted orders not yet final, oldest first, optionally only those sent before a
        time (from the set of open orders: a scan of every order, each second, grew with the
        length of the run)."""
        if accepted_before_ns is None:
            return sorted(self.open)
        sent_ns = self.sent_ns
        return sorted(i for i in self.open if sent_ns[i] < accepted_before_ns)

    def confirmed_lines(self) -> Iterator[tuple[int, int]]:
        """(product index, quantity) of every line of every CONFIRMED order."""
        for i in range(self.count):
            if self.final[i] == Outcome.CONFIRMED:
                yield from self.lines[i]

    def accepted_outcomes(self) -> Iterator[tuple[str, str]]:
        """(orderId, final status or PENDING) of every accepted order."""
        for i in range(self.count):
            if self.post[i] == Post.ACCEPTED:
                yield self.order_ids[i], Outcome(self.final[i]).name.replace("NONE", "PENDING")

    def ambiguous_orders(self) -> list[int]:
        return [i for i in range(self.count) if self.post[i] == Post.AMBIGUOUS]

    def finals(self) -> int:
        return sum(self.final_source.values())

    def recent_p99_ms(self, now_ns: int) -> float | None:
        """p99 of the latencies of orders that went final in the last two seconds."""
        s = (now_ns - self.start_ns) // 1_000_000_000
        recent = [us for b in self.seconds[max(0, s - 1) : s + 1] for us in b.latencies_us]
        if not recent:
            return None
        recent.sort()
        return recent[min(len(recent) - 1, int(len(recent) * 0.99))] / 1000.0
