-- migrate:up

-- Text search over event and film titles (ListEvents `query`).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- One schema per domain. Each domain's tables are written only by that
-- domain's repository code; invariants that span domains (seats vs bookings,
-- cancellation cascades, review eligibility) hold inside single transactions.

------------------------------------------------------------------------------
-- account: snapshot of the users we have seen (from their JWT), so hosts can
-- see guests' names.
CREATE SCHEMA account;

CREATE TABLE account.users (
    id           text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);

------------------------------------------------------------------------------
-- event
CREATE SCHEMA event;

CREATE TABLE event.events (
    id            uuid PRIMARY KEY,
    host_id       text NOT NULL REFERENCES account.users (id),
    film_id       text NOT NULL CHECK (length(film_id) BETWEEN 1 AND 100),
    film_title    text NOT NULL CHECK (length(film_title) BETWEEN 1 AND 300),
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    start_time    timestamptz NOT NULL,
    end_time      timestamptz NOT NULL,
    time_zone     text NOT NULL CHECK (length(time_zone) BETWEEN 1 AND 64),
    place_name    text NOT NULL CHECK (length(place_name) BETWEEN 1 AND 200),
    place_address text NOT NULL CHECK (length(place_address) BETWEEN 1 AND 500),
    place_city    text NOT NULL CHECK (length(place_city) BETWEEN 1 AND 100),
    capacity      integer NOT NULL CHECK (capacity BETWEEN 1 AND 1000),
    -- Seats held by confirmed bookings. Changed only by the conditional
    -- UPDATE in the booking transaction; this CHECK is the backstop that makes
    -- overselling impossible even for a buggy statement.
    seats_taken   integer NOT NULL DEFAULT 0,
    visibility    text NOT NULL CHECK (visibility IN ('PUBLIC', 'PRIVATE')),
    state         text NOT NULL DEFAULT 'SCHEDULED'
                  CHECK (state IN ('SCHEDULED', 'CANCELLED', 'COMPLETED')),
    -- Capability for private events; rotating it invalidates old links.
    invite_token  text NOT NULL CHECK (length(invite_token) BETWEEN 16 AND 64),
    -- Bumped on every change; the etag is derived from it.
    version       bigint NOT NULL DEFAULT 1,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    cancel_time   timestamptz,
    complete_time timestamptz,
    CONSTRAINT events_seats_within_capacity CHECK (seats_taken BETWEEN 0 AND capacity),
    CONSTRAINT events_ends_after_start CHECK (end_time > start_time),
    CONSTRAINT events_cancel_time_iff_cancelled CHECK ((state = 'CANCELLED') = (cancel_time IS NOT NULL)),
    CONSTRAINT events_complete_time_iff_completed CHECK ((state = 'COMPLETED') = (complete_time IS NOT NULL))
);

-- ListEvents is keyset-paginated on (start_time, id) over public scheduled
-- events; one partial index per common filter.
CREATE INDEX events_listed_by_start ON event.events (start_time, id)
    WHERE visibility = 'PUBLIC' AND state = 'SCHEDULED';
CREATE INDEX events_listed_by_city ON event.events (lower(place_city), start_time, id)
    WHERE visibility = 'PUBLIC' AND state = 'SCHEDULED';
CREATE INDEX events_listed_by_film ON event.events (film_id, start_time, id)
    WHERE visibility = 'PUBLIC' AND state = 'SCHEDULED';
CREATE INDEX events_by_host ON event.events (host_id, start_time, id);
CREATE INDEX events_listed_text ON event.events
    USING gin (lower(title || ' ' || film_title) gin_trgm_ops)
    WHERE visibility = 'PUBLIC' AND state = 'SCHEDULED';

-- Who took part in a held event: the host and the guests whose booking was
-- confirmed when the host completed it. Written once, by CompleteEvent; review
-- eligibility is checked against it.
CREATE TABLE event.participants (
    event_id uuid NOT NULL REFERENCES event.events (id),
    user_id  text NOT NULL REFERENCES account.users (id),
    role     text NOT NULL CHECK (role IN ('HOST', 'GUEST')),
    PRIMARY KEY (event_id, user_id)
);

------------------------------------------------------------------------------
-- booking
CREATE SCHEMA booking;

CREATE TABLE booking.bookings (
    id          uuid PRIMARY KEY,
    event_id    uuid NOT NULL REFERENCES event.events (id),
    guest_id    text NOT NULL REFERENCES account.users (id),
    seats       integer NOT NULL CHECK (seats BETWEEN 1 AND 100),
    state       text NOT NULL DEFAULT 'CONFIRMED' CHECK (state IN ('CONFIRMED', 'CANCELLED')),
    create_time timestamptz NOT NULL DEFAULT now(),
    cancel_time timestamptz,
    CONSTRAINT bookings_cancel_time_iff_cancelled CHECK ((state = 'CANCELLED') = (cancel_time IS NOT NULL))
);

-- One active booking per guest per event.
CREATE UNIQUE INDEX bookings_one_active_per_guest ON booking.bookings (event_id, guest_id)
    WHERE state = 'CONFIRMED';
