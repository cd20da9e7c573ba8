"""Who may call what: every RPC of EventService, BookingService and ReviewService, by every kind of caller, on a
public and on a private event, against the real servers. The whole policy is the one table below.

Callers, relative to one event hosted by ``host``:

* ``anonymous``: no token;
* ``stranger``: a valid token, no relation to the event;
* ``invited``: a stranger who holds the invite token (from a share link) and presents it where a request takes one
  (GetEvent, CreateBooking); requests without an ``invite_token`` field can't carry it, so elsewhere ``invited`` is
  a stranger;
* ``guest``: holds a confirmed booking;
* ``cancelled``: booked, then cancelled their booking;
* ``host``: created the event.

Cells are the status code of the answer (UNAUTH, DENIED, PRECONDITION and EXISTS short for UNAUTHENTICATED,
PERMISSION_DENIED, FAILED_PRECONDITION and ALREADY_EXISTS), or ``HIDDEN`` for a list that answers OK without the
event (or the guest's booking or review) in it. A private event must not exist for anyone who may not see it:
NOT_FOUND, never PERMISSION_DENIED; and every NOT_FOUND is checked to be the very answer (code, reason, message but
for the id) the same caller gets for ids that were never created. Each cell runs against a fresh event when the call may
change it (a successful UpdateEvent must not decide the next caller's answer). Targets: Get/Cancel/ListBookings look
at the guest's booking; the review RPCs run on a held event where the guest reviewed the event (a review pending
reveal, which exists for its author alone: tests/api/test_reviews_blind.py covers revealed ones); the user RPCs
name the host.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2 as review_pb2
from cowatch.review.v1 import service_pb2 as review_service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.common.clock import ManualClock
from tests.support.api import Caller, new_caller, rich_error
from tests.support.bookings import book, cancel
from tests.support.factories import create_request
from tests.support.reviews import EVENT, complete, review_request

ROLES = ("anonymous", "stranger", "invited", "guest", "cancelled", "host")

MATRIX = """
rpc               | event   | anonymous | stranger  | invited   | guest     | cancelled | host
----------------- | ------- | --------- | --------- | --------- | --------- | --------- | ------------
CreateEvent       | public  | UNAUTH    | OK        | OK        | OK        | OK        | OK
CreateEvent       | private | UNAUTH    | OK        | OK        | OK        | OK        | OK
GetEvent          | public  | OK        | OK        | OK        | OK        | OK        | OK
GetEvent          | private | NOT_FOUND | NOT_FOUND | OK        | OK        | NOT_FOUND | OK
ExportEventCalendar | public  | OK        | OK        | OK        | OK        | OK        | OK
ExportEventCalendar | private | NOT_FOUND | NOT_FOUND | OK        | OK        | NOT_FOUND | OK
GetCalendar       | public  | NOT_FOUND | HIDDEN    | HIDDEN    | OK        | OK        | OK
GetCalendar       | private | NOT_FOUND | HIDDEN    | HIDDEN    | OK        | OK        | OK
RotateCalendarToken | public  | UNAUTH    | OK        | OK        | OK        | OK        | OK
RotateCalendarToken | private | UNAUTH    | OK        | OK        | OK        | OK        | OK
ListEvents        | public  | OK        | OK        | OK        | OK        | OK        | OK
ListEvents        | private | HIDDEN    | HIDDEN    | HIDDEN    | HIDDEN    | HIDDEN    | OK
UpdateEvent       | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | OK
UpdateEvent       | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
CancelEvent       | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | OK
CancelEvent       | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
CompleteEvent     | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | PRECONDITION
CompleteEvent     | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | PRECONDITION
ListEventGuests   | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | OK
ListEventGuests   | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
SendInvitations   | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | OK
SendInvitations   | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
RotateInviteToken | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | PRECONDITION
RotateInviteToken | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
CreateBooking     | public  | UNAUTH    | OK        | OK        | EXISTS    | OK        | PRECONDITION
CreateBooking     | private | UNAUTH    | NOT_FOUND | OK        | EXISTS    | NOT_FOUND | PRECONDITION
GetBooking        | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | OK
GetBooking        | private | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | OK
ListBookings      | public  | UNAUTH    | HIDDEN    | HIDDEN    | OK        | HIDDEN    | HIDDEN
ListBookings      | private | UNAUTH    | HIDDEN    | HIDDEN    | OK        | HIDDEN    | HIDDEN
CancelBooking     | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | DENIED
CancelBooking     | private | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | DENIED
JoinWaitlist      | public  | UNAUTH    | PRECONDITION | PRECONDITION | EXISTS | PRECONDITION | PRECONDITION
JoinWaitlist      | private | UNAUTH    | NOT_FOUND | PRECONDITION | EXISTS  | NOT_FOUND | PRECONDITION
GetWaitlistEntry  | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
GetWaitlistEntry  | private | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
ListWaitlist      | public  | UNAUTH    | DENIED    | DENIED    | DENIED    | DENIED    | OK
ListWaitlist      | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
LeaveWaitlist     | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
LeaveWaitlist     | private | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
ClaimOffer        | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
ClaimOffer        | private | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
DeclineOffer      | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
DeclineOffer      | private | UNAUTH    | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
MarkAttendance    | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
MarkAttendance    | private | UNAUTH    | NOT_FOUND | NOT_FOUND | DENIED    | NOT_FOUND | OK
CreateReview      | public  | UNAUTH    | DENIED    | DENIED    | EXISTS    | DENIED    | OK
CreateReview      | private | UNAUTH    | NOT_FOUND | NOT_FOUND | EXISTS    | NOT_FOUND | OK
UpdateReview      | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | NOT_FOUND
UpdateReview      | private | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | NOT_FOUND
DeleteReview      | public  | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | NOT_FOUND
DeleteReview      | private | UNAUTH    | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | NOT_FOUND
ListReviews       | public  | HIDDEN    | HIDDEN    | HIDDEN    | OK        | HIDDEN    | HIDDEN
ListReviews       | private | NOT_FOUND | NOT_FOUND | NOT_FOUND | OK        | NOT_FOUND | HIDDEN
GetUserRating     | public  | OK        | OK        | OK        | OK        | OK        | OK
GetUserRating     | private | OK        | OK        | OK        | OK        | OK        | OK
GetHostProfile    | public  | OK        | OK        | OK        | OK        | OK        | OK
GetHostProfile    | private | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
ListHeldEvents    | public  | OK        | OK        | OK        | OK        | OK        | OK
ListHeldEvents    | private | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND | NOT_FOUND
"""


# Short names in the table for the codes: the rest are grpc.StatusCode names.
CODES = {
    "UNAUTH": "UNAUTHENTICATED",
    "DENIED": "PERMISSION_DENIED",
    "PRECONDITION": "FAILED_PRECONDITION",
    "EXISTS": "ALREADY_EXISTS",
}


def _parse(table: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = [line for line in table.strip().splitlines() if not line.startswith("-")]
    header = [cell.strip() for cell in lines[0].split("|")]
    assert tuple(header[2:]) == ROLES
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.split("|")]
        assert (cells[0], cells[1]) not in rows, f"row {cells[:2]} twice"
        rows[(cells[0], cells[1])] = {role: CODES.get(c, c) for role, c in zip(ROLES, cells[2:], strict=True)}
    return rows


EXPECTED = _parse(MATRIX)


# --------------------------------------------------------------------------------------------- the world


@dataclass
class Api:
    events: event_grpc.EventServiceAsyncStub
    bookings: booking_grpc.BookingServiceAsyncStub
    reviews: review_grpc.ReviewServiceAsyncStub
    clock: ManualClock


@dataclass
class World:
    """One event and the people around it; ``held``: it took place and the guest reviewed it."""

    event: event_pb2.Event
    callers: dict[str, Caller | None]
    guest_booking: str
    guest_review: str = ""
    invite_token: str = ""

    @property
    def host(self) -> Caller:
        host = self.callers["host"]
        assert host is not None
        return host


async def make_world(api: Api, *, private: bool, held: bool) -> World:
    callers: dict[str, Caller | None] = {"anonymous": None}
    for role in ROLES[1:]:
        callers[role] = new_caller(role.title())
    host, guest, cancelled = callers["host"], callers["guest"], callers["cancelled"]
    assert host is not None and guest is not None and cancelled is not None
    timing = {"start_in": timedelta(minutes=1), "minutes": 1} if held else {}
    request = create_request(api.clock.now(), private=private, capacity=5, **timing)
    event = await api.events.CreateEvent(request, metadata=host.metadata)
    token = event.invite_token
    booking = await api.bookings.CreateBooking(book(event, invite_token=token), metadata=guest.metadata)
    dropped = await api.bookings.CreateBooking(book(event, invite_token=token), metadata=cancelled.metadata)
    await api.bookings.CancelBooking(cancel(dropped), metadata=cancelled.metadata)
    world = World(event, callers, booking.name, invite_token=token)
    if held:
        world.event = await complete(api.events, api.clock, host, event)
        review = await api.reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=guest.metadata)
        world.guest_review = review.name
    return world


# --------------------------------------------------------------------------------------------- the calls

Call = Callable[[Api, World, str], Awaitable[str]]


def _md(world: World, role: str) -> tuple[tuple[str, str], ...]:
    caller = world.callers[role]
    return caller.metadata if caller is not None else ()


def _token(world: World, role: str) -> str:
    return world.invite_token if role == "invited" else ""


async def create_event(api: Api, w: World, role: str) -> str:
    private = w.event.visibility == event_pb2.Event.PRIVATE
    await api.events.CreateEvent(create_request(api.clock.now(), private=private), metadata=_md(w, role))
    return "OK"


async def get_event(api: Api, w: World, role: str) -> str:
    request = event_service_pb2.GetEventRequest(name=w.event.name, invite_token=_token(w, role))
    await api.events.GetEvent(request, metadata=_md(w, role))
    return "OK"


async def export_event_calendar(api: Api, w: World, role: str) -> str:
    request = event_service_pb2.ExportEventCalendarRequest(name=w.event.name, invite_token=_token(w, role))
    body = await api.events.ExportEventCalendar(request, metadata=_md(w, role))
    assert body.content_type.startswith("text/calendar")
    return "OK"


async def get_calendar(api: Api, w: World, role: str) -> str:
    """Each caller's own feed (anonymous: a token nobody was given); OK when the event is in it (the cancelled
    guest's entry is there too, as STATUS:CANCELLED)."""
    token = "never-issued"
    if w.callers[role] is not None:
        rotated = await api.events.RotateCalendarToken(
            event_service_pb2.RotateCalendarTokenRequest(), metadata=_md(w, role)
        )
        token = rotated.token
    body = await api.events.GetCalendar(event_service_pb2.GetCalendarRequest(token=token))
    return "OK" if f"UID:{w.event.name.split('/')[1]}@cowatch".encode() in body.data else "HIDDEN"


