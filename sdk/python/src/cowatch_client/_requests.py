"""Request messages of every call, built the same way for the sync and the asyncio client."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from google.protobuf import field_mask_pb2, timestamp_pb2

from cowatch_client._proto.cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch_client._proto.cowatch.booking.v1 import service_pb2 as booking_service
from cowatch_client._proto.cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch_client._proto.cowatch.event.v1 import service_pb2 as event_service
from cowatch_client._proto.cowatch.review.v1 import resources_pb2 as review_pb2
from cowatch_client._proto.cowatch.review.v1 import service_pb2 as review_service


class PagedRequest(Protocol):
    page_token: str


class Page(Protocol):
    next_page_token: str


RequestT = TypeVar("RequestT", bound=PagedRequest)
PageT = TypeVar("PageT", bound=Page)
ItemT = TypeVar("ItemT")

PageItems = Callable[[PageT], Iterable[ItemT]]


def request_id(given: str | None) -> str:
    """The caller's idempotency key, or a fresh UUID4. Built once per call: gRPC's retries resend the same bytes."""
    return given or str(uuid.uuid4())


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _mask(paths: Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    return None if paths is None else field_mask_pb2.FieldMask(paths=list(paths))


def user_name(user: str) -> str:
    """``users/{id}`` for an id or a name."""
    return user if user.startswith("users/") else f"users/{user}"


# ---------------------------------------------------------------------------------------------- events


def create_event(event: event_pb2.Event, rid: str | None) -> event_service.CreateEventRequest:
    return event_service.CreateEventRequest(event=event, request_id=request_id(rid))


def get_event(name: str, invite_token: str) -> event_service.GetEventRequest:
    return event_service.GetEventRequest(name=name, invite_token=invite_token)


def rotate_calendar_token() -> event_service.RotateCalendarTokenRequest:
    return event_service.RotateCalendarTokenRequest()


def get_calendar(token: str) -> event_service.GetCalendarRequest:
    return event_service.GetCalendarRequest(token=token)


def export_event_calendar(name: str, invite_token: str) -> event_service.ExportEventCalendarRequest:
    return event_service.ExportEventCalendarRequest(name=name, invite_token=invite_token)


def list_events(
    *,
    film_id: str,
    city: str,
    start_time_from: datetime | None,
    start_time_to: datetime | None,
    has_free_seats: bool,
    host: str,
    query: str,
    page_size: int,
) -> event_service.ListEventsRequest:
    return event_service.ListEventsRequest(
        film_id=film_id,
        city=city,
        start_time_from=_timestamp(start_time_from),
        start_time_to=_timestamp(start_time_to),
        has_free_seats=has_free_seats,
        host=user_name(host) if host else "",
        query=query,
        page_size=page_size,
    )


def update_event(event: event_pb2.Event, update_mask: Sequence[str] | None) -> event_service.UpdateEventRequest:
    return event_service.UpdateEventRequest(event=event, update_mask=_mask(update_mask))


def cancel_event(name: str, etag: str, reason: str, rid: str | None) -> event_service.CancelEventRequest:
    return event_service.CancelEventRequest(name=name, etag=etag, reason=reason, request_id=request_id(rid))


def complete_event(name: str, etag: str) -> event_service.CompleteEventRequest:
    return event_service.CompleteEventRequest(name=name, etag=etag)


def list_guests(event: str, page_size: int) -> event_service.ListEventGuestsRequest:
    return event_service.ListEventGuestsRequest(parent=event, page_size=page_size)


def send_invitations(
    name: str, users: Iterable[str], message: str, rid: str | None
) -> event_service.SendInvitationsRequest:
    return event_service.SendInvitationsRequest(
        name=name, users=[user_name(u) for u in users], message=message, request_id=request_id(rid)
    )


def rotate_invite_token(name: str) -> event_service.RotateInviteTokenRequest:
    return event_service.RotateInviteTokenRequest(name=name)


# ---------------------------------------------------------------------------------------------- bookings


def create_booking(event: str, seats: int, invite_token: str, rid: str | None) -> booking_service.CreateBookingRequest:
    return booking_service.CreateBookingRequest(
        booking=booking_pb2.Booking(event=event, seats=seats), invite_token=invite_token, request_id=request_id(rid)
    )


def get_booking(name: str) -> booking_service.GetBookingRequest:
    return booking_service.GetBookingRequest(name=name)


def list_bookings(
    state: booking_pb2.Booking.State.ValueType, time: booking_service.TimeFilter.ValueType, page_size: int
) -> booking_service.ListBookingsRequest:
    return booking_service.ListBookingsRequest(state=state, time=time, page_size=page_size)


def cancel_booking(name: str, rid: str | None) -> booking_service.CancelBookingRequest:
    return booking_service.CancelBookingRequest(name=name, request_id=request_id(rid))


# ---------------------------------------------------------------------------------------------- waitlist


def join_waitlist(event: str, seats: int, invite_token: str, rid: str | None) -> booking_service.JoinWaitlistRequest:
    return booking_service.JoinWaitlistRequest(
        parent=event,
        waitlist_entry=booking_pb2.WaitlistEntry(seats=seats),
        invite_token=invite_token,
        request_id=request_id(rid),
    )


def get_waitlist_entry(name: str) -> booking_service.GetWaitlistEntryRequest:
    return booking_service.GetWaitlistEntryRequest(name=name)


def list_waitlist(event: str, page_size: int) -> booking_service.ListWaitlistRequest:
    return booking_service.ListWaitlistRequest(parent=event, page_size=page_size)


def leave_waitlist(name: str, rid: str | None) -> booking_service.LeaveWaitlistRequest:
    return booking_service.LeaveWaitlistRequest(name=name, request_id=request_id(rid))


def claim_offer(name: str, rid: str | None) -> booking_service.ClaimOfferRequest:
    return booking_service.ClaimOfferRequest(name=name, request_id=request_id(rid))


def decline_offer(name: str, rid: str | None) -> booking_service.DeclineOfferRequest:
    return booking_service.DeclineOfferRequest(name=name, request_id=request_id(rid))


def mark_attendance(name: str, attendance: booking_pb2.Attendance.ValueType) -> booking_service.MarkAttendanceRequest:
    return booking_service.MarkAttendanceRequest(name=name, attendance=attendance)


# ---------------------------------------------------------------------------------------------- reviews


def create_review(review: review_pb2.Review, rid: str | None) -> review_service.CreateReviewRequest:
    return review_service.CreateReviewRequest(review=review, request_id=request_id(rid))


def update_review(review: review_pb2.Review, update_mask: Sequence[str] | None) -> review_service.UpdateReviewRequest:
    return review_service.UpdateReviewRequest(review=review, update_mask=_mask(update_mask))


def delete_review(name: str, etag: str) -> review_service.DeleteReviewRequest:
    return review_service.DeleteReviewRequest(name=name, etag=etag)


def list_reviews(
    event: str, subject_user: str, subject_type: review_pb2.Review.SubjectType.ValueType, page_size: int
) -> review_service.ListReviewsRequest:
    return review_service.ListReviewsRequest(
        event=event,
        subject_user=user_name(subject_user) if subject_user else "",
        subject_type=subject_type,
        page_size=page_size,
    )


def get_user_rating(user: str) -> review_service.GetUserRatingRequest:
    return review_service.GetUserRatingRequest(name=f"{user_name(user)}/rating")


def get_host_profile(user: str) -> review_service.GetHostProfileRequest:
    return review_service.GetHostProfileRequest(name=f"{user_name(user)}/hostProfile")


def list_held_events(host: str, page_size: int) -> review_service.ListHeldEventsRequest:
    return review_service.ListHeldEventsRequest(parent=f"{user_name(host)}/hostProfile", page_size=page_size)
