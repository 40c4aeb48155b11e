-- saga_success_rate is COMPLETED among the sagas that ended in the last five minutes. Read
-- from the sagas themselves, every refresh (every 5 s, by every order worker) read an index
-- entry per saga in the window: 300,000 at 1,000 orders/s, 30-40 ms of a backend's CPU
-- when the table is freshly vacuumed and more under load, and that index took an entry for
-- every saga that ended. The statement that ends sagas now also counts them here, by the
-- second they ended and their order's status, in slots as order_status_counts does, and
-- the refresh sums at most a few thousand rows.
CREATE TABLE saga_ends (
    second bigint  NOT NULL,  -- the epoch second of the sagas' ended_at
    status text    NOT NULL,  -- the order's status: CONFIRMED, CANCELLED or FAILED
    slot   integer NOT NULL,
    n      bigint  NOT NULL,
    PRIMARY KEY (second, status, slot)
);
INSERT INTO saga_ends (second, status, slot, n)
SELECT floor(extract(epoch FROM ended_at))::bigint,
       CASE status WHEN 'COMPLETED' THEN 'CONFIRMED' WHEN 'COMPENSATED' THEN 'CANCELLED'
                   ELSE 'FAILED' END,
       0, count(*)
FROM sagas WHERE ended_at > now() - interval '10 minutes'
GROUP BY 1, 2;
DROP INDEX sagas_ended_status;