async def rotate_calendar_token(api: Api, w: World, role: str) -> str:
    rotated = await api.events.RotateCalendarToken(
        event_service_pb2.RotateCalendarTokenRequest(), metadata=_md(w, role)
    )
    assert rotated.token in rotated.feed_url
    return "OK"


async def list_events(api: Api, w: World, role: str) -> str:
    request = event_service_pb2.ListEventsRequest(host=w.host.resource, page_size=100)
    page = await api.events.ListEvents(request, metadata=_md(w, role))
    return "OK" if w.event.name in {e.name for e in page.events} else "HIDDEN"


async def update_event(api: Api, w: World, role: str) -> str:
    event = event_pb2.Event(name=w.event.name, title="Renamed night")
    mask = field_mask_pb2.FieldMask(paths=["title"])
    await api.events.UpdateEvent(
        event_service_pb2.UpdateEventRequest(event=event, update_mask=mask), metadata=_md(w, role)
    )
    return "OK"


async def cancel_event(api: Api, w: World, role: str) -> str:
    await api.events.CancelEvent(event_service_pb2.CancelEventRequest(name=w.event.name), metadata=_md(w, role))
    return "OK"


async def complete_event(api: Api, w: World, role: str) -> str:
    await api.events.CompleteEvent(event_service_pb2.CompleteEventRequest(name=w.event.name), metadata=_md(w, role))
    return "OK"


