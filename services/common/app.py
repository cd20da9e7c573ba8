"""The lifecycle every service process shares (an :class:`services.common.server.App`): the pool, the cache and
the metrics are opened in ``start()`` and closed in ``stop()``; readiness is "PostgreSQL answers".

A service subclasses :class:`ServiceApp`, names its proto service, registers its servicer and builds its use-case
object from the pool and cache. ``start()`` never waits for PostgreSQL or Redis: while PostgreSQL is down the
process is NOT_SERVING and RPCs answer UNAVAILABLE; while Redis is down reads come from PostgreSQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Generic, TypeVar

import grpc

from services.common import db
from services.common.cache import Cache, cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.errors import Unavailable
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings

T = TypeVar("T")


class ServiceApp(ABC, Generic[T]):
    name: ClassVar[str]
    """Short name for logs and metrics, e.g. ``"event"``."""
    proto_service: ClassVar[str]
    """Full proto service name (health and reflection), e.g. ``"cowatch.event.v1.EventService"``."""
    anonymous: ClassVar[frozenset[str]] = frozenset()
    """Methods callable without a token (public reads)."""

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._metrics: ServerMetrics | None = None
        self._pool: db.Pool | None = None
        self._cache: Cache | None = None
        self._service: T | None = None

    @abstractmethod
    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicer; it must reach the use cases through :attr:`service` (they exist only once started)."""

    @abstractmethod
    def build(self, pool: db.Pool, cache: Cache) -> T:
        """The use-case object, from the open pool and cache."""

    @property
    def service_names(self) -> Sequence[str]:
        return (self.proto_service,)

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return self.anonymous

    @property
    def service(self) -> T:
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

    async def start(self) -> None:
        s = self._settings
        self._pool = await db.create_pool(s, application_name=s.service_name)
        self._cache = cache_from_settings(s, self._metrics)
        if self._metrics is not None:
            self._metrics.track_pool(self.name, self._pool)
        self._service = self.build(self._pool, self._cache)

    async def ready(self) -> bool:
        # PostgreSQL only: without Redis every read still answers (from PostgreSQL), so Redis being down must not
        # take the replica out of the load balancer.
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._pool is not None:
            await db.close_pool(self._pool)
