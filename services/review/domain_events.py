"""The review domain's own events: :class:`ReviewRevealed` is a :class:`ReviewPosted` (what the caches hear)
carrying what the subject's mail needs."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.domain_events import ReviewPosted
from services.review.domain import Review

__all__ = ["ReviewRevealed"]


@dataclass(frozen=True)
class ReviewRevealed(ReviewPosted):
    """A pending review became visible and counted (its pair completed, or the review window closed)."""

    review: Review
    event_title: str