-- A guest's bookings (ListBookings, overlap check).
CREATE INDEX bookings_by_guest ON booking.bookings (guest_id, create_time, id);
-- An event's guest list.
CREATE INDEX bookings_by_event ON booking.bookings (event_id, create_time, id)
    WHERE state = 'CONFIRMED';

------------------------------------------------------------------------------
-- idem: AIP-155 request ids. The row is inserted first in the transaction of
-- the write it guards, so concurrent retries wait for the first one and then
-- replay its result; a failed first call leaves no row.
CREATE SCHEMA idem;

CREATE TABLE idem.requests (
    caller_id     text NOT NULL,
    method        text NOT NULL,
    request_id    uuid NOT NULL,
    -- sha256 of the canonical request; same id + different hash is refused.
    request_hash  bytea NOT NULL,
    -- The resource the first call created or changed, e.g. bookings/{id}.
    resource_name text,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_id, method, request_id)
);
CREATE INDEX requests_by_age ON idem.requests (create_time);

------------------------------------------------------------------------------
-- review
CREATE SCHEMA review;

CREATE TABLE review.reviews (
    id              uuid PRIMARY KEY,
    event_id        uuid NOT NULL REFERENCES event.events (id),
    author_id       text NOT NULL REFERENCES account.users (id),
    subject_type    text NOT NULL CHECK (subject_type IN ('EVENT', 'HOST', 'GUEST')),
    subject_user_id text REFERENCES account.users (id),
    rating          smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    text            text NOT NULL DEFAULT '' CHECK (length(text) <= 2000),
    version         bigint NOT NULL DEFAULT 1,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reviews_subject_user_iff_person CHECK ((subject_type = 'EVENT') = (subject_user_id IS NULL)),
    CONSTRAINT reviews_nobody_reviews_themselves CHECK (subject_user_id IS DISTINCT FROM author_id)
);

-- One review per (author, event, subject).
CREATE UNIQUE INDEX reviews_one_per_subject
    ON review.reviews (author_id, event_id, subject_type, coalesce(subject_user_id, ''));
CREATE INDEX reviews_by_event ON review.reviews (event_id, create_time DESC, id DESC);
CREATE INDEX reviews_by_subject ON review.reviews (subject_user_id, create_time DESC, id DESC)
    WHERE subject_user_id IS NOT NULL;

-- Aggregates, updated in the review's transaction: reading a rating is O(1).
CREATE TABLE review.user_ratings (
    user_id      text NOT NULL REFERENCES account.users (id),
    role         text NOT NULL CHECK (role IN ('HOST', 'GUEST')),
    rating_sum   bigint NOT NULL DEFAULT 0 CHECK (rating_sum >= 0),
    rating_count integer NOT NULL DEFAULT 0 CHECK (rating_count >= 0),
    PRIMARY KEY (user_id, role)
);

CREATE TABLE review.event_ratings (
    event_id     uuid PRIMARY KEY REFERENCES event.events (id),
    rating_sum   bigint NOT NULL DEFAULT 0 CHECK (rating_sum >= 0),
    rating_count integer NOT NULL DEFAULT 0 CHECK (rating_count >= 0)
);

------------------------------------------------------------------------------
-- notify: the transactional outbox and reminders, relayed to the
-- notification service by the worker.
CREATE SCHEMA notify;

CREATE TABLE notify.outbox (
    id                bigserial PRIMARY KEY,
    -- Sent with the message; the notification service drops repeats, so a
    -- retry after a lost answer never sends twice.
    dedupe_key        text NOT NULL UNIQUE CHECK (length(dedupe_key) BETWEEN 1 AND 200),
    template_id       text NOT NULL,
    recipients        text[] NOT NULL CHECK (cardinality(recipients) > 0),
    params            jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- x-request-id of the RPC that wrote the row, propagated on send.
    request_id        text,
    state             text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'SENT', 'DEAD')),
    attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_time timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    create_time       timestamptz NOT NULL DEFAULT now(),
    sent_time         timestamptz
);
CREATE INDEX outbox_due ON notify.outbox (next_attempt_time, id) WHERE state = 'PENDING';

-- Wake relay workers at commit (LISTEN cowatch_outbox); they also poll.
CREATE FUNCTION notify.outbox_wake() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cowatch_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_wake AFTER INSERT ON notify.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify.outbox_wake();

-- Reminders 24 h and 1 h before the start, exactly once per
-- (event, kind, recipient). Moved when the start changes, dropped on cancel;
-- SKIPPED when the due time had passed when the row was written.
CREATE TABLE notify.reminders (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL REFERENCES event.events (id),
    kind         text NOT NULL CHECK (kind IN ('24H', '1H')),
    recipient_id text NOT NULL REFERENCES account.users (id),
    due_time     timestamptz NOT NULL,
    state        text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'SENT', 'SKIPPED')),
    sent_time    timestamptz,
    CONSTRAINT reminders_once UNIQUE (event_id, kind, recipient_id)
);
CREATE INDEX reminders_due ON notify.reminders (due_time, id) WHERE state = 'PENDING';

-- migrate:down
DROP SCHEMA notify CASCADE;
DROP SCHEMA review CASCADE;
DROP SCHEMA idem CASCADE;
DROP SCHEMA booking CASCADE;
DROP SCHEMA event CASCADE;
DROP SCHEMA account CASCADE;
