-- migrate:up

-- The worker's retention job deletes sent and dead outbox rows by age in
-- small batches (idem.requests already has requests_by_age).
CREATE INDEX outbox_sent_by_age ON notify.outbox (sent_time) WHERE state = 'SENT';
CREATE INDEX outbox_dead_by_age ON notify.outbox (create_time) WHERE state = 'DEAD';

-- migrate:down
DROP INDEX notify.outbox_dead_by_age;
DROP INDEX notify.outbox_sent_by_age;
