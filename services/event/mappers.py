"""Proto ↔ domain for EventService. Generated types stop here: nothing below the servicer sees them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from cowatch.event.v1 import resources_pb2, service_pb2
from google.api import httpbody_pb2
from google.protobuf import duration_pb2

from services.common import conditional, context, names
from services.common.errors import InvalidArgument, Violations
from services.common.identity import User
from services.common.protos import (
    from_duration,
    from_timestamp,
    rating_to_proto,
    reliability_to_proto,
    request_key,
    timestamp,
    to_timestamp,
)
from services.event import calendar, domain
from services.event.domain import EventDetails, Film, Place, Visibility
from services.event.service import (
    CALENDAR_FORMAT,
    CalendarItem,
    CancelEvent,
    CompleteEvent,
    CreateEvent,
    EventView,
    GetEvent,
    Guest,
    ListEvents,
    ListGuests,
    RotateInviteToken,
    SendInvitations,
    UpdateEvent,
)

_STATE = {
    domain.State.SCHEDULED: resources_pb2.Event.SCHEDULED,
    domain.State.CANCELLED: resources_pb2.Event.CANCELLED,
    domain.State.COMPLETED: resources_pb2.Event.COMPLETED,
}
_VISIBILITY_TO_PROTO = {
    Visibility.PUBLIC: resources_pb2.Event.PUBLIC,
    Visibility.PRIVATE: resources_pb2.Event.PRIVATE,
}
_VISIBILITY_FROM_PROTO = {v: k for k, v in _VISIBILITY_TO_PROTO.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
QUERY_MAX = 100
CALENDAR_CONTENT_TYPE = "text/calendar; charset=utf-8"


def _details(e: resources_pb2.Event, *, require_all: bool) -> EventDetails:
    """The host-chosen fields of ``e``. With ``require_all`` (create), missing messages and enums are errors;
    otherwise (update patches) they get placeholders that only matter if the update mask names them."""
    v = Violations()
    start = _EPOCH
    if e.HasField("start_time"):
        try:
            start = from_timestamp(e.start_time, "event.start_time")
        except InvalidArgument as exc:
            v.add(*exc.field_violations[0])
    elif require_all:
        v.add("event.start_time", "is required")
    duration = timedelta(0)
    if e.HasField("duration"):
        try:
            duration = from_duration(e.duration, "event.duration")
        except InvalidArgument as exc:
            v.add(*exc.field_violations[0])
    elif require_all:
        v.add("event.duration", "is required")
    if require_all and not e.HasField("film"):
        v.add("event.film", "is required")
    if require_all and not e.HasField("place"):
        v.add("event.place", "is required")
    visibility = _VISIBILITY_FROM_PROTO.get(e.visibility)
    if visibility is None and (require_all or e.visibility != resources_pb2.Event.VISIBILITY_UNSPECIFIED):
        v.add("event.visibility", "must be PUBLIC or PRIVATE")
    v.raise_if_any()
    return EventDetails(
        film=Film(e.film.id, e.film.title),
        title=e.title,
        description=e.description,
        start_time=start,
        time_zone=e.time_zone,
        duration=duration,
        place=Place(e.place.name, e.place.address, e.place.city),
        capacity=e.capacity,
        visibility=visibility or Visibility.PUBLIC,
    )


def to_create_command(request: service_pb2.CreateEventRequest, user: User) -> CreateEvent:
    if not request.HasField("event"):
        raise InvalidArgument.field("event", "is required")
    return CreateEvent(
        user=user,
        details=_details(request.event, require_all=True),
        request=request_key(user, "CreateEvent", request, request.request_id),
        trace_id=context.request_id(),
    )


def _populated_paths(e: resources_pb2.Event) -> frozenset[str]:
    paths: set[str] = set()
    for name in ("title", "description", "time_zone"):
        if getattr(e, name):
            paths.add(name)
    if e.HasField("start_time"):
        paths.add("start_time")
    if e.HasField("duration"):
        paths.add("duration")
    if e.capacity:
        paths.add("capacity")
    if e.visibility != resources_pb2.Event.VISIBILITY_UNSPECIFIED:
        paths.add("visibility")
    for sub in ("id", "title"):
        if getattr(e.film, sub):
            paths.add(f"film.{sub}")
    for sub in ("name", "address", "city"):
        if getattr(e.place, sub):
            paths.add(f"place.{sub}")
    return frozenset(paths)


def to_update_command(request: service_pb2.UpdateEventRequest, user: User) -> UpdateEvent:
    if not request.HasField("event"):
        raise InvalidArgument.field("event", "is required")
    event_id = domain.parse_event_name(request.event.name, "event.name")
    if request.update_mask.paths:
        unknown = [p for p in request.update_mask.paths if p not in domain.MUTABLE_FIELDS]
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"can't update {', '.join(unknown)}; mutable: {', '.join(sorted(domain.MUTABLE_FIELDS))}",
            )
        paths = frozenset(request.update_mask.paths)
        if "visibility" in paths and request.event.visibility == resources_pb2.Event.VISIBILITY_UNSPECIFIED:
            raise InvalidArgument.field("event.visibility", "must be PUBLIC or PRIVATE")
        if "start_time" in paths and not request.event.HasField("start_time"):
            raise InvalidArgument.field("event.start_time", "is required when named in update_mask")
        if "duration" in paths and not request.event.HasField("duration"):
            raise InvalidArgument.field("event.duration", "is required when named in update_mask")
    else:
        paths = _populated_paths(request.event)
    return UpdateEvent(
        user=user,
        event_id=event_id,
        patch=_details(request.event, require_all=False),
        paths=paths,
        etag=etag(request.event.etag),
        trace_id=context.request_id(),
    )


def etag(value: str) -> str:
    if value and not value.isdigit():
        raise InvalidArgument.field("etag", "is not an etag returned by this API")
    return value


def to_cancel_command(request: service_pb2.CancelEventRequest, user: User) -> CancelEvent:
    return CancelEvent(
        user=user,
        event_id=domain.parse_event_name(request.name),
        etag=etag(request.etag),
        reason=request.reason,
        request=request_key(user, "CancelEvent", request, request.request_id),
        trace_id=context.request_id(),
    )


def to_list_query(request: service_pb2.ListEventsRequest, user: User | None) -> ListEvents:
    v = Violations()
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    start_from = start_to = None
    for attr in ("start_time_from", "start_time_to"):
        if request.HasField(attr):
            try:
                value = from_timestamp(getattr(request, attr), attr)
            except InvalidArgument as exc:
                v.add(*exc.field_violations[0])
                continue
            if attr == "start_time_from":
                start_from = value
            else:
                start_to = value
    if start_from and start_to and start_to <= start_from:
        v.add("start_time_to", "must be after start_time_from")
    if len(request.query) > QUERY_MAX:
        v.add("query", f"must be at most {QUERY_MAX} characters")
    if len(request.film_id) > domain.FILM_ID_MAX:
        v.add("film_id", f"must be at most {domain.FILM_ID_MAX} characters")
    if len(request.city) > domain.CITY_MAX:
        v.add("city", f"must be at most {domain.CITY_MAX} characters")
    host_id = None
    if request.host:
        try:
            host_id = names.parse_user(request.host, "host")
        except InvalidArgument as exc:
            v.add(*exc.field_violations[0])
    v.raise_if_any()
    return ListEvents(
        user=user,
        page_size=request.page_size,
        page_token=request.page_token,
        film_id=request.film_id or None,
        city=request.city.strip() or None,
        start_from=start_from,
        start_to=start_to,
        has_free_seats=request.has_free_seats,
        host_id=host_id,
        text=request.query.strip() or None,
    )


def to_send_invitations(request: service_pb2.SendInvitationsRequest, user: User) -> SendInvitations:
    v = Violations()
    if not request.users:
        v.add("users", "must name at least one user")
    if len(request.users) > 50:
        v.add("users", "must name at most 50 users")
    ids: list[str] = []
    for i, name in enumerate(request.users):
        try:
            ids.append(names.parse_user(name, f"users[{i}]"))
        except InvalidArgument as exc:
            v.add(*exc.field_violations[0])
    if len(set(ids)) != len(ids):
        v.add("users", "must not repeat a user")
    v.raise_if_any()
    return SendInvitations(
        user=user,
        event_id=domain.parse_event_name(request.name),
        user_ids=ids,
        note=request.message,
        request=request_key(user, "SendInvitations", request, request.request_id),
        trace_id=context.request_id(),
    )


def to_complete_command(request: service_pb2.CompleteEventRequest, user: User) -> CompleteEvent:
    return CompleteEvent(
        user=user,
        event_id=domain.parse_event_name(request.name),
        etag=etag(request.etag),
        trace_id=context.request_id(),
    )


def to_rotate_command(request: service_pb2.RotateInviteTokenRequest, user: User) -> RotateInviteToken:
    return RotateInviteToken(user=user, event_id=domain.parse_event_name(request.name), trace_id=context.request_id())


def to_get_query(request: service_pb2.GetEventRequest, user: User | None) -> GetEvent:
    return GetEvent(
        user=user,
        event_id=domain.parse_event_name(request.name),
        invite_token=domain.parse_invite_token(request.invite_token),
    )


def to_export_query(request: service_pb2.ExportEventCalendarRequest, user: User | None) -> GetEvent:
    return GetEvent(user=user, event_id=domain.parse_event_name(request.name), invite_token=request.invite_token)


_ENDED_RELATIONS = frozenset({"BOOKING_CANCELLED", "OFFER_ENDED", "OFFER_CLAIMED"})


def calendar_entry(view: EventView, share_link: str, item: CalendarItem | None = None) -> calendar.CalendarEntry:
    """One event as the caller may see it (the exact address only when they may). In a feed (``item``) the
    reader's relation decides the rest: an open waitlist offer is tentative, a cancelled booking or an ended
    offer is cancelled, and ``SEQUENCE`` is the event's version plus the relation's transitions, so it rises with
    every change either makes (a claimed offer turns into its booking under the same UID, one step later)."""
    e, d = view.event, view.event.details
    ended = item is not None and item.relation in _ENDED_RELATIONS
    offered = item is not None and item.relation == "OFFERED"
    changed = item.changed if item is not None else None
    return calendar.CalendarEntry(
        event_id=e.id,
        title=d.title,
        film_title=d.film.title,
        description=d.description,
        start_time=d.start_time,
        end_time=d.end_time,
        time_zone=d.time_zone,
        place_name=d.place.name,
        place_city=d.place.city,
        place_address=d.place.address,
        show_address=view.access.sees_address,
        cancelled=e.state is domain.State.CANCELLED or ended,
        sequence=e.version + (item.steps if item is not None else 0),
        last_modified=max(e.update_time, changed) if changed else e.update_time,
        created=e.create_time,
        link=share_link,
        host_name=e.host_display_name,
        offer_expires=item.offer_expire_time if offered and item is not None else None,
    )


def event_calendar_etag(view: EventView, share_link: str) -> str:
    """The one-event download's validator: everything its rendering reads that can change (the event's version
    covers every edit, cancellation and completion; the host may rename themselves; the reader's access decides
    the address and the link)."""
    e = view.event
    return conditional.weak_etag(
        CALENDAR_FORMAT, e.id, e.version, e.update_time, e.host_display_name, view.access.sees_address, share_link
    )


def event_calendar(view: EventView, share_link: str, now: datetime) -> httpbody_pb2.HttpBody:
    body = calendar.render([calendar_entry(view, share_link)], name=view.event.details.title, now=now)
    return httpbody_pb2.HttpBody(content_type=CALENDAR_CONTENT_TYPE, data=body)


def calendar_token(token: str) -> str:
    if not token:
        raise InvalidArgument.field("token", "is required: the calendar token from RotateCalendarToken")
    if len(token) > 100 or not token.replace("-", "").replace("_", "").isalnum():
        raise InvalidArgument.field("token", "is not a calendar token")
    return token


def calendar_body(entries: list[calendar.CalendarEntry], now: datetime) -> bytes:
    return calendar.render(entries, name="cowatch", now=now)


def calendar_feed(body: bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=CALENDAR_CONTENT_TYPE, data=body)


def not_modified() -> httpbody_pb2.HttpBody:
    """The empty answer to a conditional GET whose copy is current (Envoy turns it into a 304)."""
    return httpbody_pb2.HttpBody(content_type=CALENDAR_CONTENT_TYPE)


def to_guests_query(request: service_pb2.ListEventGuestsRequest, user: User) -> ListGuests:
    return ListGuests(
        user=user,
        event_id=domain.parse_event_name(request.parent, "parent"),
        page_size=request.page_size,
        page_token=request.page_token,
    )


def event_to_proto(view: EventView, share_link: str) -> resources_pb2.Event:
    e, access = view.event, view.access
    d = e.details
    msg = resources_pb2.Event(
        name=e.name,
        host=names.user(e.host_id),
        host_display_name=e.host_display_name,
        film=resources_pb2.Film(id=d.film.id, title=d.film.title),
        title=d.title,
        description=d.description,
        start_time=timestamp(d.start_time),
        time_zone=d.time_zone,
        duration=duration_pb2.Duration(
            seconds=d.duration.days * 86400 + d.duration.seconds, nanos=d.duration.microseconds * 1000
        ),
        end_time=timestamp(d.end_time),
        place=resources_pb2.Place(
            name=d.place.name, address=d.place.address if access.sees_address else "", city=d.place.city
        ),
        address_hidden=not access.sees_address,
        capacity=d.capacity,
        seats_taken=e.seats_taken,
        seats_available=e.seats_available,
        waitlist_size=e.waitlist_size,
        visibility=_VISIBILITY_TO_PROTO[d.visibility],
        state=_STATE[e.state],
        share_link=share_link,
        invite_token=e.invite_token if access.sees_invite_token and d.visibility is Visibility.PRIVATE else "",
        host_rating=rating_to_proto(e.host_rating),
        create_time=timestamp(e.create_time),
        update_time=timestamp(e.update_time),
        etag=e.etag,
    )
    if e.cancel_time:
        msg.cancel_time.CopyFrom(timestamp(e.cancel_time))
    if e.complete_time:
        msg.complete_time.CopyFrom(timestamp(e.complete_time))
    return msg


def guest_to_proto(g: Guest) -> resources_pb2.Guest:
    return resources_pb2.Guest(
        user=names.user(g.user_id),
        display_name=g.display_name,
        seats=g.seats,
        booking=names.booking(g.booking_id),
        book_time=to_timestamp(g.book_time),
        guest_rating=rating_to_proto(g.rating),
        guest_reliability=reliability_to_proto(g.reliability),
    )


def public_event_bytes(event: domain.Event, share_link: str) -> bytes:
    """The wire bytes of ``event`` as a caller who is neither its host nor a guest sees it (no exact address, no
    invite token): what the cache stores and answers anonymous readers with."""
    public = domain.Access(is_host=False, is_guest=False, has_invite=False)
    return event_to_proto(EventView(event, public), share_link).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_EVENTS_TAG: Final = bytes([(service_pb2.ListEventsResponse.EVENTS_FIELD_NUMBER << 3) | 2])
_TOKEN_TAG: Final = bytes([(service_pb2.ListEventsResponse.NEXT_PAGE_TOKEN_FIELD_NUMBER << 3) | 2])


def list_events_wire(events: list[bytes], next_page_token: str) -> bytes:
    """A ``ListEventsResponse`` on the wire, from its events' own wire bytes: a repeated message field is each
    element as a length-delimited record (tag, varint length, bytes), a string field likewise, so the response is
    their concatenation — identical to serializing the message built from them, without parsing them again."""
    parts: list[bytes] = []
    for data in events:
        parts += (_EVENTS_TAG, _varint(len(data)), data)
    if next_page_token:
        token = next_page_token.encode()
        parts += (_TOKEN_TAG, _varint(len(token)), token)
    return b"".join(parts)
