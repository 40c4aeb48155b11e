-- Stock per product and the reservations that hold it (SPEC §3).

-- The three buckets of a product's stock. Messages only move quantities between them;
-- PUT /inventory/{productId} sets `available`. None may go negative.
CREATE TABLE stock (
    product_id text        PRIMARY KEY,
    available  bigint      NOT NULL CHECK (available >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold       bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- room for HOT updates: every order updates its products twice

-- One row per order that reserved, or whose release came first. A tombstone (no
-- reservation id, no items, status released) makes a late orders.created reserve nothing.
CREATE TABLE reservations (
    order_id       text        PRIMARY KEY,
    reservation_id uuid        UNIQUE,
    status         text        NOT NULL CHECK (status IN ('reserved', 'released', 'confirmed')),
    expires_at     timestamptz,
    reason         text,       -- why it was released: the request's reason, or 'expired'
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (reservation_id IS NOT NULL OR status = 'released'),
    CHECK (status <> 'reserved' OR expires_at IS NOT NULL)
);
-- The expiry sweep and the active-reservations gauge read only open reservations.
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'reserved';

-- What a reservation holds, quantities summed per product.
CREATE TABLE reservation_items (
    order_id   text   NOT NULL REFERENCES reservations (order_id),
    product_id text   NOT NULL,
    quantity   bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
