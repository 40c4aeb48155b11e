-- Orders, their sagas, the sagas' append-only history, and exact status counts.

CREATE TABLE orders (
    order_id        text        PRIMARY KEY,
    customer_id     text        NOT NULL,
    items           jsonb       NOT NULL,
    total_amount    bigint      NOT NULL CHECK (total_amount >= 0),
    currency        text        NOT NULL,
    idempotency_key text        UNIQUE,
    request_hash    text        NOT NULL,
    status          text        NOT NULL DEFAULT 'PENDING',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX orders_newest ON orders (created_at DESC, order_id DESC);
CREATE INDEX orders_customer_newest ON orders (customer_id, created_at DESC, order_id DESC);
CREATE INDEX orders_status_newest ON orders (status, created_at DESC, order_id DESC);

-- The saga's state is one encoded value (order_service.saga.Saga); the columns beside it
-- exist to be queried: the timeout sweep by deadline, the metrics by status and time.
CREATE TABLE sagas (
    order_id         text        PRIMARY KEY REFERENCES orders (order_id),
    status           text        NOT NULL,
    state            bytea       NOT NULL,
    deadline         timestamptz,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    compensating_at  timestamptz,
    steps            integer     NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX sagas_due ON sagas (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX sagas_in_flight ON sagas (started_at)
    WHERE status NOT IN ('COMPLETED', 'FAILED', 'COMPENSATED');
CREATE INDEX sagas_ended ON sagas (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX sagas_compensating ON sagas (compensating_at) WHERE compensating_at IS NOT NULL;

CREATE TABLE saga_history (
    order_id    text        NOT NULL,
    seq         integer     NOT NULL,
    at          timestamptz NOT NULL,
    saga_status text        NOT NULL,
    event       text        NOT NULL,
    detail      text,
    PRIMARY KEY (order_id, seq)
);

-- Order counts by status, spread over slots so concurrent writers rarely touch one row.
CREATE TABLE order_status_counts (
    status text    NOT NULL,
    slot   integer NOT NULL,
    n      bigint  NOT NULL,
    PRIMARY KEY (status, slot)
);
