"""The one text rule every string of every request obeys, checked from the request's descriptor.

The interceptor runs :func:`check_request` on each decoded request before the servicer sees it, so no string
reaches SQL, JSON or a comparison unchecked. A string field is valid when it

* is valid UTF-8 (protobuf refuses anything else while decoding; the interceptor turns that into
  INVALID_ARGUMENT too),
* is at most :data:`MAX_LENGTH` characters (:data:`MAX_FREE_TEXT_LENGTH` for free text),
* holds no control character (Unicode category ``Cc``: NUL, ``\\x01``–``\\x1f``, DEL, the C1 range) and no
  surrogate or non-character; free-text fields (:data:`FREE_TEXT_FIELDS`: descriptions, messages, reasons,
  review texts) may hold newlines and tabs.

The field's own shape (a resource name, an invite token, a time zone, the per-field length) is the mapper's
business; this module is the floor under all of them. Violations name the field as the mappers do
(``event.description``, ``users[3]``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import Violations

__all__ = [
    "FREE_TEXT_FIELDS",
    "MAX_FREE_TEXT_LENGTH",
    "MAX_LENGTH",
    "check_request",
    "text_problem",
]

MAX_LENGTH: Final = 2048
"""Any string that is not free text: names, ids, tokens, filters (each mapper has a tighter limit)."""
MAX_FREE_TEXT_LENGTH: Final = 10_000
"""Free text (the domain's own limits are tighter: 5,000 for a description, 2,000 for a review)."""

FREE_TEXT_FIELDS: Final = frozenset(
    {
        "cowatch.event.v1.Event.description",
        "cowatch.event.v1.SendInvitationsRequest.message",
        "cowatch.event.v1.CancelEventRequest.reason",
        "cowatch.review.v1.Review.text",
    }
)
"""Fields (full proto names) where newlines and tabs are allowed."""

_FREE_TEXT_CONTROLS: Final = frozenset("\n\t\r")


def text_problem(value: str, *, free_text: bool = False) -> str | None:
    """Why ``value`` breaks the text rule, or ``None`` when it obeys it."""
    limit = MAX_FREE_TEXT_LENGTH if free_text else MAX_LENGTH
    if len(value) > limit:
        return f"must be at most {limit} characters"
    if value.isascii():
        if value.isprintable() or all(c.isprintable() or (free_text and c in _FREE_TEXT_CONTROLS) for c in value):
            return None
        return "must not contain control characters" + ("" if free_text else " (newlines and tabs included)")
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc" and not (free_text and char in _FREE_TEXT_CONTROLS):
            return "must not contain control characters" + ("" if free_text else " (newlines and tabs included)")
        if category == "Cs":
            return "must be valid UTF-8"
        code = ord(char)
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return "must not contain Unicode non-characters"
    return None


def _strings(message: Message, path: str) -> Iterator[tuple[str, str, bool]]:
    """(field path, value, free text?) of every string set anywhere in ``message``."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            free = field.full_name in FREE_TEXT_FIELDS
            if field.is_repeated:
                for i, item in enumerate(value):
                    yield f"{name}[{i}]", item, free
            else:
                yield name, value, free
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str):
                        yield f"{name}[{key[:40]!r}]", key, False
                    if isinstance(item, str):
                        yield f"{name}[{key!r}]"[:100], item, False
                    elif isinstance(item, Message):
                        yield from _strings(item, f"{name}.")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    yield from _strings(item, f"{name}[{i}].")
            else:
                yield from _strings(value, f"{name}.")


def check_request(message: Message) -> Violations:
    """The text-rule violations of every string in ``message`` (empty when it obeys the rule)."""
    violations = Violations()
    for name, value, free in _strings(message, ""):
        problem = text_problem(value, free_text=free)
        if problem is not None:
            violations.add(name, problem)
    return violations
