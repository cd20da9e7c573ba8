"""Proto ↔ domain for BookingService. Generated types stop here: nothing below the servicer sees them."""

from __future__ import annotations

from cowatch.booking.v1 import resources_pb2, service_pb2

from services.booking import domain
from services.booking.domain import Booking, TimeFilter
from services.booking.service import CancelBooking, CreateBooking, GetBooking, ListBookings, MarkAttendance
from services.common import context, names
from services.common.errors import InvalidArgument, Violations
from services.common.identity import User
from services.common.links import parse_invite_token
from services.common.protos import request_key, to_timestamp

_STATE_TO_PROTO = {
    domain.State.CONFIRMED: resources_pb2.Booking.CONFIRMED,
    domain.State.CANCELLED: resources_pb2.Booking.CANCELLED,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}
_ATTENDANCE_TO_PROTO = {
    domain.Attendance.ATTENDED: resources_pb2.ATTENDED,
    domain.Attendance.NO_SHOW: resources_pb2.NO_SHOW,
}
_ATTENDANCE_FROM_PROTO = {v: k for k, v in _ATTENDANCE_TO_PROTO.items()}
_TIME_FROM_PROTO = {
    service_pb2.TIME_FILTER_UNSPECIFIED: TimeFilter.ANY,
    service_pb2.UPCOMING: TimeFilter.UPCOMING,
    service_pb2.PAST: TimeFilter.PAST,
}


def to_create_command(request: service_pb2.CreateBookingRequest, user: User, max_seats: int) -> CreateBooking:
    v = Violations()
    if not request.HasField("booking"):
        raise InvalidArgument.field("booking", "is required")
    event_id = None
    if not request.booking.event:
        v.add("booking.event", "is required")
    else:
        try:
            event_id = names.parse_event(request.booking.event, "booking.event")
        except InvalidArgument as exc:
            v.add(*exc.field_violations[0])
    seats = 1
    try:
        seats = domain.resolve_seats(request.booking.seats, max_seats)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    try:
        parse_invite_token(request.invite_token)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    try:
        key = request_key(user, "CreateBooking", _canonical_create(request, seats), request.request_id)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    v.raise_if_any()
    assert event_id is not None
    return CreateBooking(
        user=user,
        event_id=event_id,
        seats=seats,
        invite_token=request.invite_token,
        request=key,
        trace_id=context.request_id(),
    )


def _canonical_create(request: service_pb2.CreateBookingRequest, seats: int) -> service_pb2.CreateBookingRequest:
    """What makes two CreateBooking requests "the same" for AIP-155: the event, the seats (0 and 1 are the same
    request) and the invite token; output-only fields a client may echo back don't count."""
    return service_pb2.CreateBookingRequest(
        booking=resources_pb2.Booking(event=request.booking.event, seats=seats),
        request_id=request.request_id,
        invite_token=request.invite_token,
    )


def to_cancel_command(request: service_pb2.CancelBookingRequest, user: User) -> CancelBooking:
    v = Violations()
    booking_id = None
    try:
        booking_id = domain.parse_booking_name(request.name)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    try:
        key = request_key(user, "CancelBooking", request, request.request_id)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    v.raise_if_any()
    assert booking_id is not None
    return CancelBooking(user=user, booking_id=booking_id, request=key, trace_id=context.request_id())


def to_get_query(request: service_pb2.GetBookingRequest, user: User) -> GetBooking:
    return GetBooking(user=user, booking_id=domain.parse_booking_name(request.name))


def to_list_query(request: service_pb2.ListBookingsRequest, user: User) -> ListBookings:
    v = Violations()
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    state: domain.State | None = None
    if request.state != resources_pb2.Booking.STATE_UNSPECIFIED:
        state = _STATE_FROM_PROTO.get(request.state)
        if state is None:
            v.add("state", "must be CONFIRMED or CANCELLED (or unset for both)")
    time = _TIME_FROM_PROTO.get(request.time)
    if time is None:
        v.add("time", "must be UPCOMING or PAST (or unset for both)")
    v.raise_if_any()
    return ListBookings(
        user=user,
        page_size=request.page_size,
        page_token=request.page_token,
        state=state,
        time=time or TimeFilter.ANY,
    )


def booking_to_proto(b: Booking) -> resources_pb2.Booking:
    msg = resources_pb2.Booking(
        name=b.name,
        event=names.event(b.event_id),
        guest=names.user(b.guest_id),
        seats=b.seats,
        state=_STATE_TO_PROTO[b.state],
        event_title=b.event_title,
        event_start_time=to_timestamp(b.event_start_time),
        event_end_time=to_timestamp(b.event_end_time),
        create_time=to_timestamp(b.create_time),
    )
    if b.cancel_time is not None:
        msg.cancel_time.FromDatetime(b.cancel_time)
    if b.attendance is not None:
        msg.attendance = _ATTENDANCE_TO_PROTO[b.attendance]
    return msg


def to_mark_attendance_command(request: service_pb2.MarkAttendanceRequest, user: User) -> MarkAttendance:
    v = Violations()
    booking_id = None
    try:
        booking_id = domain.parse_booking_name(request.name)
    except InvalidArgument as exc:
        v.add(*exc.field_violations[0])
    attendance = _ATTENDANCE_FROM_PROTO.get(request.attendance)
    if attendance is None:
        v.add("attendance", "must be ATTENDED or NO_SHOW")
    v.raise_if_any()
    assert booking_id is not None and attendance is not None
    return MarkAttendance(user, booking_id, attendance, context.request_id())
