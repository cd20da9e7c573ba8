"""Moving an event onto a guest's other booking: the host's move stands (a guest can't veto it), both bookings
stay confirmed, and the change mail to that guest names the booking it now collides with. A booking racing the
move is serialized with it: it either sees the new time (refused as an overlap) or is named in the mail."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.common.clock import ManualClock
from tests.support.api import Caller, new_caller, rich_error
from tests.support.bookings import book, new_event
from tests.support.factories import ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

GUESTS = 60


def move(event: event_pb2.Event, by: timedelta) -> event_service_pb2.UpdateEventRequest:
    patch = event_pb2.Event(name=event.name, start_time=ts(event.start_time.ToDatetime(tzinfo=UTC) + by))
    return event_service_pb2.UpdateEventRequest(event=patch, update_mask=field_mask_pb2.FieldMask(paths=["start_time"]))


async def change_mails(db_pool: Any, event: event_pb2.Event) -> dict[str, list[dict[str, Any]]]:
    """Recipient → the ``overlaps`` of the change mail they get ([] when it names none)."""
    rows = await db_pool.fetch(
        "SELECT recipients, params FROM notify.outbox WHERE template_id = 'event_changed' AND params->>'event' = $1",
        event.name,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for recipient in r["recipients"]:
            assert recipient not in out, "one change mail per guest"
            out[recipient] = json.loads(r["params"]).get("overlaps", [])
    return out


async def booked(bookings: booking_grpc.BookingServiceAsyncStub, event: event_pb2.Event, guest: Caller) -> str:
    return (await bookings.CreateBooking(book(event), metadata=guest.metadata)).name


async def test_a_move_onto_a_guests_other_booking_stands_and_the_guest_is_told_which_one(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host, both, only = new_caller("Host"), new_caller("Booked both"), new_caller("Booked one")
    moved = await new_event(events, clock, host, start_in=timedelta(days=40), minutes=120)
    other = await new_event(events, clock, start_in=timedelta(days=40, hours=5), minutes=120)
    kept = await booked(bookings, moved, both)
    collides = await booked(bookings, other, both)
    await booked(bookings, moved, only)

    await events.UpdateEvent(move(moved, timedelta(hours=4)), metadata=host.metadata)

    mails = await change_mails(db_pool, moved)
    assert mails[only.id] == []
    [overlap] = mails[both.id]
    assert overlap["booking"] == collides and overlap["event"] == other.name and overlap["title"] == other.title
    assert overlap["start_time"] == other.start_time.ToDatetime(tzinfo=UTC).isoformat()
    assert overlap["link"].endswith(other.name.split("/")[1])
    for name in (kept, collides):  # both stay confirmed: the guest chooses which one to cancel
        got = await bookings.GetBooking(booking_service_pb2.GetBookingRequest(name=name), metadata=both.metadata)
        assert got.state == booking_pb2.Booking.State.CONFIRMED
    # The booking rule itself holds on the new time.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await booked(bookings, other, only)
    assert rich_error(refused.value).reason == "BOOKING_OVERLAP"


async def test_bookings_racing_a_move_are_refused_or_named_in_the_change_mail(
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    clock: ManualClock,
    db_pool,
):
    host = new_caller("Host")
    guests = [new_caller(f"Guest {i}") for i in range(GUESTS)]
    moved = await new_event(events, clock, host, capacity=GUESTS, start_in=timedelta(days=50), minutes=120)
    other = await new_event(events, clock, capacity=GUESTS, start_in=timedelta(days=50, hours=5), minutes=120)
    await asyncio.gather(*(booked(bookings, moved, g) for g in guests))

    async def books_other(guest: Caller) -> str:
        try:
            return await booked(bookings, other, guest)
        except grpc.aio.AioRpcError as exc:
            return rich_error(exc).reason or exc.code().name

    async def host_moves() -> None:
        await asyncio.sleep(0.02)
        await events.UpdateEvent(move(moved, timedelta(hours=4)), metadata=host.metadata, timeout=60)

    _, results = await asyncio.gather(host_moves(), asyncio.gather(*(books_other(g) for g in guests)))

    refused = {g.id for g, r in zip(guests, results, strict=True) if r == "BOOKING_OVERLAP"}
    confirmed = {g.id: r for g, r in zip(guests, results, strict=True) if r.startswith("bookings/")}
    assert refused | set(confirmed) == {g.id for g in guests}, results
    mails = await change_mails(db_pool, moved)
    assert set(mails) == {g.id for g in guests}
    for guest_id, overlaps in mails.items():
        # every guest left with two overlapping bookings is told which one; nobody else is
        assert [o["booking"] for o in overlaps] == ([confirmed[guest_id]] if guest_id in confirmed else [])
    print(f"racing a move: {len(confirmed)} booked first and were told, {len(refused)} refused as overlapping")
