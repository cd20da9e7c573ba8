"""Bad input is INVALID_ARGUMENT naming the field, never INTERNAL: the text rule every request string obeys
(services/common/text.py), the invite-token shape, undecodable bytes, and the cap on field violations."""

from __future__ import annotations

import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller, rich_error
from tests.support.factories import create_request, event_msg

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def _private_event(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
) -> tuple[Caller, resources_pb2.Event]:
    host = new_caller("Host")
    event = await events.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)
    return host, event


@pytest.mark.parametrize("token", ["ä", "%C3%A4", "a b", "x" * 65])
async def test_get_event_with_a_mangled_invite_token_is_invalid_argument(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, token: str
):
    _, event = await _private_event(events, clock)
    err = await expect_error(events.GetEvent(service_pb2.GetEventRequest(name=event.name, invite_token=token)))
    assert err.code is INVALID and "invite_token" in err.fields


async def test_create_booking_with_a_non_ascii_invite_token_is_invalid_argument(
    events: event_grpc.EventServiceAsyncStub, bookings: booking_grpc.BookingServiceAsyncStub, clock: ManualClock
):
    _, event = await _private_event(events, clock)
    request = booking_service_pb2.CreateBookingRequest(
        booking=booking_pb2.Booking(event=event.name), invite_token="ä" * 10
    )
    err = await expect_error(bookings.CreateBooking(request, metadata=new_caller().metadata))
    assert err.code is INVALID and "invite_token" in err.fields


@pytest.mark.parametrize("field", ["query", "city", "film_id", "page_token"])
async def test_list_events_with_a_nul_in_a_text_filter_is_invalid_argument(
    events: event_grpc.EventServiceAsyncStub, field: str
):
    request = service_pb2.ListEventsRequest()
    setattr(request, field, "sol\x00aris")
    err = await expect_error(events.ListEvents(request))
    assert err.code is INVALID and field in err.fields


async def test_send_invitations_with_a_nul_in_the_message_is_invalid_argument(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    host, event = await _private_event(events, clock)
    guest = new_caller()
    request = service_pb2.SendInvitationsRequest(name=event.name, users=[guest.resource], message="hi\x00there")
    err = await expect_error(events.SendInvitations(request, metadata=host.metadata))
    assert err.code is INVALID and "message" in err.fields


async def test_cancel_event_with_a_nul_in_the_reason_is_invalid_argument(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock
):
    host, event = await _private_event(events, clock)
    request = service_pb2.CancelEventRequest(name=event.name, reason="rain\x00")
    err = await expect_error(events.CancelEvent(request, metadata=host.metadata))
    assert err.code is INVALID and "reason" in err.fields
    still = await events.GetEvent(service_pb2.GetEventRequest(name=event.name), metadata=host.metadata)
    assert still.state == resources_pb2.Event.SCHEDULED


async def test_newlines_are_free_text_only(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    ok = event_msg(clock.now())
    ok.description = "Line one\nline two\ttabbed"
    created = await events.CreateEvent(service_pb2.CreateEventRequest(event=ok), metadata=host.metadata)
    assert created.description == ok.description
    bad = event_msg(clock.now(), title="two\nlines")
    bad.place.city = "Ber\x7flin"
    err = await expect_error(events.CreateEvent(service_pb2.CreateEventRequest(event=bad), metadata=host.metadata))
    assert err.code is INVALID and {"event.title", "event.place.city"} <= set(err.fields)


async def test_undecodable_request_bytes_are_invalid_argument(event_channel: grpc.aio.Channel):
    # field 9 (query), length 2, bytes that are not UTF-8: protobuf refuses to decode them
    raw = bytes([0x4A, 0x02, 0xC3, 0x28])
    call = event_channel.unary_unary(
        "/cowatch.event.v1.EventService/ListEvents",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    err = await expect_error(call(raw))
    assert err.code is INVALID and err.reason == "MALFORMED_REQUEST"


async def test_ten_thousand_bad_users_give_a_capped_error(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host, event = await _private_event(events, clock)
    request = service_pb2.SendInvitationsRequest(name=event.name, users=[f"nobody-{i}" for i in range(10_000)])
    try:
        await events.SendInvitations(request, metadata=host.metadata)
    except grpc.aio.AioRpcError as exc:
        trailers = exc.trailing_metadata() or ()
        size = sum(len(k) + len(v) for k, v in trailers)
        err = rich_error(exc)
    else:  # pragma: no cover
        raise AssertionError("accepted 10,000 malformed users")
    assert err.code is INVALID, err
    assert 0 < len(err.fields) <= 20
    assert int(err.metadata["omitted_violations"]) >= 10_000 - 20
    assert size < 8192 and len(err.message) <= 1000


@pytest.mark.parametrize("sub", ["x" * 200, "team/alice"])
async def test_a_subject_the_database_cannot_hold_is_unauthenticated_not_internal(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, capfd: pytest.CaptureFixture[str], sub: str
):
    caller = new_caller(user_id=sub)
    err = await expect_error(events.CreateEvent(create_request(clock.now()), metadata=caller.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    assert "'sub'" in err.message
    out, errout = capfd.readouterr()
    assert "Failing row contains" not in out + errout and sub not in out + errout
