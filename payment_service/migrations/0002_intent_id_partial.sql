-- A payment row is opened before its intent exists. The column's UNIQUE constraint indexed
-- that NULL too, an entry per order that no lookup asks for. The partial index keeps
-- intent ids unique.
-- (On a large existing table, CREATE INDEX blocks writes to payments while it builds.)
CREATE UNIQUE INDEX payments_intent_id_key ON payments (stripe_payment_intent_id)
    WHERE stripe_payment_intent_id IS NOT NULL;
ALTER TABLE payments DROP CONSTRAINT payments_stripe_payment_intent_id_key;