async def list_event_guests(api: Api, w: World, role: str) -> str:
    request = event_service_pb2.ListEventGuestsRequest(parent=w.event.name)
    await api.events.ListEventGuests(request, metadata=_md(w, role))
    return "OK"


async def send_invitations(api: Api, w: World, role: str) -> str:
    guest = w.callers["guest"]  # booked, so a user cowatch knows (invitations go only to known users)
    assert guest is not None
    request = event_service_pb2.SendInvitationsRequest(name=w.event.name, users=[guest.resource])
    await api.events.SendInvitations(request, metadata=_md(w, role))
    return "OK"


async def rotate_invite_token(api: Api, w: World, role: str) -> str:
    request = event_service_pb2.RotateInviteTokenRequest(name=w.event.name)
    await api.events.RotateInviteToken(request, metadata=_md(w, role))
    return "OK"


async def create_booking(api: Api, w: World, role: str) -> str:
    await api.bookings.CreateBooking(book(w.event, invite_token=_token(w, role)), metadata=_md(w, role))
    return "OK"


async def get_booking(api: Api, w: World, role: str) -> str:
    request = booking_service_pb2.GetBookingRequest(name=w.guest_booking)
    await api.bookings.GetBooking(request, metadata=_md(w, role))
    return "OK"


async def list_bookings(api: Api, w: World, role: str) -> str:
    page = await api.bookings.ListBookings(
        booking_service_pb2.ListBookingsRequest(page_size=100), metadata=_md(w, role)
    )
    return "OK" if w.guest_booking in {b.name for b in page.bookings} else "HIDDEN"


