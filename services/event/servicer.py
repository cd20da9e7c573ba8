"""EventService over gRPC: proto in → command → service → proto out. Errors are raised as domain exceptions and
turned into google.rpc.Status by the interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from cowatch.event.v1 import resources_pb2, service_pb2, service_pb2_grpc
from google.api import httpbody_pb2

from services.common import conditional, names
from services.common.context import current_user, require_user
from services.event import mappers
from services.event.service import CalendarItem, EventService, EventView

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name
# Public reads work without a token; every other method needs one.
Ctx = grpc.aio.ServicerContext[Any, Any]

# GetCalendar is authenticated by the calendar token in the request, not by a bearer token.
ANONYMOUS_METHODS = frozenset(
    f"/{SERVICE_NAME}/{method}" for method in ("GetEvent", "ListEvents", "ExportEventCalendar", "GetCalendar")
)

_RENDERER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ics-render")


class EventServicer(service_pb2_grpc.EventServiceServicer):
    def __init__(self, events: Callable[[], EventService]) -> None:
        self._get_events = events

    @property
    def _events(self) -> EventService:
        return self._get_events()

    def _proto(self, view: EventView) -> resources_pb2.Event:
        link = self._events.share_link(view.event, with_invite=view.access.sees_invite_token)
        return mappers.event_to_proto(view, link)

    async def CreateEvent(self, request: service_pb2.CreateEventRequest, context: Ctx) -> resources_pb2.Event:
        view = await self._events.create(mappers.to_create_command(request, require_user()))
        return self._proto(view)

    async def GetEvent(self, request: service_pb2.GetEventRequest, context: Ctx) -> Any:
        """An ``Event``, or its stored public form's wire bytes (sent as they are: see
        :func:`services.common.interceptors.passthrough`)."""
        view = await self._events.read(mappers.to_get_query(request, current_user()))
        return view if isinstance(view, bytes) else self._proto(view)

    async def ExportEventCalendar(
        self, request: service_pb2.ExportEventCalendarRequest, context: Ctx
    ) -> httpbody_pb2.HttpBody:
        view = await self._events.get(mappers.to_export_query(request, current_user()))
        link = self._events.share_link(view.event, with_invite=view.access.sees_invite_token)
        etag = mappers.event_calendar_etag(view, link)
        fresh = conditional.matches(conditional.if_none_match(context), etag)
        await context.send_initial_metadata(conditional.response_metadata(etag, not_modified=fresh))
        return mappers.not_modified() if fresh else mappers.event_calendar(view, link, self._events.now())

    async def GetCalendar(self, request: service_pb2.GetCalendarRequest, context: Ctx) -> httpbody_pb2.HttpBody:
        """The feed, with conditional GET: see :mod:`services.common.conditional` (304 through Envoy)."""
        events = self._events
        now = events.now()

        async def render(items: list[CalendarItem]) -> bytes:
            entries = [
                mappers.calendar_entry(i.view, events.share_link(i.view.event, with_invite=False), i) for i in items
            ]
            # Rendering is pure-Python CPU work (~0.3 ms per VEVENT, ~60 ms for 200 on a busy core); on the event
            # loop a 200-event feed would stall every other call of the process for that long. One rendering
            # thread: the loop keeps its share of the GIL between renders' switch intervals, and renders queue
            # instead of contending with each other.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_RENDERER, mappers.calendar_body, entries, now)

        token = mappers.calendar_token(request.token)
        feed = await events.calendar(token, render, conditional.if_none_match(context))
        await context.send_initial_metadata(conditional.response_metadata(feed.etag, not_modified=feed.body is None))
        return mappers.not_modified() if feed.body is None else mappers.calendar_feed(feed.body)

    async def RotateCalendarToken(
        self, request: service_pb2.RotateCalendarTokenRequest, context: Ctx
    ) -> service_pb2.CalendarToken:
        token = await self._events.rotate_calendar_token(require_user())
        return service_pb2.CalendarToken(token=token, feed_url=self._events.calendar_url(token))

    async def ListEvents(self, request: service_pb2.ListEventsRequest, context: Ctx) -> Any:
        """The response's wire bytes, assembled from each event's (stored public form or own view)."""
        page = await self._events.list(mappers.to_list_query(request, current_user()), as_public=True)
        return mappers.list_events_wire(
            [v if isinstance(v, bytes) else self._proto(v).SerializeToString() for v in page.items],
            page.next_page_token,
        )

    async def UpdateEvent(self, request: service_pb2.UpdateEventRequest, context: Ctx) -> resources_pb2.Event:
        return self._proto(await self._events.update(mappers.to_update_command(request, require_user())))

    async def CancelEvent(self, request: service_pb2.CancelEventRequest, context: Ctx) -> resources_pb2.Event:
        return self._proto(await self._events.cancel(mappers.to_cancel_command(request, require_user())))

    async def CompleteEvent(self, request: service_pb2.CompleteEventRequest, context: Ctx) -> resources_pb2.Event:
        return self._proto(await self._events.complete(mappers.to_complete_command(request, require_user())))

    async def ListEventGuests(
        self, request: service_pb2.ListEventGuestsRequest, context: Ctx
    ) -> service_pb2.ListEventGuestsResponse:
        page = await self._events.list_guests(mappers.to_guests_query(request, require_user()))
        return service_pb2.ListEventGuestsResponse(
            guests=[mappers.guest_to_proto(g) for g in page.items], next_page_token=page.next_page_token
        )

    async def SendInvitations(
        self, request: service_pb2.SendInvitationsRequest, context: Ctx
    ) -> service_pb2.SendInvitationsResponse:
        result = await self._events.send_invitations(mappers.to_send_invitations(request, require_user()))
        return service_pb2.SendInvitationsResponse(
            users=[names.user(u) for u in result.user_ids], share_link=result.share_link
        )

    async def RotateInviteToken(
        self, request: service_pb2.RotateInviteTokenRequest, context: Ctx
    ) -> resources_pb2.Event:
        return self._proto(await self._events.rotate_invite_token(mappers.to_rotate_command(request, require_user())))
