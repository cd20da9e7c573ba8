"""Share links: the one URL of an event that people open (the web page), plus the invite token of a private one."""

from __future__ import annotations

from uuid import UUID


def event_link(public_base_url: str, event_id: UUID, invite_token: str = "") -> str:
    """``{PUBLIC_BASE_URL}/events/{id}``, with ``?invite=…`` when an invite token is given."""
    link = f"{public_base_url.rstrip('/')}/events/{event_id}"
    return f"{link}?invite={invite_token}" if invite_token else link
