"""The messages EventService sends (through the outbox), with what a mail template needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.event.domain import Event, FieldChange, local_time
from services.notification.outbox import Message


def event_params(event: Event, link: str, *, with_address: bool) -> dict[str, Any]:
    d = event.details
    params: dict[str, Any] = {
        "event": event.name,
        "event_title": d.title,
        "film_title": d.film.title,
        "start_local": local_time(d.start_time, d.time_zone),
        "start_time": d.start_time.isoformat(),
        "time_zone": d.time_zone,
        "place_name": d.place.name,
        "place_city": d.place.city,
        "link": link,
        "host_name": event.host_display_name,
    }
    if with_address:
        params["place_address"] = d.place.address
    return params


def event_changed(event: Event, guests: Sequence[str], changes: Sequence[FieldChange], link: str) -> Message:
    params = event_params(event, link, with_address=True)
    params["changes"] = [{"field": c.field, "old": c.old, "new": c.new} for c in changes]
    return Message(
        dedupe_key=f"event-changed/{event.id}/v{event.version}",
        template_id="event_changed",
        recipients=list(guests),
        params=params,
    )


def event_cancelled(event: Event, guests: Sequence[str], reason: str, link: str) -> Message:
    params = event_params(event, link, with_address=False)
    params["reason"] = reason
    return Message(
        dedupe_key=f"event-cancelled/{event.id}",
        template_id="event_cancelled",
        recipients=list(guests),
        params=params,
    )


def invitation(event: Event, users: Sequence[str], note: str, link: str, batch: str) -> Message:
    params = event_params(event, link, with_address=False)
    params["message"] = note
    return Message(
        dedupe_key=f"invitation/{event.id}/{batch}",
        template_id="event_invitation",
        recipients=list(users),
        params=params,
    )
