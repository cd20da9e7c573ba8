"""Wiring of the EventService process: settings, pool, service, servicer (the one place they meet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc
from cowatch.event.v1 import service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.clock import Clock, SystemClock
from services.common.errors import Unavailable
from services.common.settings import CommonSettings
from services.event.service import EventService
from services.event.servicer import ANONYMOUS_METHODS, SERVICE_NAME, EventServicer


class EventSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-event"
    grpc_port: int = Field(default=50051, ge=0, le=65535)


class EventApp:
    """The EventService process. The pool opens in ``start()``; RPCs before that answer UNAVAILABLE."""

    name = "event"

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._pool: db.Pool | None = None
        self._service: EventService | None = None

    @property
    def service_names(self) -> Sequence[str]:
        return (SERVICE_NAME,)

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return ANONYMOUS_METHODS

    @property
    def events(self) -> EventService:
        if self._service is None:
            raise Unavailable("SERVICE_STARTING", "the service is starting, retry shortly")
        return self._service

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(lambda: self.events), server)

    async def start(self) -> None:
        self._pool = await db.create_pool(self._settings, application_name=self._settings.service_name)
        self._service = EventService(self._pool, self._clock, self._settings.public_base_url)

    async def ready(self) -> bool:
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._pool is not None:
            await db.close_pool(self._pool)
