"""The messages EventService sends (through the outbox), with what a mail template needs, and the in-transaction
handlers that turn the event domain's events into them and into reminder changes (:func:`handlers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.booking.cascades import Overlap
from services.common import links, names
from services.common.dbtypes import Conn
from services.common.domain_events import EventCompleted, EventCreated
from services.common.uow import Handlers
from services.event.domain import Event, FieldChange, Visibility
from services.event.domain_events import EventCancelled, EventRescheduled, EventUpdated, InvitationsSent
from services.notification import messages, outbox
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


def event_changed(
    event: Event,
    guests: Sequence[str],
    changes: Sequence[FieldChange],
    link: str,
    overlaps: Sequence[Overlap] = (),
    public_base_url: str = "",
) -> Message:
    """The change mail to ``guests``. With ``overlaps`` (one guest's other bookings the change made the event
    overlap) it lists them in the ``overlaps`` parameter (``booking``, ``event``, ``title``, ``start_time``,
    ``end_time``, ``link``) and has a dedupe key of its own."""
    params = event_params(event, link, with_address=True)
    params["changes"] = [{"field": c.field, "old": c.old, "new": c.new} for c in changes]
    dedupe_key = f"event-changed/{event.id}/v{event.version}"
    if overlaps:
        params["overlaps"] = [
            {
                "booking": names.booking(o.booking_id),
                "event": names.event(o.event_id),
                "title": o.event_title,
                "start_time": o.start_time.isoformat(),
                "end_time": o.end_time.isoformat(),
                "link": links.event_link(public_base_url, o.event_id, ""),
            }
            for o in overlaps
        ]
        dedupe_key += "/" + "/".join(sorted({o.guest_id for o in overlaps}))
    return Message(dedupe_key=dedupe_key, template_id="event_changed", recipients=list(guests), params=params)


def event_changed_messages(
    event: Event,
    guests: Sequence[str],
    changes: Sequence[FieldChange],
    link: str,
    overlaps: Sequence[Overlap],
    public_base_url: str,
) -> list[Message]:
    """One change mail for the guests, and one of their own for each guest the change left with overlapping
    bookings."""
    by_guest: dict[str, list[Overlap]] = {}
    for o in overlaps:
        by_guest.setdefault(o.guest_id, []).append(o)
    common = event_changed(event, [g for g in guests if g not in by_guest], changes, link)
    return [common] + [
        event_changed(event, [guest], changes, link, theirs, public_base_url) for guest, theirs in by_guest.items()
    ]


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


def share_link(public_base_url: str, event: Event, *, with_invite: bool) -> str:
    """The event's share link; with its invite token only for a private event and a caller who may pass it on."""
    private = event.details.visibility is Visibility.PRIVATE
    return links.event_link(public_base_url, event.id, event.invite_token if with_invite and private else "")


def handlers(public_base_url: str) -> Handlers:
    """Outbox messages and reminder changes, written in the transaction of the change that caused them."""

    def link(event: Event, *, with_invite: bool = False) -> str:
        return share_link(public_base_url, event, with_invite=with_invite)

    async def created(conn: Conn, e: EventCreated, trace_id: str) -> None:
        await outbox.schedule_reminders(conn, e.event_id, e.host_id, e.start_time, e.at)

    async def rescheduled(conn: Conn, e: EventRescheduled, trace_id: str) -> None:
        await outbox.move_reminders(conn, e.event_id, e.start_time, e.at)

    async def updated(conn: Conn, e: EventUpdated, trace_id: str) -> None:
        changed = event_changed_messages(e.event, e.guest_ids, e.changes, link(e.event), e.overlaps, public_base_url)
        for message in changed:
            await outbox.enqueue(conn, message, request_id=trace_id)

    async def cancelled(conn: Conn, e: EventCancelled, trace_id: str) -> None:
        await outbox.drop_reminders(conn, e.event_id)
        message = event_cancelled(e.event, e.guest_ids, e.reason, link(e.event))
        await outbox.enqueue(conn, message, request_id=trace_id)

    async def completed(conn: Conn, e: EventCompleted, trace_id: str) -> None:
        await outbox.drop_reminders(conn, e.event_id)

    async def invited(conn: Conn, e: InvitationsSent, trace_id: str) -> None:
        message = invitation(e.event, e.user_ids, e.note, link(e.event, with_invite=True), e.batch)
        await outbox.enqueue(conn, message, request_id=trace_id)

    return (
        Handlers()
        .on(EventCreated, in_transaction=created)
        .on(EventRescheduled, in_transaction=rescheduled)
        .on(EventUpdated, in_transaction=updated)
        .on(EventCancelled, in_transaction=cancelled)
        .on(EventCompleted, in_transaction=completed)
        .on(InvitationsSent, in_transaction=invited)
    )
