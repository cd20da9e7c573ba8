"""Group commit of CreateBooking on one event (services/booking/group_commit.py, booking.create_bookings).

Concurrent calls for one event are written in batches, one statement and one transaction per batch. What must
hold whatever the batching: exactly the capacity is sold, every refusal carries its own reason (already booked,
overlap, sold out, bad input), request-id replays answer with the same booking, and no request's refusal fails
another. Real server, real gRPC, real PostgreSQL; the partial acceptance rule (first fit, in arrival order) is
checked on the function itself, where the batch's order is known.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.booking import repository as bookings
from services.booking.app import BookingApp
from services.common.auth import TokenVerifier
from services.common.clock import ManualClock
from services.notification import outbox
from tests.support.api import Caller, new_caller, rich_error
from tests.support.bookings import book, new_event, seat_counts, uid
from tests.support.servers import herd_booking_server

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

CHANNELS = 4
Result = booking_pb2.Booking | str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(
    database_url: str, clock: ManualClock, verifier: TokenVerifier
) -> AsyncIterator[tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]]]:
    async with herd_booking_server(
        database_url, clock, verifier, channels=CHANNELS, db_pool_max_size=10, max_concurrent_rpcs=4000
    ) as served:
        yield served


async def outcome(call: object) -> Result:
    try:
        return await call  # type: ignore[misc, no-any-return]
    except grpc.aio.AioRpcError as exc:
        return rich_error(exc).reason or exc.code().name


async def test_a_mixed_herd_on_one_event_gets_each_its_own_answer(
    served: tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    """Valid guests, guests already booked, guests with an overlapping booking, request-id retries sent three
    times at once, bad input — all at once on one event with fewer seats than asked for."""
    app, stubs = served
    capacity = 120
    event = await new_event(events, clock, capacity=capacity + 40, start_in=timedelta(days=70))
    other = await new_event(events, clock, capacity=100, start_in=timedelta(days=70, minutes=30))
    booked_before = [new_caller() for _ in range(10)]
    overlapping = [new_caller() for _ in range(10)]
    for g in booked_before:
        await stubs[0].CreateBooking(book(event, 4), metadata=g.metadata)
    for g in overlapping:
        await stubs[0].CreateBooking(book(other, 1), metadata=g.metadata)
    # 40 seats went to booked_before: `capacity` seats are left for the herd.
    fresh = [new_caller() for _ in range(300)]
    retriers = [new_caller() for _ in range(20)]
    retry_ids = [str(uuid.uuid4()) for _ in retriers]
    rng = random.Random(14)
    wanted = [rng.randint(1, 3) for _ in fresh]

    calls: list[tuple[str, int, tuple[booking_service_pb2.CreateBookingRequest, Caller]]] = []  # kind, index, call
    for i, g in enumerate(overlapping):
        calls.append(("overlap", i, (book(event, 1), g)))
    for i, g in enumerate(booked_before):
        calls.append(("already", i, (book(event, 1), g)))
    for i, g in enumerate(fresh):
        calls.append(("fresh", i, (book(event, wanted[i]), g)))
        if i % 15 == 0:
            j = i // 15
            for _ in range(3):
                calls.append(("retry", j, (book(event, 2, request_id=retry_ids[j]), retriers[j])))
        if i % 50 == 0:
            calls.append(("invalid", i, (book(event, 1000), new_caller())))

    async def one(n: int, call: tuple[booking_service_pb2.CreateBookingRequest, Caller]) -> Result:
        request, caller = call
        return await outcome(stubs[n % len(stubs)].CreateBooking(request, metadata=caller.metadata, timeout=120))

    batches_before = app.bookings._lanes.batches
    results = await asyncio.gather(*(one(n, c) for n, (_, _, c) in enumerate(calls)))
    by_kind: dict[str, list[tuple[int, Result]]] = {}
    for (kind, i, _), r in zip(calls, results, strict=True):
        by_kind.setdefault(kind, []).append((i, r))

    def reasons(kind: str) -> Counter[str]:
        return Counter(r if isinstance(r, str) else "OK" for _, r in by_kind[kind])

    assert reasons("already") == {"ALREADY_BOOKED": 10}
    assert set(reasons("overlap")) <= {"BOOKING_OVERLAP", "EVENT_SOLD_OUT"}, reasons("overlap")
    assert reasons("overlap")["BOOKING_OVERLAP"] >= 1
    assert reasons("invalid") == {"INVALID_ARGUMENT": len(by_kind["invalid"])}
    assert set(reasons("fresh")) <= {"OK", "EVENT_SOLD_OUT"}, reasons("fresh")
    assert reasons("fresh")["OK"] >= 1
    # Each retried request id: one answer for all three calls, and at most one booking.
    for j, g in enumerate(retriers):
        answers = [r for i, r in by_kind["retry"] if i == j]
        assert all(a == answers[0] for a in answers), answers
        assert set(reasons("retry")) <= {"OK", "EVENT_SOLD_OUT"}
        held = await db_pool.fetchval(
            "SELECT count(*) FROM booking.bookings WHERE guest_id = $1 AND state = 'CONFIRMED'", g.id
        )
        assert held == (1 if isinstance(answers[0], booking_pb2.Booking) else 0)
    # Exactly the capacity sold, matching the answers, the rows and the mails.
    sold = [r for r in results if isinstance(r, booking_pb2.Booking)]
    sold_names = {b.name for b in sold}
    assert sum(b.seats for b in {b.name: b for b in sold}.values()) == capacity
    taken, booked, count = await seat_counts(db_pool, event.name)
    assert taken == booked == capacity + 40
    assert count == len(sold_names) + len(booked_before)
    confirmations = await db_pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE template_id = 'booking_confirmed' AND params->>'event' = $1",
        event.name,
    )
    assert confirmations == count
    # Refused requests left no request id behind (their retries would run afresh).
    orphans = await db_pool.fetchval(
        "SELECT count(*) FROM idem.requests WHERE caller_id = ANY($1::text[]) AND resource_name IS NULL",
        [g.id for g in retriers],
    )
    assert orphans == 0
    # They really were batched: fewer writes than requests that reached the write.
    assert app.bookings._lanes.batches - batches_before < len(calls)
    assert app.bookings._lanes.largest > 1


async def test_one_statement_gives_seats_first_fit_in_arrival_order(
    served: tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    """A batch's refusals each get their reason and leave nothing behind; the accepted ones are all written."""
    _, stubs = served
    event_pb = await new_event(events, clock, capacity=10, start_in=timedelta(days=71))
    other = await new_event(events, clock, start_in=timedelta(days=71, minutes=10))
    already, overlapping, replayed = new_caller(), new_caller(), new_caller()
    await stubs[0].CreateBooking(book(event_pb, 4), metadata=already.metadata)
    await stubs[0].CreateBooking(book(other, 1), metadata=overlapping.metadata)
    replay_id = uuid.uuid4()
    async with db_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO idem.requests (caller_id, method, request_id, request_hash) VALUES ($1, $2, $3, $4)",
            replayed.id,
            "CreateBooking",
            replay_id,
            b"h" * 32,
        )
        event = await bookings.event_state(conn, uid(event_pb.name))
        assert event is not None  # 6 seats left
        guests = [new_caller() for _ in range(4)]

        def new(caller: Caller, seats: int, request_id: uuid.UUID | None = None) -> bookings.NewBooking:
            booking_id = uuid.uuid4()
            return bookings.NewBooking(
                booking_id=booking_id,
                guest_id=caller.id,
                guest_name=caller.name,
                seats=seats,
                request_id=request_id,
                request_hash=hashlib.sha256(caller.id.encode()).digest() if request_id else None,
                outbox=[
                    {
                        "dedupe_key": f"test-group-commit/{booking_id}",
                        "template_id": "booking_confirmed",
                        "recipients": [caller.id],
                        "params": {"booking": f"bookings/{booking_id}"},
                        "request_id": "trace-1",
                    }
                ],
            )

        batch = [
            new(guests[0], 3, uuid.uuid4()),  # fits: 3 left
            new(already, 1),  # holds a booking of the event
            new(guests[1], 4, uuid.uuid4()),  # does not fit the 3 left: refused, its request id forgotten
            new(overlapping, 1),  # overlaps the other event
            new(replayed, 1, replay_id),  # its request id is taken: replayed by the caller
            new(guests[2], 2),  # fits: 1 left
            new(guests[3], 2),  # does not fit
        ]
        reminders = {str(k): v.total_seconds() for k, v in outbox.REMINDER_OFFSETS.items()}
        outcomes = await bookings.create_bookings(conn, event, clock.now(), batch, reminders)

    assert [o.outcome for o in outcomes] == [
        "BOOKED",
        "ALREADY_BOOKED",
        "NO_SEATS",
        "OVERLAP",
        "REPLAY",
        "BOOKED",
        "NO_SEATS",
    ]
    assert outcomes[3].other_booking is not None
    assert outcomes[6].seats_available == 1
    assert await seat_counts(db_pool, event_pb.name) == (9, 9, 3)
    written = await db_pool.fetch(
        "SELECT dedupe_key, request_id FROM notify.outbox WHERE dedupe_key LIKE 'test-group-commit/%' "
        "AND dedupe_key = ANY($1::text[])",
        [f"test-group-commit/{b.booking_id}" for b in batch],
    )
    assert {r["dedupe_key"] for r in written} == {
        f"test-group-commit/{batch[0].booking_id}",
        f"test-group-commit/{batch[5].booking_id}",
    }
    assert {r["request_id"] for r in written} == {"trace-1"}
    claims = await db_pool.fetch(
        "SELECT caller_id, resource_name FROM idem.requests WHERE caller_id = ANY($1::text[])",
        [guests[0].id, guests[1].id],
    )
    assert [(r["caller_id"], r["resource_name"]) for r in claims] == [(guests[0].id, f"bookings/{batch[0].booking_id}")]
    reminders_rows = await db_pool.fetchval(
        "SELECT count(*) FROM notify.reminders WHERE event_id = $1 AND recipient_id = ANY($2::text[])",
        event.id,
        [g.id for g in guests],
    )
    assert reminders_rows == 4  # 24 h and 1 h for the two booked guests


