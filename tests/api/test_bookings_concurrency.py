"""BookingService under real concurrency: many clients over real gRPC channels against one real server.

"Never more seats than capacity, whatever the concurrency" is checked with >= 1,000 simultaneous CreateBooking
calls from distinct users, with and without cancellations mixed in; idempotency with 20 simultaneous calls
sharing one request id. The server here has raised limits (concurrent RPCs, pool wait) so that every call
reaches the booking transaction instead of being shed as overload.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.common.auth import TokenVerifier
from services.common.clock import ManualClock
from tests.support.api import Caller, new_caller, rich_error
from tests.support.bookings import book, cancel, new_event, seat_counts, uid
from tests.support.factories import ts
from tests.support.servers import herd_booking_server

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

CLIENTS = 1000
CHANNELS = 4
Result = booking_pb2.Booking | str  # the booking, or the refusal's reason


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stubs(
    database_url: str, clock: ManualClock, verifier: TokenVerifier
) -> AsyncIterator[list[booking_grpc.BookingServiceAsyncStub]]:
    """A BookingService sized for a thundering herd, and several channels (separate HTTP/2 connections)."""
    async with herd_booking_server(
        database_url, clock, verifier, channels=CHANNELS, db_pool_max_size=20, max_concurrent_rpcs=4 * CLIENTS
    ) as (_, stubs):
        yield stubs


async def outcome(call: Awaitable[booking_pb2.Booking]) -> Result:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return rich_error(exc).reason or exc.code().name


def run_all(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    n: int,
    one: Callable[[booking_grpc.BookingServiceAsyncStub, int], Awaitable[Any]],
) -> Awaitable[list[Any]]:
    return asyncio.gather(*(one(stubs[i % len(stubs)], i) for i in range(n)))


async def test_a_thousand_guests_never_oversell_a_hundred_seats(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=100, start_in=timedelta(days=60))
    guests = [new_caller(f"Guest {i}") for i in range(CLIENTS)]
    rng = random.Random(1)
    wanted = [rng.randint(1, 3) for _ in guests]

    async def one(stub: booking_grpc.BookingServiceAsyncStub, i: int) -> Result:
        return await outcome(stub.CreateBooking(book(event, wanted[i]), metadata=guests[i].metadata, timeout=120))

    results = await run_all(stubs, CLIENTS, one)

    booked = [r for r in results if isinstance(r, booking_pb2.Booking)]
    refusals = Counter(r for r in results if isinstance(r, str))
    assert set(refusals) <= {"EVENT_SOLD_OUT"}, refusals
    assert sum(b.seats for b in booked) == 100
    assert await seat_counts(db_pool, event.name) == (100, 100, len(booked))
    # Exactly the winners hold rows, and only they were told (no notification for a rolled-back attempt).
    assert {b.name for b in booked} == {
        f"bookings/{r['id']}"
        for r in await db_pool.fetch("SELECT id FROM booking.bookings WHERE event_id = $1", uuid.UUID(event.name[7:]))
    }
    confirmations = await db_pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE template_id = 'booking_confirmed' AND params->>'event' = $1",
        event.name,
    )
    assert confirmations == len(booked)


async def test_cancellations_mixed_in_never_oversell_nor_leak_seats(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=100, start_in=timedelta(days=61))
    guests = [new_caller() for _ in range(CLIENTS)]
    rng = random.Random(2)
    wanted = [rng.randint(1, 3) for _ in guests]
    cancels = 0

    async def one(stub: booking_grpc.BookingServiceAsyncStub, i: int) -> tuple[Result, Result | None]:
        nonlocal cancels
        made = await outcome(stub.CreateBooking(book(event, wanted[i]), metadata=guests[i].metadata, timeout=120))
        if isinstance(made, booking_pb2.Booking) and i % 2 == 0:
            cancels += 1
            return made, await outcome(stub.CancelBooking(cancel(made), metadata=guests[i].metadata, timeout=120))
        return made, None

    results = await run_all(stubs, CLIENTS, one)

    refusals = Counter(r for r, _ in results if isinstance(r, str))
    assert set(refusals) <= {"EVENT_SOLD_OUT"}, refusals
    cancelled = [c for _, c in results if c is not None]
    assert cancels >= 20  # seats really were given back while others were booking
    assert all(isinstance(c, booking_pb2.Booking) and c.state == booking_pb2.Booking.CANCELLED for c in cancelled)
    kept = [b for b, c in results if isinstance(b, booking_pb2.Booking) and c is None]
    taken, booked, count = await seat_counts(db_pool, event.name)
    assert taken == booked == sum(b.seats for b in kept) <= 100
    assert count == len(kept)

    # Whatever is left can still be sold, to the last seat: no seat leaked.
    while True:
        extra = await outcome(stubs[0].CreateBooking(book(event, 1), metadata=new_caller().metadata))
        if extra == "EVENT_SOLD_OUT":
            break
        assert isinstance(extra, booking_pb2.Booking)
    assert (await seat_counts(db_pool, event.name))[:2] == (100, 100)


async def test_twenty_calls_with_one_request_id_make_one_booking(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    event = await new_event(events, clock, capacity=10, start_in=timedelta(days=62))
    guest = new_caller()
    request = book(event, 2, request_id=str(uuid.uuid4()))

    async def one(stub: booking_grpc.BookingServiceAsyncStub, _i: int) -> Result:
        return await outcome(stub.CreateBooking(request, metadata=guest.metadata, timeout=60))

    results = await run_all(stubs, 20, one)

    assert all(isinstance(r, booking_pb2.Booking) for r in results), Counter(map(str, results))
    assert all(r == results[0] for r in results)  # identical answers
    assert await seat_counts(db_pool, event.name) == (2, 2, 1)


async def test_one_guest_racing_overlapping_and_duplicate_bookings_gets_one(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    guest: Caller = new_caller()
    base = timedelta(days=63)
    overlapping = [await new_event(events, clock, start_in=base + timedelta(minutes=5 * i)) for i in range(10)]

    async def different_events(stub: booking_grpc.BookingServiceAsyncStub, i: int) -> Result:
        return await outcome(stub.CreateBooking(book(overlapping[i]), metadata=guest.metadata, timeout=60))

    results = await run_all(stubs, len(overlapping), different_events)
    assert Counter(r if isinstance(r, str) else "OK" for r in results) == {"OK": 1, "BOOKING_OVERLAP": 9}

    other = new_caller()
    same = await new_event(events, clock, capacity=50, start_in=base + timedelta(days=1))

    async def same_event(stub: booking_grpc.BookingServiceAsyncStub, _i: int) -> Result:
        return await outcome(stub.CreateBooking(book(same), metadata=other.metadata, timeout=60))

    results = await run_all(stubs, 20, same_event)
    assert Counter(r if isinstance(r, str) else "OK" for r in results) == {"OK": 1, "ALREADY_BOOKED": 19}
    assert await seat_counts(db_pool, same.name) == (1, 1, 1)


async def test_guests_cancelling_while_the_host_cancels_the_event_never_deadlock(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host = new_caller()
    event = await new_event(events, clock, host, capacity=200, start_in=timedelta(days=64))
    guests = [new_caller() for _ in range(60)]
    booked = [await stubs[0].CreateBooking(book(event), metadata=g.metadata) for g in guests]

    async def guest_cancels(stub: booking_grpc.BookingServiceAsyncStub, i: int) -> Result:
        return await outcome(stub.CancelBooking(cancel(booked[i]), metadata=guests[i].metadata, timeout=60))

    async def host_cancels() -> object:
        request = event_service_pb2.CancelEventRequest(name=event.name)
        return await events.CancelEvent(request, metadata=host.metadata, timeout=60)

    results = await asyncio.gather(host_cancels(), run_all(stubs, len(guests), guest_cancels))
    answers = results[1]
    assert all(isinstance(a, booking_pb2.Booking) and a.state == booking_pb2.Booking.CANCELLED for a in answers), (
        Counter(a if isinstance(a, str) else "OK" for a in answers)
    )
    assert await seat_counts(db_pool, event.name) == (0, 0, 0)


async def test_bookings_racing_a_reschedule_keep_reminders_on_the_new_time(
    stubs: list[booking_grpc.BookingServiceAsyncStub],
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host = new_caller()
    event = await new_event(events, clock, host, capacity=500, start_in=timedelta(days=65))
    guests = [new_caller() for _ in range(300)]
    new_start = event.start_time.ToDatetime(tzinfo=UTC) + timedelta(hours=5)

    async def guest_books(stub: booking_grpc.BookingServiceAsyncStub, i: int) -> Result:
        return await outcome(stub.CreateBooking(book(event), metadata=guests[i].metadata, timeout=60))

    async def host_moves() -> None:
        await asyncio.sleep(0.05)
        patch = event_pb2.Event(name=event.name, start_time=ts(new_start))
        request = event_service_pb2.UpdateEventRequest(
            event=patch, update_mask=field_mask_pb2.FieldMask(paths=["start_time"])
        )
        await events.UpdateEvent(request, metadata=host.metadata, timeout=60)

    _, results = await asyncio.gather(host_moves(), run_all(stubs, len(guests), guest_books))
    outcomes = Counter(r if isinstance(r, str) else "OK" for r in results)
    assert set(outcomes) <= {"OK", "CONCURRENT_MODIFICATION"}, outcomes
    # Whoever got a seat has reminders on the new start, none on the old one; refused attempts left nothing.
    rows = await db_pool.fetch(
        "SELECT recipient_id, kind, due_time FROM notify.reminders WHERE event_id = $1 AND recipient_id <> $2",
        uid(event.name),
        host.id,
    )
    confirmed = {g.id for g, r in zip(guests, results, strict=True) if isinstance(r, booking_pb2.Booking)}
    assert {r["recipient_id"] for r in rows} == confirmed
    offsets = {"24H": timedelta(hours=24), "1H": timedelta(hours=1)}
    assert all(r["due_time"] == new_start - offsets[r["kind"]] for r in rows)
    assert await seat_counts(db_pool, event.name) == (len(confirmed), len(confirmed), len(confirmed))
