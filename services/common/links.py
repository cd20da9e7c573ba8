"""Share links: the one URL of an event that people open (the web page), plus the invite token of a private one."""

from __future__ import annotations

import re
import secrets
from uuid import UUID

from services.common.errors import InvalidArgument

INVITE_TOKEN_MAX = 64
_INVITE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def event_link(public_base_url: str, event_id: UUID, invite_token: str = "") -> str:
    """``{PUBLIC_BASE_URL}/events/{id}``, with ``?invite=…`` when an invite token is given."""
    link = f"{public_base_url.rstrip('/')}/events/{event_id}"
    return f"{link}?invite={invite_token}" if invite_token else link


def new_invite_token() -> str:
    return secrets.token_urlsafe(24)


def parse_invite_token(value: str, field_name: str = "invite_token") -> str:
    """An invite token as a client sends it back: empty (none) or URL-safe base64 of at most 64 characters."""
    if value and (len(value) > INVITE_TOKEN_MAX or not _INVITE_TOKEN.fullmatch(value)):
        raise InvalidArgument.field(
            field_name, f"must be the invite token of a share link (URL-safe, at most {INVITE_TOKEN_MAX} characters)"
        )
    return value


def invite_matches(presented: str, expected: str) -> bool:
    """Whether a presented invite token is the event's current one (constant time; bytes, so any text is safe)."""
    return bool(presented) and bool(expected) and secrets.compare_digest(presented.encode(), expected.encode())
