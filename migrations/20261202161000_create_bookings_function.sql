-- migrate:up

-- The booking write of one or several CreateBooking requests for one event, in one round trip.
--
-- Why a server-side function and not data-modifying CTEs: called alone (autocommit) the whole write is one
-- statement and its own transaction, so there is no BEGIN and no COMMIT round trip and the event row's lock is
-- held for server time only; each statement inside sees a fresh snapshot (READ COMMITTED, volatile function),
-- so the overlap check runs after the guest locks as it must (in one CTE statement every part shares the
-- snapshot taken before the locks were granted); and the seats are given out first-fit in arrival order under
-- the event row's lock, which a set-based UPDATE cannot express.
--
-- What stays in Python (services/booking/service.py): every decision a read of the event can make, the
-- messages' contents and the reminders' offsets. What is here: the invariants — a request id is claimed once,
-- one guest's bookings are serialised by the guest lock, no overlapping confirmed bookings, one active booking
-- per guest and event, never more seats than capacity (the conditional UPDATE, with the CHECK as backstop).
--
-- Requests are given in arrival order, one per guest (the caller guarantees it). Each gets one outcome:
--   BOOKED          booking inserted, its outbox rows, reminders and request id record written
--   REPLAY          its request id was already claimed: the caller replays it in a transaction of its own
--   ALREADY_BOOKED  the guest holds a confirmed booking of the event
--   OVERLAP         the guest holds a confirmed booking of an overlapping event (other_booking)
--   NO_SEATS        not enough seats left when its turn came (seats_available: what was left)
--   CLOSED          the event is no longer scheduled, or has started
--   MOVED           the event's times are not the ones the caller's checks and reminders used
-- A refused request leaves nothing behind (its request id claim is removed, so a retry runs afresh) and never
-- fails another request of the batch.
--
-- The outbox rows come as a jsonb array of objects keyed like notify.outbox's columns plus "i" (the request's
-- 1-based position); they are read with jsonb_populate_recordset over the table's row type, so a new outbox
-- column is one more key from Python and one more name in the INSERT below.
CREATE FUNCTION booking.create_bookings(
    p_event_id        uuid,
    p_now             timestamptz,
    p_start           timestamptz,
    p_end             timestamptz,
    p_booking_ids     uuid[],
    p_guest_ids       text[],
    p_guest_names     text[],
    p_seats           integer[],
    p_request_ids     uuid[],      -- NULL element: no request id
    p_request_hashes  bytea[],
    p_outbox          jsonb,
    p_reminder_kinds  text[],
    p_reminder_offsets float8[]    -- seconds before the start
) RETURNS TABLE (i integer, outcome text, other_booking uuid, seats_available integer, renamed boolean)
    LANGUAGE plpgsql AS $$
DECLARE
    n           integer := coalesce(cardinality(p_guest_ids), 0);
    outcomes    text[] := array_fill(NULL::text, ARRAY[n]);
    others      uuid[] := array_fill(NULL::uuid, ARRAY[n]);
    v_renamed   text[];
    v_free      integer;
    v_state     text;
    v_start     timestamptz;
    v_end       timestamptz;
    v_total     integer := 0;
    v_other     uuid;
    k           integer;
