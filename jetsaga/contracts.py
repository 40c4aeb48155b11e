"""The published language: every message that crosses NATS, its subject, and its headers.

One frozen msgspec Struct per message (SPEC §4.2), camelCase on the wire. Commands are
imperative, events are past tense. Money is integer minor units plus a currency code.
Schema evolution rule: new fields get defaults, existing types never change.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias

import msgspec

OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Money = Annotated[int, msgspec.Meta(ge=0)]
Currency = Annotated[str, msgspec.Meta(pattern="^[a-z]{3}$")]


class LineItem(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    product_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    quantity: Quantity
    unit_price: Money


class UnavailableItem(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    product_id: str
    requested: int
    available: int


# --- events and commands (SPEC §4.2) -------------------------------------------------


class OrderCreated(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    customer_id: str
    items: tuple[LineItem, ...]
    total_amount: Money
    currency: Currency


class InventoryReserved(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reservation_id: str
    items: tuple[LineItem, ...]
    expires_at: str  # RFC 3339, UTC


class InventoryOutOfStock(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    unavailable_items: tuple[UnavailableItem, ...]


class ProcessPayment(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    customer_id: str
    amount: Money
    currency: Currency
    payment_method: str


class PaymentSucceeded(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    payment_id: str
    amount: Money
    stripe_payment_intent_id: str


class PaymentFailed(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reason: str
    timestamp: str


class ReleaseInventory(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reservation_id: str | None = None  # None: release whatever is held for the order
    reason: str


class InventoryReleased(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reservation_id: str | None = None  # None: nothing was held
    reason: str


class RefundPayment(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    payment_id: str | None = None  # None: refund whatever was charged for the order
    reason: str


class PaymentRefunded(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    payment_id: str | None = None  # None: nothing had been charged
    refund_id: str | None = None


class OrderConfirmed(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    payment_id: str
    timestamp: str


class OrderCancelled(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reason: str
    timestamp: str


class OrderFailed(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    order_id: OrderId
    reason: str
    failure_stage: str


AnyMessage: TypeAlias = (
    OrderCreated
    | InventoryReserved
    | InventoryOutOfStock
    | ProcessPayment
    | PaymentSucceeded
    | PaymentFailed
    | ReleaseInventory
    | InventoryReleased
    | RefundPayment
    | PaymentRefunded
    | OrderConfirmed
    | OrderCancelled
    | OrderFailed
)

# --- subjects -------------------------------------------------------------------------

ORDERS_CREATED: Final = "orders.created"
INVENTORY_RESERVED: Final = "inventory.reserved"
INVENTORY_OUT_OF_STOCK: Final = "inventory.out_of_stock"
PAYMENTS_PROCESS_REQUEST: Final = "payments.process_request"
PAYMENTS_SUCCEEDED: Final = "payments.succeeded"
PAYMENTS_FAILED: Final = "payments.failed"
INVENTORY_RELEASE_REQUEST: Final = "inventory.release_request"
INVENTORY_RELEASED: Final = "inventory.released"
PAYMENTS_REFUND_REQUEST: Final = "payments.refund_request"
PAYMENTS_REFUNDED: Final = "payments.refunded"
ORDERS_CONFIRMED: Final = "orders.confirmed"
ORDERS_CANCELLED: Final = "orders.cancelled"
ORDERS_FAILED: Final = "orders.failed"

SUBJECT_TYPES: Final[dict[str, type[AnyMessage]]] = {
    ORDERS_CREATED: OrderCreated,
    INVENTORY_RESERVED: InventoryReserved,
    INVENTORY_OUT_OF_STOCK: InventoryOutOfStock,
    PAYMENTS_PROCESS_REQUEST: ProcessPayment,
    PAYMENTS_SUCCEEDED: PaymentSucceeded,
    PAYMENTS_FAILED: PaymentFailed,
    INVENTORY_RELEASE_REQUEST: ReleaseInventory,
    INVENTORY_RELEASED: InventoryReleased,
    PAYMENTS_REFUND_REQUEST: RefundPayment,
    PAYMENTS_REFUNDED: PaymentRefunded,
    ORDERS_CONFIRMED: OrderConfirmed,
    ORDERS_CANCELLED: OrderCancelled,
    ORDERS_FAILED: OrderFailed,
}
TYPE_SUBJECTS: Final[dict[type[AnyMessage], str]] = {t: s for s, t in SUBJECT_TYPES.items()}


def subject_of(message: AnyMessage) -> str:
    return TYPE_SUBJECTS[type(message)]


# --- headers --------------------------------------------------------------------------

MSG_ID: Final = "Nats-Msg-Id"
SAGA_ID: Final = "Saga-Id"
CAUSATION_ID: Final = "Causation-Id"
TRACEPARENT: Final = "traceparent"


def message_id(subject: str, order_id: str) -> str:
    """The deterministic `Nats-Msg-Id` of a logical message.

    Each saga emits each subject at most once per order, so (subject, orderId) names a
    logical message: a re-publish of it is dropped by JetStream's duplicate window, and a
    consumer's inbox row keyed on it (or, for the saga, its state) makes a redelivery a
    no-op.
    """
    return f"{subject}:{order_id}"


# --- codecs: one reused encoder, one typed decoder per subject ------------------------

_encoder = msgspec.json.Encoder()
_decoders: Final[dict[str, msgspec.json.Decoder[AnyMessage]]] = {
    subject: msgspec.json.Decoder(kind) for subject, kind in SUBJECT_TYPES.items()
}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(subject: str, payload: bytes) -> AnyMessage:
    """Decode a payload for its subject; raises `msgspec.ValidationError`/`DecodeError`,
    or `KeyError` for a subject outside the contract."""
    return _decoders[subject].decode(payload)


# --- streams and durable consumers (SPEC §4.1, §4.3) ----------------------------------

DAY: Final = 86_400.0
DUPLICATE_WINDOW_S: Final = 120.0
MAX_DELIVER: Final = 3


class StreamSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    subjects: tuple[str, ...]
    max_age_s: float


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    # Redelivery after an ack timeout (a worker that died holding the message). It outlasts
    # the slowest handler, which heartbeats with in_progress() anyway. There is no consumer
    # `backoff` list on purpose: with one set, the server stops honouring nak delays after
    # the first redelivery (measured on 2.15), and the consumer loop's nak delays are the
    # back-off between deliveries.
    ack_wait_s: float = 30.0
    max_ack_pending: int = 4_000
    # Loops a worker runs on the consumer, each with its own standing pull. One gives the
    # biggest batches and no lock contention between batches of one worker.
    loops: int = 1
    # A second taker on each loop's pull, idle until the loop holds a batch while an outside
    # dependency is away; then it handles what arrives meanwhile, so that a compensation
    # queued behind the held batch does not wait for that dependency too. (A second loop
    # would do the same, but it splits every batch in two, and each half pays the batch's
    # fixed cost: two loops on the payment consumer made 76 batches a second at 1,000
    # orders/s, and the saga's p99 was 1.6 times that of one loop.)
    relief: bool = False
    # The least time between the starts of two batches of a loop. 0, on the path an order
    # waits on: a batch starts as soon as the last one ends. A consumer off that path may
    # wait for company, so that under load it pays its fixed cost per batch (a transaction
    # and its round trips, a delivery, the acks) less often and leaves the CPU to the hops
    # orders wait on. A message after a quiet spell is taken at once.
    pace_s: float = 0.0


STREAMS: Final = (
    StreamSpec(name="ORDERS", subjects=("orders.*",), max_age_s=7 * DAY),
    StreamSpec(name="INVENTORY", subjects=("inventory.*",), max_age_s=7 * DAY),
    StreamSpec(name="PAYMENTS", subjects=("payments.*",), max_age_s=7 * DAY),
    StreamSpec(name="SAGA_ERRORS", subjects=("saga.errors.>",), max_age_s=30 * DAY),
    # Not part of the saga's language: captures JetStream's MAX_DELIVERIES advisories, which
    # are plain core-NATS publishes, so that a message whose worker died on every delivery
    # still reaches the dead-letter stream.
    StreamSpec(
        name="SAGA_ADVISORIES",
        subjects=("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",),
        max_age_s=30 * DAY,
    ),
)

CONSUMERS: Final = (
    ConsumerSpec(durable="inventory-service", stream="ORDERS", filter_subjects=(ORDERS_CREATED,)),
    ConsumerSpec(
        durable="inventory-service-confirm",
        stream="ORDERS",
        filter_subjects=(ORDERS_CONFIRMED,),
        # Selling reserved stock answers nobody: the order is confirmed already.
        pace_s=0.1,
    ),
    ConsumerSpec(
        durable="inventory-service-release",
        stream="INVENTORY",
        filter_subjects=(INVENTORY_RELEASE_REQUEST,),
    ),
    ConsumerSpec(
        durable="payment-service",
        stream="PAYMENTS",
        filter_subjects=(PAYMENTS_PROCESS_REQUEST, PAYMENTS_REFUND_REQUEST),
        ack_wait_s=60.0,
        max_ack_pending=2_000,
        relief=True,  # a refund must get past a charge held while the gateway is down
    ),
    ConsumerSpec(
        durable="order-service-inventory",
        stream="INVENTORY",
        filter_subjects=(INVENTORY_RESERVED, INVENTORY_OUT_OF_STOCK, INVENTORY_RELEASED),
    ),
    ConsumerSpec(
        durable="order-service-payment",
        stream="PAYMENTS",
        filter_subjects=(PAYMENTS_SUCCEEDED, PAYMENTS_FAILED, PAYMENTS_REFUNDED),
    ),
    ConsumerSpec(
        durable="dead-letter-advisories",
        stream="SAGA_ADVISORIES",
        filter_subjects=("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",),
    ),
)
CONSUMERS_BY_DURABLE: Final = {c.durable: c for c in CONSUMERS}
DEAD_LETTER_PREFIX: Final = "saga.errors."


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What `saga.errors.<durable>` holds (SPEC §4.4); payload is the original bytes."""

    durable: str
    stream: str
    stream_seq: int
    subject: str
    payload: bytes  # base64 in JSON
    headers: dict[str, str]
    delivery_count: int
    last_error: str
    failed_at: str
