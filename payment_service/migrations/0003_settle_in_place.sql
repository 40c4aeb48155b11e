-- Settling a payment (its status from processing to what the gateway decided) was an
-- update that moved the row to a new place, with a new entry in every index: the status
-- is in the predicate of `payments_processing`, an index no statement of the service
-- uses. Without it, and with room left in each page, the settle is a HOT update: no
-- index entry at all. A payment stays processing only until its saga's payment timeout
-- settles it (refund or cancel); an operator can still find such rows with
-- `SELECT ... FROM payments WHERE status = 'processing'`, a scan of the table.
DROP INDEX payments_processing;
ALTER TABLE payments SET (fillfactor = 80);  -- applies to pages written from now on
