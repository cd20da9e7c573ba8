"""BookingService over gRPC: proto in → command → service → proto out. Errors are raised as domain exceptions and
turned into google.rpc.Status by the interceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

from services.booking import mappers, waitlist_mappers
from services.booking.service import BookingService
from services.common.context import require_user

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name
Ctx = grpc.aio.ServicerContext[Any, Any]


class BookingServicer(service_pb2_grpc.BookingServiceServicer):
    def __init__(self, bookings: Callable[[], BookingService]) -> None:
        self._get_bookings = bookings

    @property
    def _bookings(self) -> BookingService:
        return self._get_bookings()

    async def CreateBooking(self, request: service_pb2.CreateBookingRequest, context: Ctx) -> resources_pb2.Booking:
        service = self._bookings
        command = mappers.to_create_command(request, require_user(), service.max_seats)
        return mappers.booking_to_proto(await service.create(command))

    async def GetBooking(self, request: service_pb2.GetBookingRequest, context: Ctx) -> resources_pb2.Booking:
        return mappers.booking_to_proto(await self._bookings.get(mappers.to_get_query(request, require_user())))

    async def ListBookings(
        self, request: service_pb2.ListBookingsRequest, context: Ctx
    ) -> service_pb2.ListBookingsResponse:
        page = await self._bookings.list(mappers.to_list_query(request, require_user()))
        return service_pb2.ListBookingsResponse(
            bookings=[mappers.booking_to_proto(b) for b in page.items], next_page_token=page.next_page_token
        )

    async def CancelBooking(self, request: service_pb2.CancelBookingRequest, context: Ctx) -> resources_pb2.Booking:
        return mappers.booking_to_proto(await self._bookings.cancel(mappers.to_cancel_command(request, require_user())))

    # ----------------------------------------------------------------- waitlist

    async def JoinWaitlist(self, request: service_pb2.JoinWaitlistRequest, context: Ctx) -> resources_pb2.WaitlistEntry:
        service = self._bookings
        command = waitlist_mappers.to_join_command(request, require_user(), service.max_seats)
        return waitlist_mappers.entry_to_proto(await service.waitlist.join(command))

    async def GetWaitlistEntry(
        self, request: service_pb2.GetWaitlistEntryRequest, context: Ctx
    ) -> resources_pb2.WaitlistEntry:
        query = waitlist_mappers.to_get_query(request, require_user())
        return waitlist_mappers.entry_to_proto(await self._bookings.waitlist.get(query))

    async def ListWaitlist(
        self, request: service_pb2.ListWaitlistRequest, context: Ctx
    ) -> service_pb2.ListWaitlistResponse:
        page = await self._bookings.waitlist.list(waitlist_mappers.to_list_query(request, require_user()))
        return service_pb2.ListWaitlistResponse(
            waitlist_entries=[waitlist_mappers.entry_to_proto(e) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def LeaveWaitlist(
        self, request: service_pb2.LeaveWaitlistRequest, context: Ctx
    ) -> resources_pb2.WaitlistEntry:
        command = waitlist_mappers.to_entry_action(request, require_user(), "LeaveWaitlist")
        return waitlist_mappers.entry_to_proto(await self._bookings.waitlist.leave(command))

    async def DeclineOffer(self, request: service_pb2.DeclineOfferRequest, context: Ctx) -> resources_pb2.WaitlistEntry:
        command = waitlist_mappers.to_entry_action(request, require_user(), "DeclineOffer")
        return waitlist_mappers.entry_to_proto(await self._bookings.waitlist.decline(command))

    async def ClaimOffer(self, request: service_pb2.ClaimOfferRequest, context: Ctx) -> resources_pb2.Booking:
        command = waitlist_mappers.to_entry_action(request, require_user(), "ClaimOffer")
        return mappers.booking_to_proto(await self._bookings.waitlist.claim(command))

    # ----------------------------------------------------------------- attendance

    async def MarkAttendance(self, request: service_pb2.MarkAttendanceRequest, context: Ctx) -> resources_pb2.Booking:
        command = mappers.to_mark_attendance_command(request, require_user())
        return mappers.booking_to_proto(await self._bookings.mark_attendance(command))
