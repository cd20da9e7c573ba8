"""Wiring of the BookingService process: settings, pool, cache, service, servicer (the one place they meet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc
from cowatch.booking.v1 import service_pb2_grpc
from pydantic import Field

from services.booking.domain import DEFAULT_MAX_SEATS, SEATS_CEILING
from services.booking.service import BookingService
from services.booking.servicer import SERVICE_NAME, BookingServicer
from services.common import db
from services.common.cache import Cache, cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.errors import Unavailable
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings

__all__ = ["SERVICE_NAME", "BookingApp", "BookingSettings"]


class BookingSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-booking"
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    max_seats_per_booking: int = Field(
        default=DEFAULT_MAX_SEATS, ge=1, le=SEATS_CEILING, description="Most seats one booking may hold"
    )


class BookingApp:
    """The BookingService process. The pool opens in ``start()``; RPCs before that answer UNAVAILABLE."""

    name = "booking"

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._metrics: ServerMetrics | None = None
        self._pool: db.Pool | None = None
        self._cache: Cache | None = None
        self._service: BookingService | None = None
        self._max_seats = settings.max_seats_per_booking if isinstance(settings, BookingSettings) else DEFAULT_MAX_SEATS

    @property
    def service_names(self) -> Sequence[str]:
        return (SERVICE_NAME,)

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return frozenset()

    @property
    def bookings(self) -> BookingService:
        if self._service is None:
            raise Unavailable("SERVICE_STARTING", "the service is starting, retry shortly")
        return self._service

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_BookingServiceServicer_to_server(BookingServicer(lambda: self.bookings), server)

    async def start(self) -> None:
        s = self._settings
        self._pool = await db.create_pool(s, application_name=s.service_name)
        # Only invalidated here (EventService's cached event rows show the seats); never read.
        self._cache = cache_from_settings(s, self._metrics)
        if self._metrics is not None:
            self._metrics.track_pool(self.name, self._pool)
        self._service = BookingService(self._pool, self._clock, s.public_base_url, self._max_seats, self._cache)

    async def ready(self) -> bool:
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._pool is not None:
            await db.close_pool(self._pool)
