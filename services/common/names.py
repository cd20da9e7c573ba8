"""Resource names (AIP-122), built and parsed in one place. Pure Python (no grpc).

Every ``{collection}/{id}`` string the services produce comes from a builder here (``names.event(id)``), and
every name a request carries is parsed here, so a malformed one is always INVALID_ARGUMENT on the field it came in.
"""

from __future__ import annotations

from uuid import UUID

from services.common.errors import InvalidArgument
from services.common.identity import valid_user_id


def event(event_id: UUID) -> str:
    return f"events/{event_id}"


def booking(booking_id: UUID) -> str:
    return f"bookings/{booking_id}"


def review(review_id: UUID) -> str:
    return f"reviews/{review_id}"


def user(user_id: str) -> str:
    return f"users/{user_id}"


def parse_uuid_name(value: str, collection: str, singular: str, field_name: str) -> UUID:
    """``{collection}/{uuid}`` → UUID; anything else is INVALID_ARGUMENT on ``field_name``.

    >>> parse_uuid_name("events/5e83ce54-23b6-4343-ab00-7bba8d6d0228", "events", "event", "name")
    UUID('5e83ce54-23b6-4343-ab00-7bba8d6d0228')
    """
    prefix, _, raw = value.partition("/")
    if prefix != collection or not raw:
        raise InvalidArgument.field(field_name, f"must be a {singular} name of the form {collection}/{{{singular}}}")
    try:
        return UUID(raw)
    except ValueError:
        raise InvalidArgument.field(
            field_name, f"must be a {singular} name of the form {collection}/{{uuid}}"
        ) from None


def parse_event(value: str, field_name: str = "name") -> UUID:
    """``events/{uuid}`` → UUID; anything else is INVALID_ARGUMENT on ``field_name``."""
    return parse_uuid_name(value, "events", "event", field_name)


def parse_booking(value: str, field_name: str = "name") -> UUID:
    return parse_uuid_name(value, "bookings", "booking", field_name)


def parse_review(value: str, field_name: str = "name") -> UUID:
    return parse_uuid_name(value, "reviews", "review", field_name)


def parse_user(value: str, field_name: str) -> str:
    """``users/{user}`` → the user id (opaque, printable, at most 128 characters)."""
    prefix, _, raw = value.partition("/")
    if prefix != "users" or not valid_user_id(raw):
        raise InvalidArgument.field(field_name, "must be a user name of the form users/{user}")
    return raw


def waitlist_entry(event_id: UUID, entry_id: UUID) -> str:
    return f"events/{event_id}/waitlistEntries/{entry_id}"


def parse_waitlist_entry(value: str, field_name: str = "name") -> tuple[UUID, UUID]:
    """``events/{uuid}/waitlistEntries/{uuid}`` → (event id, entry id)."""
    parts = value.split("/")
    if len(parts) == 4 and parts[0] == "events" and parts[2] == "waitlistEntries":
        try:
            return UUID(parts[1]), UUID(parts[3])
        except ValueError:
            pass
    raise InvalidArgument.field(
        field_name, "must be a waitlist entry name of the form events/{uuid}/waitlistEntries/{uuid}"
    )
