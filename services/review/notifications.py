"""The mail ReviewService sends (through the outbox): "a review about you is visible", to the subject of a
person review when it is revealed (:func:`handlers`, in the reveal's transaction)."""

from __future__ import annotations

from services.common import links, names
from services.common.dbtypes import Conn
from services.common.uow import Handlers
from services.notification import outbox
from services.notification.outbox import Message
from services.review.domain_events import ReviewRevealed


def review_revealed(e: ReviewRevealed, link: str) -> Message | None:
    """``None`` for an EVENT review: nobody in particular is its subject."""
    review = e.review
    if review.subject_user_id is None:
        return None
    return Message(
        dedupe_key=f"review-revealed/{review.id}",
        template_id="review_revealed",
        recipients=[review.subject_user_id],
        params={
            "event": names.event(review.event_id),
            "event_title": e.event_title,
            "review": review.name,
            "author_name": review.author_display_name,
            "rating": review.rating,
            "role": review.subject_type.value,
            "link": link,
        },
    )


def handlers(public_base_url: str) -> Handlers:
    async def revealed(conn: Conn, e: ReviewRevealed, trace_id: str) -> None:
        message = review_revealed(e, links.event_link(public_base_url, e.event_id, ""))
        if message is not None:
            await outbox.enqueue(conn, message, request_id=trace_id)

    return Handlers().on(ReviewRevealed, in_transaction=revealed)