BEGIN
    -- 1. Request ids, in arrival order. A key another transaction holds makes this wait for it (then REPLAY).
    FOR k IN 1 .. n LOOP
        IF p_request_ids[k] IS NOT NULL THEN
            INSERT INTO idem.requests (caller_id, method, request_id, request_hash)
            VALUES (p_guest_ids[k], 'CreateBooking', p_request_ids[k], p_request_hashes[k])
            ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                outcomes[k] := 'REPLAY';
            END IF;
        END IF;
    END LOOP;

    -- 2. The guests' locks, in key order (two batches sharing guests can't deadlock), then their snapshots
    --    (account.users rows before the event row, as every other writer does).
    PERFORM pg_advisory_xact_lock(45068, g.key)  -- 0x0B00C: services/booking/repository.py GUEST_LOCK_CLASS
    FROM (
        SELECT DISTINCT hashtext(u.guest) AS key
        FROM unnest(p_guest_ids) WITH ORDINALITY AS u(guest, pos)
        WHERE outcomes[u.pos::integer] IS NULL
        ORDER BY 1
    ) AS g;

    WITH before AS (
        SELECT a.id FROM account.users a WHERE a.id = ANY (p_guest_ids)
    ), upserted AS (
        INSERT INTO account.users (id, display_name)
        SELECT u.guest, u.name
        FROM unnest(p_guest_ids, p_guest_names) WITH ORDINALITY AS u(guest, name, pos)
        WHERE outcomes[u.pos::integer] IS NULL
        ORDER BY u.guest
        ON CONFLICT (id) DO UPDATE
            SET display_name = EXCLUDED.display_name, update_time = now()
            WHERE account.users.display_name IS DISTINCT FROM EXCLUDED.display_name
        RETURNING account.users.id
    )
    SELECT array_agg(up.id) INTO v_renamed FROM upserted up WHERE up.id IN (SELECT b.id FROM before b);

    -- 3. The rules the guest lock makes exact (this statement's snapshot is taken after the locks were granted).
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN outcomes[k] IS NOT NULL;
        IF EXISTS (
            SELECT 1 FROM booking.bookings b
            WHERE b.event_id = p_event_id AND b.guest_id = p_guest_ids[k] AND b.state = 'CONFIRMED'
        ) THEN
            outcomes[k] := 'ALREADY_BOOKED';
            CONTINUE;
        END IF;
        SELECT b.id INTO v_other
        FROM booking.bookings b
        JOIN event.events e ON e.id = b.event_id
        WHERE b.guest_id = p_guest_ids[k] AND b.state = 'CONFIRMED' AND b.event_id <> p_event_id
          AND e.state = 'SCHEDULED' AND e.start_time < p_end AND e.end_time > p_start
        ORDER BY e.start_time, b.id
        LIMIT 1;
        IF FOUND THEN
            outcomes[k] := 'OVERLAP';
            others[k] := v_other;
        END IF;
    END LOOP;

    -- 4. The seats, first-fit in arrival order, under the event row's lock (held from here to COMMIT).
    IF EXISTS (SELECT 1 FROM generate_series(1, n) AS s(pos) WHERE outcomes[s.pos::integer] IS NULL) THEN
        SELECT e.capacity - e.seats_taken - e.seats_held, e.state, e.start_time, e.end_time
        INTO v_free, v_state, v_start, v_end
        FROM event.events e WHERE e.id = p_event_id
        FOR NO KEY UPDATE;
        FOR k IN 1 .. n LOOP
            CONTINUE WHEN outcomes[k] IS NOT NULL;
            IF v_state IS DISTINCT FROM 'SCHEDULED' OR v_start <= p_now THEN
                outcomes[k] := 'CLOSED';
            ELSIF v_start <> p_start OR v_end <> p_end THEN
                outcomes[k] := 'MOVED';
            ELSIF p_seats[k] <= v_free THEN
                outcomes[k] := 'BOOKED';
                v_free := v_free - p_seats[k];
                v_total := v_total + p_seats[k];
            ELSE
                outcomes[k] := 'NO_SEATS';
            END IF;
        END LOOP;
    END IF;

    -- 5. What the booked requests write.
    IF v_total > 0 THEN
        INSERT INTO booking.bookings (id, event_id, guest_id, seats, state, create_time)
        SELECT u.id, p_event_id, u.guest, u.seats, 'CONFIRMED', p_now
        FROM unnest(p_booking_ids, p_guest_ids, p_seats) WITH ORDINALITY AS u(id, guest, seats, pos)
        WHERE outcomes[u.pos::integer] = 'BOOKED';

        -- booked: no longer waiting
        UPDATE booking.waitlist w SET state = 'LEFT', update_time = p_now
        FROM unnest(p_guest_ids) WITH ORDINALITY AS u(guest, pos)
        WHERE outcomes[u.pos::integer] = 'BOOKED'
          AND w.event_id = p_event_id AND w.guest_id = u.guest AND w.state = 'WAITING';

        INSERT INTO notify.outbox (dedupe_key, template_id, recipients, params, request_id, traceparent)
        SELECT o.dedupe_key, o.template_id, o.recipients, o.params, o.request_id, o.traceparent
        FROM jsonb_array_elements(p_outbox) AS j(item)
        CROSS JOIN LATERAL jsonb_populate_record(NULL::notify.outbox, j.item) AS o
        WHERE outcomes[(j.item ->> 'i')::integer] = 'BOOKED'
        ON CONFLICT (dedupe_key) DO NOTHING;

        -- The 24 h / 1 h reminders; one whose time has passed is SKIPPED, one already SENT stays sent.
        INSERT INTO notify.reminders (event_id, kind, recipient_id, due_time, state)
        SELECT p_event_id, r.kind, u.guest, p_start - make_interval(secs => r.seconds),
               CASE WHEN p_start - make_interval(secs => r.seconds) > p_now THEN 'PENDING' ELSE 'SKIPPED' END
        FROM unnest(p_guest_ids) WITH ORDINALITY AS u(guest, pos)
        CROSS JOIN unnest(p_reminder_kinds, p_reminder_offsets) AS r(kind, seconds)
        WHERE outcomes[u.pos::integer] = 'BOOKED'
        ON CONFLICT (event_id, kind, recipient_id) DO UPDATE
            SET due_time = EXCLUDED.due_time, state = EXCLUDED.state
            WHERE notify.reminders.state <> 'SENT';

        UPDATE idem.requests q SET resource_name = 'bookings/' || u.id
        FROM unnest(p_booking_ids, p_guest_ids, p_request_ids) WITH ORDINALITY AS u(id, guest, request_id, pos)
        WHERE outcomes[u.pos::integer] = 'BOOKED' AND u.request_id IS NOT NULL
          AND q.caller_id = u.guest AND q.method = 'CreateBooking' AND q.request_id = u.request_id;

        -- THE seat statement: the arbiter (the lock above makes it match; the CHECK is the backstop).
        UPDATE event.events e SET seats_taken = e.seats_taken + v_total
        WHERE e.id = p_event_id AND e.state = 'SCHEDULED' AND e.start_time > p_now
          AND e.seats_taken + e.seats_held + v_total <= e.capacity;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'seat update for event % matched no row', p_event_id;
        END IF;
    END IF;

    -- 6. A refused request leaves no claim: its retry runs afresh.
    DELETE FROM idem.requests q
    USING unnest(p_guest_ids, p_request_ids) WITH ORDINALITY AS u(guest, request_id, pos)
    WHERE outcomes[u.pos::integer] NOT IN ('BOOKED', 'REPLAY') AND u.request_id IS NOT NULL
      AND q.caller_id = u.guest AND q.method = 'CreateBooking' AND q.request_id = u.request_id;

    RETURN QUERY
    SELECT s.pos::integer, outcomes[s.pos::integer], others[s.pos::integer], v_free,
           coalesce(p_guest_ids[s.pos::integer] = ANY (v_renamed), false)
    FROM generate_series(1, n) AS s(pos);
END;
$$;

-- migrate:down
DROP FUNCTION booking.create_bookings;
