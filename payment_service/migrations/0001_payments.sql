-- One payment per order: the record that makes "charged at most once" hold beyond Stripe's
-- 24-hour idempotency keys. `processing` means "maybe charged": an intent may exist (and be
-- confirmed) if stripe_payment_intent_id is set. `voided` means a refund request came first
-- (or cancelled the intent): this order is never charged.
CREATE TABLE payments (
    order_id                 text        PRIMARY KEY,
    status                   text        NOT NULL CHECK (status IN
                                 ('processing', 'succeeded', 'failed', 'voided', 'refunded')),
    amount                   bigint      CHECK (amount >= 0),      -- NULL on a voided-first row
    currency                 text,
    payment_method           text,                                 -- never logged
    stripe_payment_intent_id text        UNIQUE,
    payment_id               text,                                 -- set once charged
    refund_id                text,
    failure_reason           text,
    -- bumped by every change: writers compare-and-set on it, never holding a row lock
    -- across a gateway call
    version                  integer     NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- Operators look here for payments stuck in "maybe charged".
CREATE INDEX payments_processing ON payments (updated_at) WHERE status = 'processing';
