"""`FakeGateway`: an in-process payment gateway (`PAYMENT_GATEWAY=fake`) with Stripe's test
tokens and PaymentIntent states, for benchmarks of the saga engine and for handler tests.

Like localstripe, and unlike Stripe within 24 hours, it ignores idempotency keys: a second
create makes a second intent, so a test sees any double charge our own records let through.
`fail` and `down` make it unavailable on purpose; `calls` counts every call by name.

It keeps every intent, as Stripe does, so it stores them in columns: one row per intent,
found from its id (a random prefix per gateway, then the row number) without a dict. A
dataclass per intent in a dict cost 327 bytes an intent (tracemalloc over 100,000 creates
and confirms with UUID order ids), and grew a benchmark's payment worker by 78 MiB in
262,000 orders. The columns cost 35 bytes an intent. With real Stripe the worker holds
nothing, so the fake must not be what takes it past its memory target.
"""

from __future__ import annotations

import uuid
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from payment_service.gateway import (
    CANCELED,
    DECLINED_TOKENS,
    REQUIRES_ACTION,
    REQUIRES_CONFIRMATION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    Declined,
    Intent,
    Missing,
    Rejected,
    Unavailable,
)

_CANCELABLE = (REQUIRES_CONFIRMATION, REQUIRES_PAYMENT_METHOD, REQUIRES_ACTION, "requires_capture")
_REFUNDED, _DECLINED = 1, 2  # bits of a row's flags


@dataclass
class _Strings:
    """A few distinct strings (currencies, payment methods, statuses), each kept once."""

    seen: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def of(self, value: str) -> int:
        if value not in self.index:
            self.index[value] = len(self.seen)
            self.seen.append(value)
        return self.index[value]


class FakeIntent:
    """A view of one row of the gateway's columns; setting `status` changes the row."""

    __slots__ = ("_gw", "_row")

    def __init__(self, gateway: FakeGateway, row: int) -> None:
        self._gw, self._row = gateway, row

    @property
    def id(self) -> str:
        return self._gw._id("pi", self._row)

    @property
    def order_id(self) -> str:
        odd = self._gw._odd_orders.get(self._row)
        if odd is not None:
            return odd
        at = 16 * self._row
        return str(uuid.UUID(bytes=bytes(self._gw._orders[at : at + 16])))

    @property
    def amount(self) -> int:
        return self._gw._amounts[self._row]

    @property
    def currency(self) -> str:
        return self._gw._currencies.seen[self._gw._currency[self._row]]

    @property
    def payment_method(self) -> str:
        return self._gw._methods.seen[self._gw._method[self._row]]

    @property
    def status(self) -> str:
        return self._gw._statuses.seen[self._gw._status[self._row]]

    @status.setter
    def status(self, value: str) -> None:
        # A byte: a test may assign up to 256 distinct statuses (ValueError past that).
        self._gw._status[self._row] = self._gw._statuses.of(value)

    @property
    def failure_code(self) -> str | None:
        """Set by a declined confirm, and only by one, so the token tells which code."""
        return DECLINED_TOKENS[self.payment_method] if self._flag(_DECLINED) else None

    @property
    def refund_id(self) -> str | None:
        """Stable, as a second refund finds the first one."""
        return self._gw._id("re", self._row) if self._flag(_REFUNDED) else None

    def _flag(self, bit: int) -> bool:
        return bool(self._gw._flags[self._row] & bit)

    def _set(self, bit: int) -> None:
        self._gw._flags[self._row] |= bit

    def view(self) -> Intent:
        return Intent(id=self.id, status=self.status, failure_code=self.failure_code)

    def __repr__(self) -> str:
        return f"FakeIntent(id={self.id!r}, order_id={self.order_id!r}, status={self.status!r})"


class _Intents(Mapping[str, FakeIntent]):
    """`gateway.intents[intent_id]`, by parsing the id: the row number after the prefix."""

    def __init__(self, gateway: FakeGateway) -> None:
        self._gw = gateway

    def __getitem__(self, intent_id: str) -> FakeIntent:
        head = self._gw._id("pi", "")
        rest = intent_id[len(head) :] if intent_id.startswith(head) else ""
        # Only the id as made: "…07" or "…+7" would name row 7 under another id. The length
        # goes first, as `int` refuses a string of thousands of digits.
        if 0 < len(rest) <= len(str(len(self))) and rest.isascii() and rest.isdigit():
            row = int(rest)
            if str(row) == rest and row < len(self):
                return FakeIntent(self._gw, row)
        raise KeyError(intent_id)

    def __iter__(self) -> Iterator[str]:
        return (FakeIntent(self._gw, row).id for row in range(len(self)))

    def __len__(self) -> int:
        return len(self._gw._amounts)


