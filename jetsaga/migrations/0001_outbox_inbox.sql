-- Tables every service has: the transactional outbox and the inbox of consumed messages.

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    subject      text        NOT NULL,
    msg_id       text        NOT NULL,
    payload      bytea       NOT NULL,
    saga_id      text        NOT NULL,
    causation_id text        NOT NULL DEFAULT '',
    traceparent  text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per consumed logical message (consumer + subject:orderId), written in the same
-- transaction as the message's effect: a unique-key hit means "already done".
CREATE TABLE processed_messages (
    consumer     text        NOT NULL,
    msg_key      text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, msg_key)
);
CREATE INDEX processed_messages_age ON processed_messages (processed_at);
