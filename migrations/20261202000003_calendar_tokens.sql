-- migrate:up

-- Per-user private calendar feeds: the URL carries a random token (not the
-- API token), stored here only as its SHA-256; rotating replaces it.
CREATE TABLE event.calendar_tokens (
    user_id     text PRIMARY KEY REFERENCES account.users (id),
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    create_time timestamptz NOT NULL
);

-- migrate:down
DROP TABLE event.calendar_tokens;
