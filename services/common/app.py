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
from services.common.replica import ReadPool
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
        self._reads: ReadPool | None = None
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

    @property
    def reads(self) -> ReadPool:
        """Where the lag-tolerant reads go (:mod:`services.common.replica`); for :meth:`build` of the services that
        have such reads."""
        if self._reads is None:
            raise Unavailable("SERVICE_STARTING", "the service is starting, retry shortly")
        return self._reads

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    async def start(self) -> None:
        s = self._settings
        self._pool = await db.create_pool(s, application_name=s.service_name)
        replica = None
        if s.read_database_url:
            replica = await db.create_pool(
                s, application_name=s.service_name, dsn=s.read_database_url, max_size=s.read_db_pool_max_size
            )
        on_change = self._metrics.breaker_changed if self._metrics is not None and replica is not None else None
        self._reads = ReadPool(
            self._pool, replica, max_lag_seconds=s.read_db_max_lag_seconds, on_breaker_change=on_change
        )
        await self._reads.start()
        self._cache = cache_from_settings(s, self._metrics)
        if self._metrics is not None:
            self._metrics.track_pool(self.name, self._pool)
            if replica is not None:
                self._metrics.track_pool(f"{self.name}_replica", replica)
        self._service = self.build(self._pool, self._cache)

    async def ready(self) -> bool:
        # The primary only: without Redis every read still answers (from PostgreSQL), and without the read
        # replica from the primary, so neither being down must take the process out of the load balancer.
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._reads is not None:
            await self._reads.aclose()
        if self._pool is not None:
            await db.close_pool(self._pool)
