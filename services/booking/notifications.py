"""The messages BookingService sends (through the outbox), with what a mail template needs.

The common event parameters come from services/notification/messages.py ``event_params`` (one set of keys);
the exact address goes only to people who may see it: the confirmed guest and the host. :func:`handlers` turns
the booking domain's events into these messages and into reminder changes, in the booking's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from services.booking.domain import BookableEvent, Booking
from services.booking.domain_events import BookingCancelled, BookingMade, WaitlistChanged
from services.booking.waitlist import Ended, Offer, OfferWarning
from services.common import links, names
from services.common.dbtypes import Conn
from services.common.identity import User
from services.common.uow import Handlers
from services.common.vocabulary import local_time
from services.notification import messages, outbox
from services.notification.outbox import Message


def event_params(event: BookableEvent, link: str, *, with_address: bool) -> dict[str, Any]:
    facts = messages.EventFacts(
        id=event.id,
        title=event.title,
        film_title=event.film_title,
        start_time=event.start_time,
        time_zone=event.time_zone,
        place_name=event.place_name,
        place_address=event.place_address,
        place_city=event.place_city,
        host_name=event.host_display_name,
    )
    return messages.event_params(facts, link, with_address=with_address)


def _booking_params(event: BookableEvent, booking: Booking, link: str, guest: User) -> dict[str, Any]:
    params = event_params(event, link, with_address=True)
    params.update(booking=booking.name, seats=booking.seats, guest_name=guest.display_name)
    return params


def booking_made(event: BookableEvent, booking: Booking, guest: User, link: str) -> list[Message]:
    """Both messages of a new booking, built from one set of parameters."""
    params = _booking_params(event, booking, link, guest)
    return [booking_confirmed(event, booking, guest, link, params), new_guest(event, booking, guest, link, params)]


def booking_confirmed(
    event: BookableEvent, booking: Booking, guest: User, link: str, params: dict[str, Any] | None = None
) -> Message:
    """To the guest: the booking, with the exact address (now that they hold a seat)."""
    return Message(
        dedupe_key=f"booking-confirmed/{booking.id}",
        template_id="booking_confirmed",
        recipients=[booking.guest_id],
        params=params if params is not None else _booking_params(event, booking, link, guest),
    )


def new_guest(
    event: BookableEvent, booking: Booking, guest: User, link: str, params: dict[str, Any] | None = None
) -> Message:
    """To the host: someone booked seats."""
    return Message(
        dedupe_key=f"booking-new-guest/{booking.id}",
        template_id="booking_new_guest",
        recipients=[event.host_id],
        params=params if params is not None else _booking_params(event, booking, link, guest),
    )


def booking_cancelled(event: BookableEvent, booking: Booking, guest: User, link: str) -> Message:
    """To the host: a guest gave their seats back."""
    return Message(
        dedupe_key=f"booking-cancelled/{booking.id}",
        template_id="booking_cancelled",
        recipients=[event.host_id],
        params=_booking_params(event, booking, link, guest),
    )


def _entry_params(event: BookableEvent, link: str, entry_id: UUID, seats: int) -> dict[str, Any]:
    params = event_params(event, link, with_address=False)
    params.update(seats=seats, waitlist_entry=names.waitlist_entry(event.id, entry_id))
    return params


def _offer_params(event: BookableEvent, link: str, entry_id: UUID, seats: int, expire: datetime) -> dict[str, Any]:
    params = _entry_params(event, link, entry_id, seats)
    params.update(offer_expire_time=expire.isoformat(), offer_expire_local=local_time(expire, event.time_zone))
    return params


def waitlist_offer(event: BookableEvent, offer: Offer, link: str) -> Message:
    """To the waitlisted guest: seats are held for you until the deadline. One per offer (entries are offered once)."""
    return Message(
        dedupe_key=f"waitlist-offer/{offer.entry_id}",
        template_id="waitlist_offer",
        recipients=[offer.guest_id],
        params=_offer_params(event, link, offer.entry_id, offer.seats, offer.expire_time),
    )


def waitlist_offer_closing(event: BookableEvent, warning: OfferWarning, link: str) -> Message:
    return Message(
        dedupe_key=f"waitlist-offer-closing/{warning.entry_id}",
        template_id="waitlist_offer_closing",
        recipients=[warning.guest_id],
        params=_offer_params(event, link, warning.entry_id, warning.seats, warning.expire_time),
    )


def waitlist_offer_expired(event: BookableEvent, ended: Ended, link: str) -> Message:
    return Message(
        dedupe_key=f"waitlist-offer-expired/{ended.entry_id}",
        template_id="waitlist_offer_expired",
        recipients=[ended.guest_id],
        params=_entry_params(event, link, ended.entry_id, ended.seats),
    )


def waitlist_closed(event: BookableEvent, ended: Ended, reason: str, link: str) -> Message:
    params = _entry_params(event, link, ended.entry_id, ended.seats)
    params.update(reason=reason)
    return Message(
        dedupe_key=f"waitlist-closed/{ended.entry_id}",
        template_id="waitlist_closed",
        recipients=[ended.guest_id],
        params=params,
    )


def waitlist_messages(e: WaitlistChanged, public_base_url: str) -> list[Message]:
    """Every mail a waitlist change causes."""
    link = links.event_link(public_base_url, e.event.id)
    return [
        *(waitlist_offer(e.event, o, link) for o in e.offers),
        *(waitlist_offer_expired(e.event, x, link) for x in e.expired),
        *(waitlist_closed(e.event, c, e.close_reason, link) for c in e.closed),
    ]


def handlers(public_base_url: str) -> Handlers:
    """Outbox messages and reminder changes, written in the transaction of the booking change."""

    async def made(conn: Conn, e: BookingMade, trace_id: str) -> None:
        link = links.event_link(public_base_url, e.event.id)
        await outbox.enqueue_many(conn, booking_made(e.event, e.booking, e.guest, link), request_id=trace_id)
        await outbox.schedule_reminders(conn, e.event.id, e.guest.id, e.event.start_time, e.at)

    async def cancelled(conn: Conn, e: BookingCancelled, trace_id: str) -> None:
        await outbox.drop_reminders(conn, e.event.id, e.guest.id)
        link = links.event_link(public_base_url, e.event.id)
        await outbox.enqueue(conn, booking_cancelled(e.event, e.booking, e.guest, link), request_id=trace_id)

    async def waitlist(conn: Conn, e: WaitlistChanged, trace_id: str) -> None:
        found = waitlist_messages(e, public_base_url)
        if found:
            await outbox.enqueue_many(conn, found, request_id=trace_id)

    return (
        Handlers()
        .on(BookingMade, in_transaction=made)
        .on(BookingCancelled, in_transaction=cancelled)
        .on(WaitlistChanged, in_transaction=waitlist)
    )
