-- Most orders come without an Idempotency-Key. The column's UNIQUE constraint indexed their
-- NULLs too: an entry for every order at intake and another at each update of its row, for
-- a lookup that only ever asks for a key. The partial index keeps keys unique, and
-- `ON CONFLICT DO NOTHING` (no target) still takes it as an arbiter.
-- (On a large existing table, CREATE INDEX blocks writes to orders while it builds.)
CREATE UNIQUE INDEX orders_idempotency_key ON orders (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE orders DROP CONSTRAINT orders_idempotency_key_key;
