"""Wiring of the BookingService process. Not implemented yet: every RPC answers UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc
from cowatch.booking.v1 import service_pb2, service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.clock import Clock, SystemClock
from services.common.settings import CommonSettings

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name


class BookingSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-booking"
    grpc_port: int = Field(default=50052, ge=0, le=65535)


class BookingApp:
    name = "booking"

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._pool: db.Pool | None = None

    @property
    def service_names(self) -> Sequence[str]:
        return (SERVICE_NAME,)

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return frozenset()

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_BookingServiceServicer_to_server(service_pb2_grpc.BookingServiceServicer(), server)  # type: ignore[abstract]  # placeholder: UNIMPLEMENTED

    async def start(self) -> None:
        self._pool = await db.create_pool(self._settings, application_name=self._settings.service_name)

    async def ready(self) -> bool:
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._pool is not None:
            await db.close_pool(self._pool)
