"""Proto ↔ domain for the waitlist methods of BookingService (generated types stop here)."""

from __future__ import annotations

from cowatch.booking.v1 import resources_pb2, service_pb2

from services.booking import domain
from services.booking.waitlist import EntryState, WaitlistEntry
from services.booking.waitlist_service import EntryAction, GetEntry, JoinWaitlist, ListWaitlist
from services.common import context, names
from services.common.errors import InvalidArgument, Violations
from services.common.identity import User
from services.common.links import parse_invite_token
from services.common.protos import rating_to_proto, reliability_to_proto, request_key, to_timestamp

_STATE_TO_PROTO = {
    EntryState.WAITING: resources_pb2.WaitlistEntry.WAITING,
    EntryState.OFFERED: resources_pb2.WaitlistEntry.OFFERED,
    EntryState.CLAIMED: resources_pb2.WaitlistEntry.CLAIMED,
    EntryState.DECLINED: resources_pb2.WaitlistEntry.DECLINED,
    EntryState.EXPIRED: resources_pb2.WaitlistEntry.EXPIRED,
    EntryState.LEFT: resources_pb2.WaitlistEntry.LEFT,
    EntryState.CLOSED: resources_pb2.WaitlistEntry.CLOSED,
}


def to_join_command(request: service_pb2.JoinWaitlistRequest, user: User, max_seats: int) -> JoinWaitlist:
    v = Violations()
    event_id = None
    try:
        event_id = names.parse_event(request.parent, "parent")
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    seats = 1
    try:
        seats = domain.resolve_seats(request.waitlist_entry.seats, max_seats, "waitlist_entry.seats")
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    try:
        parse_invite_token(request.invite_token)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    canonical = service_pb2.JoinWaitlistRequest(
        parent=request.parent,
        waitlist_entry=resources_pb2.WaitlistEntry(seats=seats),
        request_id=request.request_id,
        invite_token=request.invite_token,
    )
    key = None
    try:
        key = request_key(user, "JoinWaitlist", canonical, request.request_id)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    v.raise_if_any()
    assert event_id is not None
    return JoinWaitlist(user, event_id, seats, request.invite_token, key, context.request_id())


def to_entry_action(
    request: service_pb2.LeaveWaitlistRequest | service_pb2.ClaimOfferRequest | service_pb2.DeclineOfferRequest,
    user: User,
    method: str,
) -> EntryAction:
    v = Violations()
    ids = None
    try:
        ids = names.parse_waitlist_entry(request.name)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    key = None
    try:
        key = request_key(user, method, request, request.request_id)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    v.raise_if_any()
    assert ids is not None
    return EntryAction(user, ids[0], ids[1], key, context.request_id())


def to_get_query(request: service_pb2.GetWaitlistEntryRequest, user: User) -> GetEntry:
    event_id, entry_id = names.parse_waitlist_entry(request.name)
    return GetEntry(user, event_id, entry_id)


def to_list_query(request: service_pb2.ListWaitlistRequest, user: User) -> ListWaitlist:
    v = Violations()
    event_id = None
    try:
        event_id = names.parse_event(request.parent, "parent")
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    v.raise_if_any()
    assert event_id is not None
    return ListWaitlist(user, event_id, request.page_size, request.page_token)


def entry_to_proto(e: WaitlistEntry) -> resources_pb2.WaitlistEntry:
    msg = resources_pb2.WaitlistEntry(
        name=e.name,
        guest=names.user(e.guest_id),
        guest_display_name=e.guest_display_name,
        seats=e.seats,
        state=_STATE_TO_PROTO[e.state],
        position=e.position,
        create_time=to_timestamp(e.create_time),
        update_time=to_timestamp(e.update_time),
        offer_time=to_timestamp(e.offer_time),
        offer_expire_time=to_timestamp(e.offer_expire_time),
        booking=names.booking(e.booking_id) if e.booking_id else "",
    )
    if e.guest_rating is not None:
        msg.guest_rating.CopyFrom(rating_to_proto(e.guest_rating))
    if e.guest_reliability is not None:
        msg.guest_reliability.CopyFrom(reliability_to_proto(e.guest_reliability))
    return msg
