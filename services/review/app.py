"""Wiring of the ReviewService process: settings, pool, service, servicer (the one place they meet)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc
from cowatch.review.v1 import service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.cache import Cache, cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.errors import Unavailable
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings
from services.review.service import ReviewService
from services.review.servicer import ANONYMOUS_METHODS, SERVICE_NAME, ReviewServicer


class ReviewSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-review"
    grpc_port: int = Field(default=50053, ge=0, le=65535)


class ReviewApp:
    """The ReviewService process. The pool opens in ``start()``; RPCs before that answer UNAVAILABLE."""

    name = "review"

    def __init__(self, settings: CommonSettings, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._pool: db.Pool | None = None
        self._cache: Cache | None = None
        self._metrics: ServerMetrics | None = None
        self._service: ReviewService | None = None

    @property
    def service_names(self) -> Sequence[str]:
        return (SERVICE_NAME,)

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return ANONYMOUS_METHODS

    @property
    def reviews(self) -> ReviewService:
        if self._service is None:
            raise Unavailable("SERVICE_STARTING", "the service is starting, retry shortly")
        return self._service

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(lambda: self.reviews), server)

    async def start(self) -> None:
        s = self._settings
        self._pool = await db.create_pool(s, application_name=s.service_name)
        self._cache = cache_from_settings(s, self._metrics)
        if self._metrics is not None:
            self._metrics.track_pool(self.name, self._pool)
        self._service = ReviewService(self._pool, self._clock, self._cache, cache_ttl=s.cache_ttl_seconds)

    async def ready(self) -> bool:
        return self._pool is not None and await db.ping(self._pool)

    async def stop(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._pool is not None:
            await db.close_pool(self._pool)
