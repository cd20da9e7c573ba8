"""What ReviewService caches, under which keys, and who makes it stale.

Cached (rows, never per-caller views — every value here is public): a user's ratings (``GetUserRating``), a
host's profile (``GetHostProfile``) and the first page of their held events (``ListHeldEvents``), all read
through :class:`services.common.cache.Cache` with the TTL as a backstop.

Invalidation (held before the write's COMMIT, invalidated after it: :mod:`services.common.cache`):

- a review is written or edited → the subject's rating; for HOST reviews also the host's profile and every
  event of theirs (EventService shows the host's rating on events); for EVENT reviews the host's profile scope
  (the held-events page shows each event's rating);
- an event is held (EventService.CompleteEvent) → the host's profile scope;
- a user's display name changes (``UserRenamed``, from any domain's write) → their profile scope.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final
from uuid import UUID

from services.common.cache import Cache, Codec, invalidation
from services.common.dbtypes import Conn
from services.common.domain_events import EventCompleted, ReviewPosted, UserRenamed
from services.common.uow import Handlers
from services.common.vocabulary import Rating
from services.review.repository import HeldEventRow, HostProfileRow

SCHEMA: Final = "v1"


def rating_key(user_id: str) -> str:
    return f"rating:{SCHEMA}:{user_id}"


def profile_key(host_id: str) -> str:
    """The host's profile; also the scope of their cached held-events pages."""
    return f"host_profile:{SCHEMA}:{host_id}"


def held_page_key(host_id: str, limit: int) -> str:
    return f"{profile_key(host_id)}:held:{limit}"


async def invalidate_host_profile(cache: Cache, host_id: str) -> None:
    """The host held another event, or one of their events got a new rating."""
    await cache.invalidate(profile_key(host_id))


def handlers(cache: Cache) -> Handlers:
    """Hold before COMMIT, invalidate after it (:func:`services.common.cache.invalidation`) what a held event, a
    review or a new display name made stale (the event domain's cache hears them too)."""

    async def completed(conn: Conn, e: EventCompleted) -> list[str]:
        return [profile_key(e.host_id)]  # held-event count and list

    async def reviewed(conn: Conn, e: ReviewPosted) -> list[str]:
        if e.about == "EVENT":
            return [profile_key(e.host_id)]  # the event's rating, on the held-events list
        scopes = [rating_key(e.subject_user_id or e.host_id)]
        return [*scopes, profile_key(e.host_id)] if e.about == "HOST" else scopes

    async def renamed(conn: Conn, e: UserRenamed) -> list[str]:
        return [profile_key(e.user_id)]  # the name on their host profile

    return Handlers().merged(
        invalidation(cache, EventCompleted, completed),
        invalidation(cache, ReviewPosted, reviewed),
        invalidation(cache, UserRenamed, renamed),
    )


def _rating(r: Rating) -> list[float | int]:
    return [r.average, r.count]


def _parse_rating(value: Any) -> Rating:
    return Rating(average=float(value[0]), count=int(value[1]))


RATINGS_CODEC: Final[Codec[dict[str, Rating]]] = Codec(
    "user_rating",
    lambda ratings: {role: _rating(r) for role, r in ratings.items()},
    lambda value: {role: _parse_rating(r) for role, r in value.items()},
)

PROFILE_CODEC: Final[Codec[HostProfileRow]] = Codec(
    "host_profile",
    lambda p: {"name": p.display_name, "rating": _rating(p.rating), "held": p.held_event_count},
    lambda v: HostProfileRow(v["name"], _parse_rating(v["rating"]), int(v["held"])),
)


def _held_to_json(rows: list[HeldEventRow]) -> list[dict[str, Any]]:
    return [
        {
            "id": str(r.event_id),
            "title": r.title,
            "film": r.film_title,
            "start": r.start_time.isoformat(),
            "rating": _rating(r.rating),
        }
        for r in rows
    ]


def _held_from_json(value: Any) -> list[HeldEventRow]:
    return [
        HeldEventRow(
            event_id=UUID(v["id"]),
            title=v["title"],
            film_title=v["film"],
            start_time=datetime.fromisoformat(v["start"]),
            rating=_parse_rating(v["rating"]),
        )
        for v in value
    ]


HELD_PAGE_CODEC: Final[Codec[list[HeldEventRow]]] = Codec("held_events", _held_to_json, _held_from_json)
