-- A reservation's id is derived from its order's id (`domain.reservation_id_for`, a UUIDv5),
-- and the order id is the table's primary key: two rows cannot share a reservation id. No
-- statement looks a reservation up by its id either. The unique index on it took an entry
-- for every row written, confirms and releases included (an update that moves the row).
ALTER TABLE reservations DROP CONSTRAINT reservations_reservation_id_key;
