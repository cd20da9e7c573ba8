"""Wiring of the EventService process: settings, pool, cache, service, servicer (the one place they meet)."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import grpc
from cowatch.event.v1 import service_pb2_grpc
from pydantic import Field

from services.common import db
from services.common.app import ServiceApp
from services.common.cache import Cache
from services.common.settings import CommonSettings
from services.event import mappers, notifications
from services.event.service import DEFAULT_INVITATIONS_PER_DAY, EventService
from services.event.servicer import ANONYMOUS_METHODS, SERVICE_NAME, EventServicer
from services.review import cache as review_cache


class EventSettings(CommonSettings):
    service_name: ClassVar[str] = "cowatch-event"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    invitations_per_day: int = Field(
        default=DEFAULT_INVITATIONS_PER_DAY,
        ge=1,
        description="Invitations (recipients) a host may send per UTC day; over it RESOURCE_EXHAUSTED",
    )


class EventApp(ServiceApp[EventService]):
    """The EventService process (lifecycle in :class:`services.common.app.ServiceApp`)."""

    name = "event"
    proto_service = SERVICE_NAME
    anonymous = ANONYMOUS_METHODS

    @property
    def events(self) -> EventService:
        return self.service

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(lambda: self.service), server)

    def build(self, pool: db.Pool, cache: Cache) -> EventService:
        s = self._settings
        return EventService(
            pool,
            self._clock,
            s.public_base_url,
            cache,
            cache_ttl=s.cache_ttl_seconds,
            list_ttl=s.cache_list_ttl_seconds,
            subscribers=review_cache.handlers(cache),  # a held event shows on the host's profile
            claim_window=timedelta(seconds=s.waitlist_claim_window_seconds),
            invitations_per_day=s.invitations_per_day if isinstance(s, EventSettings) else DEFAULT_INVITATIONS_PER_DAY,
            reads=self.reads,
            render_public=lambda event: mappers.public_event_bytes(
                event, notifications.share_link(s.public_base_url, event, with_invite=False)
            ),
        )
