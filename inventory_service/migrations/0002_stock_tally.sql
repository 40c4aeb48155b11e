-- Reserved and sold stock, counted apart from the product's `stock` row.
--
-- A reserve batch locks the `stock` row of each product it takes from, and holds the lock
-- until its commit. Confirming an order moves its quantities from reserved to sold and
-- leaves `available` alone, so it needs no such lock: with all three buckets in one row,
-- the confirm batches (nearly every order) and the reserve batches took turns on the rows
-- of the products that sell most. At 1,000 orders/s, a sample of pg_stat_activity every
-- 50 ms found on average 0.58 inventory transactions waiting on those row locks.
--
-- Each batch adds its net changes of `reserved` and `sold` to one of a few slots of the
-- product, chosen at random, so two batches rarely update one row either. A slot can go
-- below zero (a reservation counted in one slot is sold from another); the sums over a
-- product's slots cannot. The view `stock_levels` reads the three buckets.
CREATE TABLE stock_tally (
    product_id text    NOT NULL,
    slot       integer NOT NULL,
    reserved   bigint  NOT NULL DEFAULT 0,
    sold       bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (product_id, slot)
) WITH (fillfactor = 70);  -- room for HOT updates

INSERT INTO stock_tally (product_id, slot, reserved, sold)
SELECT product_id, 0, reserved, sold FROM stock WHERE reserved <> 0 OR sold <> 0;

ALTER TABLE stock DROP COLUMN reserved, DROP COLUMN sold;

CREATE VIEW stock_levels AS
SELECT s.product_id, s.available,
       coalesce(t.reserved, 0)::bigint AS reserved, coalesce(t.sold, 0)::bigint AS sold
FROM stock s
LEFT JOIN (SELECT product_id, sum(reserved) AS reserved, sum(sold) AS sold
           FROM stock_tally GROUP BY product_id) t USING (product_id);