@dataclass
class FakeGateway:
    calls: Counter[str] = field(default_factory=Counter)
    is_down: bool = False
    _failures: Counter[str] = field(default_factory=Counter)
    # Unique across processes and restarts, as a worker's ids land in a shared database.
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:20], init=False)
    # The columns, one row per intent. An order id is 16 bytes when it is a canonical UUID,
    # and otherwise kept whole in `_odd_orders`, with zeros in `_orders`.
    _orders: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _odd_orders: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _amounts: array[int] = field(default_factory=lambda: array("q"), init=False, repr=False)
    _currency: array[int] = field(default_factory=lambda: array("I"), init=False, repr=False)
    _method: array[int] = field(default_factory=lambda: array("I"), init=False, repr=False)
    _status: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _flags: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _currencies: _Strings = field(default_factory=_Strings, init=False, repr=False)
    _methods: _Strings = field(default_factory=_Strings, init=False, repr=False)
    _statuses: _Strings = field(default_factory=_Strings, init=False, repr=False)

    @property
    def intents(self) -> Mapping[str, FakeIntent]:
        return _Intents(self)

    def _id(self, kind: str, row: int | str) -> str:
        return f"{kind}_fake{self._prefix}{row}"

    # --- test controls ------------------------------------------------------------------

    def fail(self, call: str = "*", times: int = 1) -> None:
        """The next `times` calls named `call` (`*`: any) raise `Unavailable`."""
        self._failures[call] += times

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def intents_of(self, order_id: str) -> list[FakeIntent]:
        """A scan, in order of creation: a test helper, not a gateway call."""
        key = _uuid_bytes(order_id)
        if key is None:
            rows = [row for row, odd in self._odd_orders.items() if odd == order_id]
        else:
            # Any match on a 16-byte boundary is a row, unless that row's order id is odd.
            rows, at = [], self._orders.find(key)
            while at >= 0:
                if at % 16 == 0 and at // 16 not in self._odd_orders:
                    rows.append(at // 16)
                at = self._orders.find(key, at + 1)
        return [FakeIntent(self, row) for row in rows]

    def charged(self, order_id: str) -> int:
        """How many times money was taken for the order and not refunded."""
        return sum(
            1 for i in self.intents_of(order_id) if i.status == SUCCEEDED and not i.refund_id
        )

    # --- the gateway ----------------------------------------------------------------------

    def _enter(self, call: str) -> None:
        self.calls[call] += 1
        if self.is_down:
            raise Unavailable(f"fake {call}: gateway down")
        for name in (call, "*"):
            if self._failures[name] > 0:
                self._failures[name] -= 1
                raise Unavailable(f"fake {call}: injected failure")

    def _get(self, intent_id: str) -> FakeIntent:
        try:
            return self.intents[intent_id]
        except KeyError:
            raise Missing() from None

    async def create_intent(
        self, order_id: str, amount: int, currency: str, payment_method: str
    ) -> Intent:
        self._enter("create")
        if not payment_method.startswith("pm_card_"):
            raise Rejected("resource_missing")
        row = len(self._amounts)
        self._amounts.append(amount)  # first, as it raises OverflowError past 64 bits
        key = _uuid_bytes(order_id)
        if key is None:
            self._odd_orders[row] = order_id
        self._orders += key or bytes(16)
        self._currency.append(self._currencies.of(currency))
        self._method.append(self._methods.of(payment_method))
        self._status.append(self._statuses.of(REQUIRES_CONFIRMATION))
        self._flags.append(0)
        return FakeIntent(self, row).view()

    async def confirm_intent(self, order_id: str, intent_id: str) -> Intent:
        self._enter("confirm")
        intent = self._get(intent_id)
        if intent.status != REQUIRES_CONFIRMATION:
            raise Rejected("payment_intent_unexpected_state")
        code = DECLINED_TOKENS.get(intent.payment_method)
        if code is not None:
            intent.status = REQUIRES_PAYMENT_METHOD
            intent._set(_DECLINED)
            raise Declined(code)
        intent.status = SUCCEEDED
        return intent.view()

    async def retrieve_intent(self, intent_id: str) -> Intent:
        self._enter("retrieve")
        return self._get(intent_id).view()

    async def cancel_intent(self, order_id: str, intent_id: str) -> Intent:
        self._enter("cancel")
        intent = self._get(intent_id)
        if intent.status not in _CANCELABLE:
            raise Rejected("payment_intent_unexpected_state")
        intent.status = CANCELED
        return intent.view()

    async def refund(self, order_id: str, intent_id: str) -> str:
        self._enter("refund")
        intent = self._get(intent_id)
        if intent.status != SUCCEEDED:
            raise Rejected("charge_not_succeeded")
        intent._set(_REFUNDED)
        return self._id("re", intent._row)

    async def close(self) -> None:
        return None


def _uuid_bytes(order_id: str) -> bytes | None:
    """The 16 bytes of a canonical UUID string, from which `str(UUID)` gives it back."""
    try:
        parsed = uuid.UUID(order_id)
    except ValueError:
        return None
    return parsed.bytes if str(parsed) == order_id else None
