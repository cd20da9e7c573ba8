"""BookingService over gRPC: proto in → command → service → proto out. Errors are raised as domain exceptions and
turned into google.rpc.Status by the interceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

from services.booking import mappers
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