async def cancel_booking(api: Api, w: World, role: str) -> str:
    await api.bookings.CancelBooking(cancel(w.guest_booking), metadata=_md(w, role))
    return "OK"


def _entry_id(world: World) -> str:
    """A waitlist entry of the event that nobody joined as (the world's event has free seats: nobody can wait);
    who may join, and who sees a real entry, are tested in tests/api/test_waitlist.py."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, world.event.name))


def _entry(world: World) -> str:
    return f"{world.event.name}/waitlistEntries/{_entry_id(world)}"


async def join_waitlist(api: Api, w: World, role: str) -> str:
    request = booking_service_pb2.JoinWaitlistRequest(parent=w.event.name, invite_token=_token(w, role))
    await api.bookings.JoinWaitlist(request, metadata=_md(w, role))
    return "OK"


async def get_waitlist_entry(api: Api, w: World, role: str) -> str:
    request = booking_service_pb2.GetWaitlistEntryRequest(name=_entry(w))
    await api.bookings.GetWaitlistEntry(request, metadata=_md(w, role))
    return "OK"


async def list_waitlist(api: Api, w: World, role: str) -> str:
    await api.bookings.ListWaitlist(booking_service_pb2.ListWaitlistRequest(parent=w.event.name), metadata=_md(w, role))
    return "OK"


async def leave_waitlist(api: Api, w: World, role: str) -> str:
    request = booking_service_pb2.LeaveWaitlistRequest(name=_entry(w))
    await api.bookings.LeaveWaitlist(request, metadata=_md(w, role))
    return "OK"


async def claim_offer(api: Api, w: World, role: str) -> str:
    await api.bookings.ClaimOffer(booking_service_pb2.ClaimOfferRequest(name=_entry(w)), metadata=_md(w, role))
    return "OK"


async def decline_offer(api: Api, w: World, role: str) -> str:
    await api.bookings.DeclineOffer(booking_service_pb2.DeclineOfferRequest(name=_entry(w)), metadata=_md(w, role))
    return "OK"


async def mark_attendance(api: Api, w: World, role: str) -> str:
    request = booking_service_pb2.MarkAttendanceRequest(name=w.guest_booking, attendance=booking_pb2.ATTENDED)
    await api.bookings.MarkAttendance(request, metadata=_md(w, role))
    return "OK"


async def create_review(api: Api, w: World, role: str) -> str:
    await api.reviews.CreateReview(review_request(w.event.name, EVENT, 5), metadata=_md(w, role))
    return "OK"


async def update_review(api: Api, w: World, role: str) -> str:
    review = review_pb2.Review(name=w.guest_review, rating=2)
    mask = field_mask_pb2.FieldMask(paths=["rating"])
    request = review_service_pb2.UpdateReviewRequest(review=review, update_mask=mask)
    await api.reviews.UpdateReview(request, metadata=_md(w, role))
    return "OK"


async def delete_review(api: Api, w: World, role: str) -> str:
    request = review_service_pb2.DeleteReviewRequest(name=w.guest_review)
    await api.reviews.DeleteReview(request, metadata=_md(w, role))
    return "OK"


async def list_reviews(api: Api, w: World, role: str) -> str:
    request = review_service_pb2.ListReviewsRequest(event=w.event.name)
    page = await api.reviews.ListReviews(request, metadata=_md(w, role))
    return "OK" if w.guest_review in {r.name for r in page.reviews} else "HIDDEN"


async def get_user_rating(api: Api, w: World, role: str) -> str:
    request = review_service_pb2.GetUserRatingRequest(name=f"{w.host.resource}/rating")
    await api.reviews.GetUserRating(request, metadata=_md(w, role))
    return "OK"


async def get_host_profile(api: Api, w: World, role: str) -> str:
    request = review_service_pb2.GetHostProfileRequest(name=f"{w.host.resource}/hostProfile")
    await api.reviews.GetHostProfile(request, metadata=_md(w, role))
    return "OK"


async def list_held_events(api: Api, w: World, role: str) -> str:
    request = review_service_pb2.ListHeldEventsRequest(parent=f"{w.host.resource}/hostProfile")
    page = await api.reviews.ListHeldEvents(request, metadata=_md(w, role))
    return "OK" if w.event.name in {e.event for e in page.held_events} else "HIDDEN"


@dataclass(frozen=True)
class Rpc:
    call: Call
    mutates: bool = False  # a fresh event for each caller
    held: bool = False  # on an event that took place


RPCS: dict[str, Rpc] = {
    "CreateEvent": Rpc(create_event),
    "GetEvent": Rpc(get_event),
    "ExportEventCalendar": Rpc(export_event_calendar),
    "GetCalendar": Rpc(get_calendar),
    "RotateCalendarToken": Rpc(rotate_calendar_token, mutates=True),
    "ListEvents": Rpc(list_events),
    "UpdateEvent": Rpc(update_event, mutates=True),
    "CancelEvent": Rpc(cancel_event, mutates=True),
    "CompleteEvent": Rpc(complete_event, mutates=True),
    "ListEventGuests": Rpc(list_event_guests),
    "SendInvitations": Rpc(send_invitations),
    "RotateInviteToken": Rpc(rotate_invite_token, mutates=True),
    "CreateBooking": Rpc(create_booking, mutates=True),
    "GetBooking": Rpc(get_booking),
    "ListBookings": Rpc(list_bookings),
    "CancelBooking": Rpc(cancel_booking, mutates=True),
    "JoinWaitlist": Rpc(join_waitlist, mutates=True),
    "GetWaitlistEntry": Rpc(get_waitlist_entry),
    "ListWaitlist": Rpc(list_waitlist),
    "LeaveWaitlist": Rpc(leave_waitlist),
    "ClaimOffer": Rpc(claim_offer),
    "DeclineOffer": Rpc(decline_offer),
    "MarkAttendance": Rpc(mark_attendance, held=True),
    "CreateReview": Rpc(create_review, mutates=True, held=True),
    "UpdateReview": Rpc(update_review, mutates=True, held=True),
    "DeleteReview": Rpc(delete_review, mutates=True, held=True),
    "ListReviews": Rpc(list_reviews, held=True),
    "GetUserRating": Rpc(get_user_rating, held=True),
    "GetHostProfile": Rpc(get_host_profile, held=True),
    "ListHeldEvents": Rpc(list_held_events, held=True),
}


def test_the_matrix_covers_every_rpc_of_the_three_services() -> None:
    services = [
        event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
        booking_service_pb2.DESCRIPTOR.services_by_name["BookingService"],
        review_service_pb2.DESCRIPTOR.services_by_name["ReviewService"],
    ]
    methods = {m.name for s in services for m in s.methods}
    assert methods == set(RPCS)
    assert set(EXPECTED) == {(rpc, vis) for rpc in RPCS for vis in ("public", "private")}


async def _answer(api: Api, rpc: Rpc, world: World, role: str) -> tuple[str, str, str]:
    """(cell, reason, message)."""
    try:
        return await rpc.call(api, world, role), "", ""
    except grpc.aio.AioRpcError as exc:
        err = rich_error(exc)
        return err.code.name, err.reason, err.message


def _ids(world: World) -> list[str]:
    names = (world.event.name, world.guest_booking, world.guest_review)
    return [n.split("/", 1)[1] for n in names if n] + [world.host.id, _entry_id(world)]


def ghost(world: World) -> World:
    """The same callers, but every name the calls use (event, booking, review, host) never created."""
    return World(
        event=event_pb2.Event(name=f"events/{uuid.uuid4()}", visibility=world.event.visibility),
        callers={**world.callers, "host": new_caller("Nobody", user_id=f"u-{uuid.uuid4().hex[:12]}")},
        guest_booking=f"bookings/{uuid.uuid4()}",
        guest_review=f"reviews/{uuid.uuid4()}" if world.guest_review else "",
        invite_token=world.invite_token,
    )


def _anonymised(answer: tuple[str, str, str], world: World) -> tuple[str, str, str]:
    code, reason, message = answer
    for value in _ids(world):
        message = message.replace(value, "<id>")
    return code, reason, message


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(("rpc", "visibility"), list(EXPECTED))
async def test_authorization(
    rpc: str,
    visibility: str,
    events: event_grpc.EventServiceAsyncStub,
    bookings: booking_grpc.BookingServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
) -> None:
    api = Api(events, bookings, reviews, clock)
    spec = RPCS[rpc]
    private = visibility == "private"
    shared = None if spec.mutates else await make_world(api, private=private, held=spec.held)
    actual: dict[str, str] = {}
    leaks: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {}
    for role in ROLES:
        world = shared or await make_world(api, private=private, held=spec.held)
        answer = await _answer(api, spec, world, role)
        actual[role] = answer[0]
        if answer[0] == "NOT_FOUND":
            unknown = ghost(world)
            hidden, never = _anonymised(answer, world), _anonymised(await _answer(api, spec, unknown, role), unknown)
            if hidden != never:
                leaks[role] = (hidden, never)
    assert actual == EXPECTED[(rpc, visibility)], f"{rpc} on a {visibility} event"
    assert not leaks, f"{rpc}: NOT_FOUND unlike an unknown id's (hidden vs never created): {leaks}"
