"""The messages EventService sends (through the outbox), with what a mail template needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.event.domain import Event, FieldChange
from services.notification import messages
from services.notification.outbox import Message


def event_params(event: Event, link: str, *, with_address: bool) -> dict[str, Any]:
    d = event.details
    facts = messages.EventFacts(
        id=event.id,
        title=d.title,
        film_title=d.film.title,
        start_time=d.start_time,
        time_zone=d.time_zone,
        place_name=d.place.name,
        place_address=d.place.address,
        place_city=d.place.city,
        host_name=event.host_display_name,
    )
    return messages.event_params(facts, link, with_address=with_address)


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
