"""The asyncio client: ``AsyncCowatchClient(target, token=...)``, the same API as :class:`CowatchClient` awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import grpc

from cowatch_client import _requests as req
from cowatch_client._proto.cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch_client._proto.cowatch.booking.v1 import service_pb2 as booking_service
from cowatch_client._proto.cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch_client._proto.cowatch.event.v1 import resources_pb2 as event_pb2
from cowatch_client._proto.cowatch.event.v1 import service_pb2 as event_service
from cowatch_client._proto.cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch_client._proto.cowatch.review.v1 import resources_pb2 as review_pb2
from cowatch_client._proto.cowatch.review.v1 import service_pb2_grpc as review_grpc
from cowatch_client.errors import from_rpc_error
from cowatch_client.options import ClientOptions, channel_arguments

__all__ = ["AsyncBookings", "AsyncCowatchClient", "AsyncEvents", "AsyncReviews"]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class _Invoker:
    """Calls one method with the token and a deadline, and turns its failure into a typed exception."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self._metadata = metadata
        self._timeout = timeout

    async def __call__(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None = None,
    ) -> ResponseT:
        try:
            return await method(request, timeout=timeout or self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    async def paginate(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[req.RequestT, req.PageT],
        request: req.RequestT,
        items: req.PageItems[req.PageT, req.ItemT],
        timeout: float | None = None,
    ) -> AsyncIterator[req.ItemT]:
        """Every item of every page, fetching the next page only when the previous one is used up."""
        while True:
            page = await self(method, request, timeout)
            for item in items(page):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token


class AsyncEvents:
    """EventService: hosts create and run screenings; everyone finds them."""

    def __init__(self, stub: event_grpc.EventServiceAsyncStub, call: _Invoker) -> None:
        self._stub = stub
        self._call = call

    async def create(
        self, event: event_pb2.Event, *, request_id: str | None = None, timeout: float | None = None
    ) -> event_pb2.Event:
        """Creates ``event`` hosted by the caller. Retried safely: the same ``request_id`` never creates two."""
        return await self._call(self._stub.CreateEvent, req.create_event(event, request_id), timeout)

    async def get(self, name: str, *, invite_token: str = "", timeout: float | None = None) -> event_pb2.Event:
        """The event ``events/{id}`` (a private one needs the ``invite_token`` from its share link)."""
        return await self._call(self._stub.GetEvent, req.get_event(name, invite_token), timeout)

    async def export_calendar(self, name: str, *, invite_token: str = "", timeout: float | None = None) -> bytes:
        """The event as an iCalendar file (``text/calendar``, RFC 5545) to add to a calendar; who may get the event
        may download it (the exact address only for its host and confirmed guests)."""
        body = await self._call(self._stub.ExportEventCalendar, req.export_event_calendar(name, invite_token), timeout)
        return bytes(body.data)

    async def rotate_calendar_token(self, *, timeout: float | None = None) -> event_service.CalendarToken:
        """A new private calendar token for the caller (the old one stops working) and the feed URL to subscribe
        to. Keep it secret: it is the feed's only credential. Never retried."""
        return await self._call(self._stub.RotateCalendarToken, req.rotate_calendar_token(), timeout)

    async def calendar(self, token: str, *, timeout: float | None = None) -> bytes:
        """The private calendar feed (``text/calendar``) of the token's owner: events hosted and booked."""
        body = await self._call(self._stub.GetCalendar, req.get_calendar(token), timeout)
        return bytes(body.data)

    def list(
        self,
        *,
        film_id: str = "",
        city: str = "",
        start_time_from: datetime | None = None,
        start_time_to: datetime | None = None,
        has_free_seats: bool = False,
        host: str = "",
        query: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[event_pb2.Event]:
        """Public upcoming events matching every filter given, soonest first, fetched page by page as iterated."""
        request = req.list_events(
            film_id=film_id,
            city=city,
            start_time_from=start_time_from,
            start_time_to=start_time_to,
            has_free_seats=has_free_seats,
            host=host,
            query=query,
            page_size=page_size,
        )
        return self._call.paginate(self._stub.ListEvents, request, lambda page: page.events, timeout)

    async def update(
        self, event: event_pb2.Event, *, update_mask: Sequence[str] | None = None, timeout: float | None = None
    ) -> event_pb2.Event:
        """Updates the fields of ``update_mask`` (all populated fields if ``None``); a stale ``event.etag`` raises
        :class:`~cowatch_client.errors.Conflict`. Never retried."""
        return await self._call(self._stub.UpdateEvent, req.update_event(event, update_mask), timeout)

    async def cancel(
        self,
        name: str,
        *,
        etag: str = "",
        reason: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> event_pb2.Event:
        """Cancels the event (its guests are told, with ``reason``)."""
        return await self._call(self._stub.CancelEvent, req.cancel_event(name, etag, reason, request_id), timeout)

    async def complete(self, name: str, *, etag: str = "", timeout: float | None = None) -> event_pb2.Event:
        """Marks an ended event as held, which opens reviews. Never retried."""
        return await self._call(self._stub.CompleteEvent, req.complete_event(name, etag), timeout)

    def guests(self, event: str, *, page_size: int = 0, timeout: float | None = None) -> AsyncIterator[event_pb2.Guest]:
        """The event's confirmed guests with their ratings (host only), page by page."""
        return self._call.paginate(
            self._stub.ListEventGuests, req.list_guests(event, page_size), lambda page: page.guests, timeout
        )

    async def send_invitations(
        self,
        name: str,
        users: Iterable[str],
        *,
        message: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> event_service.SendInvitationsResponse:
        """Invites ``users`` (ids or ``users/{id}`` names) to the event by mail, with its share link."""
        request = req.send_invitations(name, users, message, request_id)
        return await self._call(self._stub.SendInvitations, request, timeout)

    async def rotate_invite_token(self, name: str, *, timeout: float | None = None) -> event_pb2.Event:
        """Replaces a private event's invite token (old share links stop working). Never retried."""
        return await self._call(self._stub.RotateInviteToken, req.rotate_invite_token(name), timeout)


class AsyncBookings:
    """BookingService: guests book and cancel seats, wait for them (waitlist offers), hosts mark attendance."""

    def __init__(self, stub: booking_grpc.BookingServiceAsyncStub, call: _Invoker) -> None:
        self._stub = stub
        self._call = call

    async def create(
        self,
        event: str,
        *,
        seats: int = 1,
        invite_token: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.Booking:
        """Books ``seats`` of ``events/{id}`` for the caller. Retried safely: one ``request_id``, one booking."""
        request = req.create_booking(event, seats, invite_token, request_id)
        return await self._call(self._stub.CreateBooking, request, timeout)

    async def get(self, name: str, *, timeout: float | None = None) -> booking_pb2.Booking:
        """The caller's booking ``bookings/{id}``."""
        return await self._call(self._stub.GetBooking, req.get_booking(name), timeout)

    def list(
        self,
        *,
        state: booking_pb2.Booking.State.ValueType = booking_pb2.Booking.STATE_UNSPECIFIED,
        time: booking_service.TimeFilter.ValueType = booking_service.TIME_FILTER_UNSPECIFIED,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[booking_pb2.Booking]:
        """The caller's bookings, page by page as iterated."""
        request = req.list_bookings(state, time, page_size)
        return self._call.paginate(self._stub.ListBookings, request, lambda page: page.bookings, timeout)

    async def cancel(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> booking_pb2.Booking:
        """Cancels the caller's booking and frees its seats."""
        return await self._call(self._stub.CancelBooking, req.cancel_booking(name, request_id), timeout)

    # ------------------------------------------------------------------ waitlist

    async def join_waitlist(
        self,
        event: str,
        *,
        seats: int = 1,
        invite_token: str = "",
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> booking_pb2.WaitlistEntry:
        """Joins the waitlist of a sold-out ``events/{id}``. Retried safely: one ``request_id``, one entry."""
        request = req.join_waitlist(event, seats, invite_token, request_id)
        return await self._call(self._stub.JoinWaitlist, request, timeout)

    async def waitlist_entry(self, name: str, *, timeout: float | None = None) -> booking_pb2.WaitlistEntry:
        """The entry ``events/{id}/waitlistEntries/{id}``: state, position, offer deadline."""
        return await self._call(self._stub.GetWaitlistEntry, req.get_waitlist_entry(name), timeout)

    def waitlist(
        self, event: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[booking_pb2.WaitlistEntry]:
        """The host's view of an event's open entries in join order, page by page as iterated."""
        request = req.list_waitlist(event, page_size)
        return self._call.paginate(self._stub.ListWaitlist, request, lambda page: page.waitlist_entries, timeout)

    async def leave_waitlist(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> booking_pb2.WaitlistEntry:
        """Leaves the waitlist; an offer's held seats go to the next entry."""
        return await self._call(self._stub.LeaveWaitlist, req.leave_waitlist(name, request_id), timeout)

    async def claim_offer(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> booking_pb2.Booking:
        """Turns an open offer into a confirmed booking. Retried safely: one ``request_id``, one booking."""
        return await self._call(self._stub.ClaimOffer, req.claim_offer(name, request_id), timeout)

    async def decline_offer(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> booking_pb2.WaitlistEntry:
        """Declines an open offer: the seats go to the next entry that fits."""
        return await self._call(self._stub.DeclineOffer, req.decline_offer(name, request_id), timeout)

    async def mark_attendance(
        self, booking: str, attendance: booking_pb2.Attendance.ValueType, *, timeout: float | None = None
    ) -> booking_pb2.Booking:
        """(Host) marks a confirmed guest of a held event ``ATTENDED`` or ``NO_SHOW``; idempotent (a plain set, so
        not retried by the client: repeat it yourself)."""
        return await self._call(self._stub.MarkAttendance, req.mark_attendance(booking, attendance), timeout)


class AsyncReviews:
    """ReviewService: guests and hosts review each other after a held event; ratings and host profiles."""

    def __init__(self, stub: review_grpc.ReviewServiceAsyncStub, call: _Invoker) -> None:
        self._stub = stub
        self._call = call

    async def create(
        self, review: review_pb2.Review, *, request_id: str | None = None, timeout: float | None = None
    ) -> review_pb2.Review:
        """Reviews a guest or the host of a held event the caller took part in. Reviews are blind: the result is
        ``PENDING_REVEAL`` (seen by its author only) until the other person has reviewed the author too (then
        ``REVEALED``, both at once) or the review window closes (``window_close_time``)."""
        return await self._call(self._stub.CreateReview, req.create_review(review, request_id), timeout)

    async def update(
        self, review: review_pb2.Review, *, update_mask: Sequence[str] | None = None, timeout: float | None = None
    ) -> review_pb2.Review:
        """Edits the caller's review while it is pending (``etag`` checked when set). Never retried."""
        return await self._call(self._stub.UpdateReview, req.update_review(review, update_mask), timeout)

    async def delete(self, name: str, *, etag: str = "", timeout: float | None = None) -> None:
        """Withdraws the caller's review while it is still ``PENDING_REVEAL`` (``etag`` checked when set); a
        revealed review is frozen (``REVIEW_FROZEN``). Never retried."""
        await self._call(self._stub.DeleteReview, req.delete_review(name, etag), timeout)

    def list(
        self,
        *,
        event: str = "",
        subject_user: str = "",
        subject_type: review_pb2.Review.SubjectType.ValueType = review_pb2.Review.SUBJECT_TYPE_UNSPECIFIED,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[review_pb2.Review]:
        """Revealed reviews of an event or of a user, and the caller's own pending ones, page by page."""
        request = req.list_reviews(event, subject_user, subject_type, page_size)
        return self._call.paginate(self._stub.ListReviews, request, lambda page: page.reviews, timeout)

    async def user_rating(self, user: str, *, timeout: float | None = None) -> review_pb2.UserRating:
        """A user's average ratings as a guest and as a host (``user``: an id or ``users/{id}``)."""
        return await self._call(self._stub.GetUserRating, req.get_user_rating(user), timeout)

    async def host_profile(self, user: str, *, timeout: float | None = None) -> review_pb2.HostProfile:
        """A host's public profile: rating and held events."""
        return await self._call(self._stub.GetHostProfile, req.get_host_profile(user), timeout)

    def held_events(
        self, host: str, *, page_size: int = 0, timeout: float | None = None
    ) -> AsyncIterator[review_pb2.HeldEvent]:
        """The events a host has held, with their average ratings, page by page as iterated."""
        return self._call.paginate(
            self._stub.ListHeldEvents, req.list_held_events(host, page_size), lambda page: page.held_events, timeout
        )


class AsyncCowatchClient:
    """An asyncio client of the cowatch API (through its gateway, or one service directly).

    Use it as an async context manager, or await :meth:`close`. Create it inside the event loop that uses it.
    """

    events: AsyncEvents
    """EventService: create, find, edit, cancel and complete events; guests and invitations."""

    bookings: AsyncBookings
    """BookingService: book and cancel seats; the caller's bookings."""

    reviews: AsyncReviews
    """ReviewService: reviews, user ratings, host profiles and held events."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        """``target``: ``host:port`` of the gateway; ``token``: the caller's bearer token (JWT); ``credentials``:
        TLS (plaintext when ``None``)."""
        options = options or ClientOptions()
        arguments = channel_arguments(options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=arguments)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=arguments)
        call = _Invoker(req.auth_metadata(token), options.timeout)
        self.events = AsyncEvents(event_grpc.EventServiceStub(self._channel), call)
        self.bookings = AsyncBookings(booking_grpc.BookingServiceStub(self._channel), call)
        self.reviews = AsyncReviews(review_grpc.ReviewServiceStub(self._channel), call)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncCowatchClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
