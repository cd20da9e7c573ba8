"""Wiring of the BookingService process: settings, pool, cache, service, servicer (the one place they meet)."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import grpc
from cowatch.booking.v1 import service_pb2_grpc
from pydantic import Field

from services.booking.domain import DEFAULT_MAX_SEATS, SEATS_CEILING
from services.booking.service import BookingService
from services.booking.servicer import SERVICE_NAME, BookingServicer
from services.common import db
from services.common.app import ServiceApp
from services.common.cache import Cache
from services.common.settings import CommonSettings
from services.event import cache as event_cache
from services.review import cache as review_cache

__all__ = ["SERVICE_NAME", "BookingApp", "BookingSettings"]


class BookingSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-booking"
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    max_seats_per_booking: int = Field(
        default=DEFAULT_MAX_SEATS, ge=1, le=SEATS_CEILING, description="Most seats one booking may hold"
    )
    attendance_period_days: int = Field(
        default=7, ge=1, le=90, description="How long after an event is held its host may mark attendance"
    )


class BookingApp(ServiceApp[BookingService]):
    """The BookingService process (lifecycle in :class:`services.common.app.ServiceApp`). Every method needs a
    token. The cache is only invalidated here (EventService's cached event rows show the seats, and both
    EventService's and ReviewService's caches show a host's name), never read."""

    name = "booking"
    proto_service = SERVICE_NAME

    @property
    def bookings(self) -> BookingService:
        return self.service

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_BookingServiceServicer_to_server(BookingServicer(lambda: self.service), server)

    def build(self, pool: db.Pool, cache: Cache) -> BookingService:
        s = self._settings
        max_seats = s.max_seats_per_booking if isinstance(s, BookingSettings) else DEFAULT_MAX_SEATS
        # EventService caches event rows, seats included: its cache hears every seat change made here; both
        # caches show a host's name, which a booking's write may change (users.remember).
        subscribers = event_cache.handlers(cache).merged(review_cache.handlers(cache))
        window = timedelta(seconds=s.waitlist_claim_window_seconds)
        period = timedelta(days=s.attendance_period_days if isinstance(s, BookingSettings) else 7)
        return BookingService(
            pool,
            self._clock,
            s.public_base_url,
            max_seats,
            subscribers=subscribers,
            claim_window=window,
            attendance_period=period,
        )
