"""Resource names (AIP-122): ``{collection}/{uuid}``, built and parsed in one place. Pure Python (no grpc)."""

from __future__ import annotations

from uuid import UUID

from services.common.errors import InvalidArgument


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
