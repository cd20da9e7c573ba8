"""Wiring of the EventService process: settings, pool, cache, service, servicer (the one place they meet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc
from cowatch.event.v1 import service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.cache import Cache, cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.errors import Unavailable
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings
from services.event.service import EventService
from services.event.servicer import ANONYMOUS_METHODS, SERVICE_NAME, EventServicer


class EventSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-event"
    grpc_port: int = Field(default=50051, ge=0, le=65535)


class EventApp:
    """The EventService process. ``start()`` never waits for Postgres or Redis: while Postgres is down the
    process is NOT_SERVING and RPCs answer UNAVAILABLE; while Redis is down reads come from Postgres."""

    name = "event"

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._metrics: ServerMetrics | None = None
        self._pool: db.Pool | None = None
        self._cache: Cache | None = None
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

    @property
    def cache(self) -> Cache | None:
        return self._cache

    @property
    def pool(self) -> db.Pool | None:
        return self._pool

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(lambda: self.events), server)

    async def start(self) -> None:
        s = self._settings
        self._pool = await db.create_pool(s, application_name=s.service_name)
        self._cache = cache_from_settings(s, self._metrics)
        if self._metrics is not None:
            self._metrics.track_pool(self.name, self._pool)
        self._service = EventService(
            self._pool,
            self._clock,
            s.public_base_url,
            self._cache,
            cache_ttl=s.cache_ttl_seconds,
            list_ttl=s.cache_list_ttl_seconds,
        )

    async def ready(self) -> bool:
        # Postgres only: without Redis every read still answers (from Postgres), so Redis being down must not
        # take the replica out of the load balancer.
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._pool is not None:
            await db.close_pool(self._pool)
