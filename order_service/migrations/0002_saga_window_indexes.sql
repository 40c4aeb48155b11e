-- The order worker counts, every 5 s, the sagas that ended or began compensating in the last
-- five minutes, by status (saga_success_rate, saga_compensation_success_rate). With the
-- status in these indexes the counts read the index alone; without it they read every saga
-- row of the window: with 105,000 sagas in it (after 70 s each at 250, 500 and 750/s), a
-- refresh took 54-78 ms of the machine's CPU, and 30-47 ms with the status included.
-- (On a large existing table, CREATE INDEX blocks writes to sagas while it builds.)
CREATE INDEX sagas_ended_status ON sagas (ended_at) INCLUDE (status)
    WHERE ended_at IS NOT NULL;
DROP INDEX sagas_ended;
CREATE INDEX sagas_compensating_status ON sagas (compensating_at) INCLUDE (status)
    WHERE compensating_at IS NOT NULL;
DROP INDEX sagas_compensating;
