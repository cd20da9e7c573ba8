"""Wiring of the ReviewService process: settings, pool, cache, service, servicer (the one place they meet)."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import grpc
from cowatch.review.v1 import service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.app import ServiceApp
from services.common.cache import Cache
from services.common.clock import Clock
from services.common.settings import CommonSettings
from services.event import cache as event_cache
from services.review.reveals import RevealJob
from services.review.service import ReviewService, dispatcher
from services.review.servicer import ANONYMOUS_METHODS, SERVICE_NAME, ReviewServicer


class ReviewSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-review"
    grpc_port: int = Field(default=50053, ge=0, le=65535)
    review_window_days: float = Field(
        default=14, gt=0, description="days after an event is held during which it can be reviewed (blind reveal)"
    )


class ReviewApp(ServiceApp[ReviewService]):
    """The ReviewService process (lifecycle in :class:`services.common.app.ServiceApp`)."""

    name = "review"
    proto_service = SERVICE_NAME
    anonymous = ANONYMOUS_METHODS

    @property
    def reviews(self) -> ReviewService:
        return self.service

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(lambda: self.service), server)

    def build(self, pool: db.Pool, cache: Cache) -> ReviewService:
        ttl = self._settings.cache_ttl_seconds
        s = self._settings
        window_days = (
            s.review_window_days
            if isinstance(s, ReviewSettings)
            else ReviewSettings.model_fields["review_window_days"].default
        )
        # EventService's cached rows show the host's rating: its cache hears every review posted here.
        return ReviewService(
            pool,
            self._clock,
            cache,
            cache_ttl=ttl,
            subscribers=event_cache.handlers(cache),
            review_window=timedelta(days=window_days),
            public_base_url=self._settings.public_base_url,
            reads=self.reads,
        )


def reveal_job(pool: db.Pool, clock: Clock, cache: Cache, public_base_url: str) -> RevealJob:
    """The worker's periodic reveal of reviews whose window closed, with the same dispatcher as the service (the
    subject's mail; review and event caches)."""
    return RevealJob(pool, clock, dispatcher(cache, public_base_url, event_cache.handlers(cache)))