async def test_requests_queued_behind_a_write_are_read_together_and_each_answered(
    served: tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    """While a write of the event is in flight (here: waiting for the event row's lock), later requests queue for
    the next batch without reading; that batch's one read refuses what a read refuses, the write the rest."""
    app, stubs = served
    event = await new_event(events, clock, capacity=5, start_in=timedelta(days=72))
    event_id = uid(event.name)
    already, first = new_caller(), new_caller()
    await stubs[0].CreateBooking(book(event, 1), metadata=already.metadata)  # 4 seats left
    fresh = [new_caller() for _ in range(5)]
    greedy = new_caller()
    batches_before = app.bookings._lanes.batches
    async with db_pool.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", event_id)
        head = asyncio.create_task(outcome(stubs[0].CreateBooking(book(event, 1), metadata=first.metadata)))
        for _ in range(500):
            if app.bookings._lanes.busy(event_id):
                break
            await asyncio.sleep(0.01)
        calls = [(book(event, 1), g) for g in fresh] + [(book(event, 1), already), (book(event, 4), greedy)]
        queued = [
            asyncio.create_task(outcome(stubs[n % len(stubs)].CreateBooking(r, metadata=c.metadata, timeout=60)))
            for n, (r, c) in enumerate(calls)
        ]
        for _ in range(500):
            if app.bookings._lanes.queued(event_id) == len(calls):
                break
            await asyncio.sleep(0.01)
        # every one of them queued unread: even the ones a read refuses wait for the write in flight
        assert app.bookings._lanes.queued(event_id) == len(calls)
        assert not head.done() and not any(t.done() for t in queued)
    assert isinstance(await head, booking_pb2.Booking)  # 3 seats left for the queue
    results = await asyncio.gather(*queued)
    assert results[5] == "ALREADY_BOOKED"  # from the batch's read
    assert results[6] == "EVENT_SOLD_OUT"  # 4 seats asked, 3 left at the read
    assert Counter(r if isinstance(r, str) else "OK" for r in results[:5]) == {"OK": 3, "EVENT_SOLD_OUT": 2}
    assert app.bookings._lanes.batches - batches_before == 2  # the first request's write, then one for the queue
    assert await seat_counts(db_pool, event.name) == (5, 5, 5)


async def test_one_read_for_a_batch_says_what_each_requests_own_read_says(
    served: tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    """EVENTS_FOR_BOOKING for several (guest, request id) pairs == EVENT_FOR_BOOKING for each, in the order given;
    an event that doesn't exist reads as None for every request."""
    _, stubs = served
    event = await new_event(events, clock, capacity=10, start_in=timedelta(days=73))
    event_id = uid(event.name)
    booked, replayed, fresh = new_caller(), new_caller(), new_caller()
    await stubs[0].CreateBooking(book(event, 2), metadata=booked.metadata)
    seen = uuid.uuid4()
    await stubs[0].CreateBooking(book(event, 1, request_id=str(seen)), metadata=replayed.metadata)
    keys = [
        (fresh.id, uuid.uuid4()),  # never seen: no name on record
        (replayed.id, seen),  # its request id was used
        (booked.id, None),  # holds a booking
        (replayed.id, None),
        ("nobody-" + uuid.uuid4().hex, None),
    ]
    async with db_pool.acquire() as conn:
        together = await bookings.events_for_booking(conn, event_id, keys)
        one_by_one = [await bookings.event_for_booking(conn, event_id, g, r) for g, r in keys]
        missing = await bookings.events_for_booking(conn, uuid.uuid4(), keys[:2])
    assert together == one_by_one
    assert [(f.already_booked, f.seen_request) for f in together if f] == [
        (False, False),
        (True, True),
        (True, False),
        (True, False),
        (False, False),
    ]
    assert together[1] is not None and together[1].guest_name == replayed.name
    assert missing == [None, None]
