"""The mail templates cowatch uses, and the parameters each one needs.

This is our side of the contract with the notification service (which owns the templates themselves): the
stand-in refuses a message whose template is unknown or lacks one of these parameters, exactly as a template
service would, so a test over the stand-in catches a message that could not be rendered.

Every template about an event gets the common event parameters (:data:`EVENT_PARAMS`): the title, the film,
the start time as people at the place read it (``start_local``, e.g. ``Sun 28 Mar 2027, 20:00 CEST
(Europe/Berlin)``), the place as the recipient may see it (``place_address`` only for people entitled to it:
the host and confirmed guests) and a link.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["EVENT_PARAMS", "TEMPLATES", "missing_params"]

EVENT_PARAMS: Final = (
    "event",  # events/{id}
    "event_title",
    "film_title",
    "start_local",  # local start time with zone abbreviation and IANA name
    "start_time",  # RFC 3339 UTC, for templates that format it themselves
    "time_zone",
    "place_name",
    "place_city",
    "link",
)

TEMPLATES: Final[Mapping[str, tuple[str, ...]]] = {
    # to the guest who booked
    "booking_confirmed": (*EVENT_PARAMS, "place_address", "seats"),
    # to the host: a guest booked / cancelled
    "booking_new_guest": (*EVENT_PARAMS, "guest_name", "seats"),
    "booking_cancelled": (*EVENT_PARAMS, "guest_name", "seats"),
    # to confirmed guests
    # (optional "overlaps": the recipient's other bookings a moved event now overlaps; both stay confirmed)
    "event_changed": (*EVENT_PARAMS, "place_address", "changes"),
    "event_cancelled": (*EVENT_PARAMS, "reason"),
    # to invited users (no address: they have not booked)
    "event_invitation": (*EVENT_PARAMS, "host_name", "message"),
    # to the host and every confirmed guest
    "reminder_24h": (*EVENT_PARAMS, "place_address", "role"),
    "reminder_1h": (*EVENT_PARAMS, "place_address", "role"),
    # to the subject of a person review, when it is revealed (role: HOST or GUEST, the subject's role)
    "review_revealed": ("event", "event_title", "review", "author_name", "rating", "role", "link"),
    # to a waitlisted guest: seats are held for you until offer_expire_time / it closes soon / it expired
    "waitlist_offer": (*EVENT_PARAMS, "seats", "waitlist_entry", "offer_expire_time", "offer_expire_local"),
    "waitlist_offer_closing": (*EVENT_PARAMS, "seats", "waitlist_entry", "offer_expire_time", "offer_expire_local"),
    "waitlist_offer_expired": (*EVENT_PARAMS, "seats", "waitlist_entry"),
    # to a waitlisted guest: the waitlist ended without seats for you (the event started or was cancelled)
    "waitlist_closed": (*EVENT_PARAMS, "seats", "waitlist_entry", "reason"),
}


def missing_params(template_id: str, params: Mapping[str, Any]) -> list[str]:
    """The parameters ``template_id`` needs that ``params`` lacks (``[]`` when complete).

    Raises ``KeyError`` for an unknown template.
    """
    return [name for name in TEMPLATES[template_id] if name not in params]
