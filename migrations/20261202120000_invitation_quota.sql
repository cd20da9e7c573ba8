-- migrate:up

-- SendInvitations quota: invitations (recipients) each host sent per UTC day, counted in the same transaction as
-- the invitation outbox row, so the limit holds across any number of EventService replicas. Rows older than the
-- previous day are deleted by the next charge of the same host.
CREATE TABLE event.invitation_quota (
    host_id text    NOT NULL REFERENCES account.users (id),
    day     date    NOT NULL,
    sent    integer NOT NULL CHECK (sent >= 0),
    PRIMARY KEY (host_id, day)
);

-- migrate:down

DROP TABLE event.invitation_quota;
