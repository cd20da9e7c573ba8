"""CowatchClient (sync) against the real services. The services share this test's event loop, so each scenario
runs the blocking client in a worker thread."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from cowatch_client import (
    AlreadyExists,
    Conflict,
    CowatchClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SoldOut,
    Unavailable,
)
from cowatch_client._proto.cowatch.booking.v1 import service_pb2 as booking_service
from cowatch_client.types import Booking, WaitlistEntry

from tests.sdk.conftest import new_event, unique_city
from tests.support.api import new_caller
from tests.support.grpc_proxy import GrpcProxy

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def in_thread(scenario: Callable[[], None]) -> None:
    await asyncio.to_thread(scenario)


async def test_create_get_list_book_and_sold_out(target: str, proxy: GrpcProxy):
    city = unique_city()

    def scenario() -> None:
        with (
            CowatchClient(target, token=new_caller("Host").token) as host,
            CowatchClient(target, token=new_caller("Ana").token) as ana,
            CowatchClient(target, token=new_caller("Ben").token) as ben,
        ):
            created = [
                host.events.create(new_event(capacity=2, city=city, start_in=timedelta(days=4, hours=i)))
                for i in range(3)
            ]
            assert host.events.get(created[1].name).name == created[1].name
            assert [e.name for e in host.events.list(city=city, page_size=2)] == [e.name for e in created]

            booking = ana.bookings.create(created[0].name, seats=2)
            assert (booking.seats, booking.state) == (2, Booking.CONFIRMED)
            assert ana.bookings.get(booking.name).event == created[0].name
            with pytest.raises(SoldOut) as caught:
                ben.bookings.create(created[0].name)
            assert caught.value.reason == "EVENT_SOLD_OUT"
            assert caught.value.metadata == {"seats_available": "0"}
            assert [e.name for e in ben.events.list(city=city, has_free_seats=True)] == [e.name for e in created[1:]]

    await in_thread(scenario)
    assert len(proxy.attempts_of("ListEvents")) == 3  # two pages, then one filtered page


async def test_typed_errors_carry_reason_metadata_and_fields(target: str):
    def scenario() -> None:
        with CowatchClient(target, token=new_caller("Host").token) as host:
            with pytest.raises(InvalidArgument) as bad:
                host.events.create(new_event(capacity=-1, title=""))
            assert {"event.capacity", "event.title"} <= set(bad.value.fields)
            with pytest.raises(NotFound) as missing:
                host.bookings.get(f"bookings/{uuid.uuid4()}")
            assert missing.value.reason == "BOOKING_NOT_FOUND"

            event = host.events.create(new_event())
            host.events.update(new_event_titled(event, "New title"), update_mask=["title"])
            with pytest.raises(Conflict) as stale:  # the etag read before the first update
                host.events.update(new_event_titled(event, "Newer title"), update_mask=["title"])
            assert stale.value.reason == "ETAG_MISMATCH"
            assert stale.value.metadata["current_etag"] != event.etag

    await in_thread(scenario)


def new_event_titled(event, title: str):
    copy = type(event)()
    copy.CopyFrom(event)
    copy.title = title
    return copy


async def test_a_lost_reply_is_retried_with_the_same_request_id(target: str, proxy: GrpcProxy):
    def scenario() -> None:
        with (
            CowatchClient(target, token=new_caller("Host").token) as host,
            CowatchClient(target, token=new_caller("Ana").token) as ana,
        ):
            event = host.events.create(new_event(capacity=5))
            proxy.fail("BookingService/CreateBooking", after_forward=True)
            booking = ana.bookings.create(event.name, seats=3)
            assert [b.name for b in ana.bookings.list()] == [booking.name]
            assert host.events.get(event.name).seats_taken == 3

            proxy.fail("EventService/RotateInviteToken", after_forward=False)
            with pytest.raises(Unavailable):
                host.events.rotate_invite_token(event.name)

    await in_thread(scenario)
    first, retry = (
        booking_service.CreateBookingRequest.FromString(a.request) for a in proxy.attempts_of("CreateBooking")
    )
    assert first.request_id == retry.request_id
    assert len(proxy.attempts_of("RotateInviteToken")) == 1  # not idempotent: never retried


async def test_the_caller_may_choose_the_request_id(target: str, proxy: GrpcProxy):
    key = str(uuid.uuid4())

    def scenario() -> None:
        with (
            CowatchClient(target, token=new_caller("Host").token) as host,
            CowatchClient(target, token=new_caller("Ana").token) as ana,
        ):
            event = host.events.create(new_event())
            # e.g. a process that crashed after sending: the same key again returns the same booking
            first = ana.bookings.create(event.name, request_id=key)
            again = ana.bookings.create(event.name, request_id=key)
            assert again.name == first.name
            with pytest.raises(InvalidArgument) as reused:
                ana.bookings.create(event.name, seats=2, request_id=key)
            assert reused.value.reason == "REQUEST_ID_REUSED"

    await in_thread(scenario)
    assert {
        booking_service.CreateBookingRequest.FromString(a.request).request_id
        for a in proxy.attempts_of("CreateBooking")
    } == {key}


async def test_join_the_waitlist_get_an_offer_and_claim_it(target: str, proxy: GrpcProxy):
    def scenario() -> None:
        with (
            CowatchClient(target, token=new_caller("Host").token) as host,
            CowatchClient(target, token=new_caller("Ana").token) as ana,
            CowatchClient(target, token=new_caller("Ben").token) as ben,
        ):
            event = host.events.create(new_event(capacity=1, start_in=timedelta(days=5)))
            booking = ana.bookings.create(event.name)
            entry = ben.bookings.join_waitlist(event.name)
            assert (entry.state, entry.position) == (WaitlistEntry.WAITING, 1)
            with pytest.raises(AlreadyExists) as caught:
                ben.bookings.join_waitlist(event.name)
            assert caught.value.reason == "ALREADY_WAITLISTED" and caught.value.metadata["waitlist_entry"] == entry.name
            with pytest.raises(FailedPrecondition) as refused:
                ben.bookings.claim_offer(entry.name)
            assert refused.value.reason == "NO_OPEN_OFFER"
            assert [e.name for e in host.bookings.waitlist(event.name)] == [entry.name]
            ana.bookings.cancel(booking.name)
            assert ben.bookings.waitlist_entry(entry.name).state == WaitlistEntry.OFFERED
            claimed = ben.bookings.claim_offer(entry.name)
            assert (claimed.state, claimed.event) == (Booking.CONFIRMED, event.name)

    await in_thread(scenario)
    # writes carry a request id, so the client retries them; each went through once here
    assert len(proxy.attempts_of("ClaimOffer")) == 2 and len(proxy.attempts_of("JoinWaitlist")) == 2
