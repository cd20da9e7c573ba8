-- migrate:up

-- Seats held for waitlist offers count against capacity exactly like booked
-- ones: the booking domain's one conditional seat statement checks
-- seats_taken + seats_held + n <= capacity, and this CHECK is its backstop.
ALTER TABLE event.events ADD COLUMN seats_held integer NOT NULL DEFAULT 0;
ALTER TABLE event.events DROP CONSTRAINT events_seats_within_capacity;
ALTER TABLE event.events ADD CONSTRAINT events_seats_within_capacity
    CHECK (seats_taken >= 0 AND seats_held >= 0 AND seats_taken + seats_held <= capacity);

-- The waitlist: one row per guest per join. `seq` is the join order (offers go
-- to the first WAITING entry whose seats fit). An OFFERED entry holds `seats`
-- of event.events.seats_held until it is claimed, declined, left or expires.
CREATE TABLE booking.waitlist (
    id                uuid PRIMARY KEY,
    seq               bigint GENERATED ALWAYS AS IDENTITY,
    event_id          uuid NOT NULL REFERENCES event.events (id),
    guest_id          text NOT NULL REFERENCES account.users (id),
    seats             integer NOT NULL CHECK (seats BETWEEN 1 AND 100),
    state             text NOT NULL DEFAULT 'WAITING'
                      CHECK (state IN ('WAITING', 'OFFERED', 'CLAIMED', 'DECLINED', 'EXPIRED', 'LEFT', 'CLOSED')),
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL,
    offer_time        timestamptz,
    offer_expire_time timestamptz,
    offer_warned      boolean NOT NULL DEFAULT false,
    booking_id        uuid REFERENCES booking.bookings (id),
    CONSTRAINT waitlist_offer_has_deadline CHECK (state <> 'OFFERED' OR offer_expire_time IS NOT NULL),
    CONSTRAINT waitlist_claim_has_booking CHECK ((state = 'CLAIMED') = (booking_id IS NOT NULL))
);

-- One open entry (waiting or offered) per guest per event.
CREATE UNIQUE INDEX waitlist_one_open_per_guest ON booking.waitlist (event_id, guest_id)
    WHERE state IN ('WAITING', 'OFFERED');
-- The queue of an event, in join order.
CREATE INDEX waitlist_queue ON booking.waitlist (event_id, seq) WHERE state IN ('WAITING', 'OFFERED');
-- The offer sweep: open offers by deadline.
CREATE INDEX waitlist_offers_due ON booking.waitlist (offer_expire_time) WHERE state = 'OFFERED';
-- GetWaitlistEntry / a guest's entries.
CREATE INDEX waitlist_by_guest ON booking.waitlist (guest_id, event_id);

-- Attendance, marked by the host on confirmed bookings of a held event.
ALTER TABLE booking.bookings ADD COLUMN attendance text
    CHECK (attendance IN ('ATTENDED', 'NO_SHOW'));
ALTER TABLE booking.bookings ADD COLUMN attendance_time timestamptz;
CREATE INDEX bookings_attendance_by_guest ON booking.bookings (guest_id) WHERE attendance IS NOT NULL;

-- migrate:down
DROP INDEX booking.bookings_attendance_by_guest;
ALTER TABLE booking.bookings DROP COLUMN attendance_time;
ALTER TABLE booking.bookings DROP COLUMN attendance;
DROP TABLE booking.waitlist;
ALTER TABLE event.events DROP CONSTRAINT events_seats_within_capacity;
ALTER TABLE event.events ADD CONSTRAINT events_seats_within_capacity CHECK (seats_taken BETWEEN 0 AND capacity);
ALTER TABLE event.events DROP COLUMN seats_held;
