"""Review domain: who may review what after a held event, and how ratings add up.

Pure Python: no gRPC, no protobuf, no SQL. The service layer gathers the facts about an event and its
participants (:class:`ReviewableEvent`), asks these functions whether a review is allowed (they raise
:mod:`services.common.errors` exceptions with stable reasons), and persists the result together with the
aggregate change (:class:`RatingChange`) in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from services.common import errors, names
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Violations,
)
from services.common.vocabulary import EventState as State
from services.common.vocabulary import Rating, Visibility

__all__ = [
    "MAX_RATING",
    "MIN_RATING",
    "TEXT_MAX",
    "Draft",
    "Edit",
    "Rating",
    "RatingChange",
    "Review",
    "ReviewState",
    "ReviewableEvent",
    "Role",
    "SubjectType",
    "already_reviewed",
    "apply_edit",
    "check_rating",
    "check_text",
    "counterpart",
    "ensure_author",
    "ensure_editable",
    "ensure_etag",
    "ensure_visible",
    "ensure_window_open",
    "parse_review_name",
    "rating_change_for_new",
    "resolve_subject",
    "reveal_due",
    "review_name",
    "subject_user_name",
    "validate_draft",
    "validate_edit",
]

MIN_RATING = 1
MAX_RATING = 5
TEXT_MAX = 2000


class SubjectType(StrEnum):
    EVENT = "EVENT"
    HOST = "HOST"
    GUEST = "GUEST"


class ReviewState(StrEnum):
    """``PENDING_REVEAL``: seen by its author only, counted nowhere; ``REVEALED``: public, counted, frozen."""

    PENDING_REVEAL = "PENDING_REVEAL"
    REVEALED = "REVEALED"


DEFAULT_REVIEW_WINDOW = timedelta(days=14)


class Role(StrEnum):
    """A participant's role in a held event (event.participants.role), also the role a user rating is for."""

    HOST = "HOST"
    GUEST = "GUEST"


@dataclass(frozen=True, slots=True)
class Review:
    id: UUID
    event_id: UUID
    subject_type: SubjectType
    subject_user_id: str | None  # None for EVENT reviews
    author_id: str
    author_display_name: str
    rating: int
    text: str
    version: int
    create_time: datetime
    update_time: datetime
    reveal_due: datetime
    """When the review window closes: the worker reveals it then if nothing did before."""
    reveal_time: datetime | None = None
    """``None`` while pending."""

    @property
    def name(self) -> str:
        return review_name(self.id)

    @property
    def state(self) -> ReviewState:
        return ReviewState.PENDING_REVEAL if self.reveal_time is None else ReviewState.REVEALED

    @property
    def etag(self) -> str:
        return str(self.version)


@dataclass(frozen=True, slots=True)
class Draft:
    """What an author asks to create. ``subject_user_id`` is what the request named (``None``: nobody)."""

    event_id: UUID
    subject_type: SubjectType
    subject_user_id: str | None
    rating: int
    text: str


@dataclass(frozen=True, slots=True)
class Edit:
    """New values for a review; ``None`` leaves the field as it is."""

    rating: int | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewableEvent:
    """What the rules need to know about one event, from one caller's point of view."""

    event_id: UUID
    host_id: str
    state: State
    visibility: Visibility
    caller_role: Role | None  # the caller's row in event.participants (written when the event was held)
    caller_has_booking: bool  # the caller holds a confirmed booking (sees a private event before it is held)
    subject_role: Role | None = None  # the named subject's row in event.participants
    complete_time: datetime | None = None  # when the host marked it held (None: not held)

    @property
    def name(self) -> str:
        return names.event(self.event_id)


@dataclass(frozen=True, slots=True)
class RatingChange:
    """What one review write adds to one aggregate: an EVENT's rating, or a user's rating in a role."""

    subject_type: SubjectType
    event_id: UUID
    user_id: str | None
    role: Role | None
    rating_sum: int
    rating_count: int

    @property
    def is_noop(self) -> bool:
        return self.rating_sum == 0 and self.rating_count == 0


# --------------------------------------------------------------------------- names


review_name = names.review
parse_review_name = names.parse_review


def subject_user_name(user_id: str | None) -> str:
    return names.user(user_id) if user_id is not None else ""


# --------------------------------------------------------------------------- validation


def _printable(value: str) -> bool:
    return all(ch.isprintable() or ch in "\n\t" for ch in value)


def check_rating(v: Violations, field_name: str, rating: int) -> None:
    if not MIN_RATING <= rating <= MAX_RATING:
        v.add(field_name, f"must be between {MIN_RATING} and {MAX_RATING}")


def check_text(v: Violations, field_name: str, text: str) -> None:
    if len(text) > TEXT_MAX:
        v.add(field_name, f"must be at most {TEXT_MAX} characters")
    elif not _printable(text):
        v.add(field_name, "must not contain control characters")


def validate_draft(draft: Draft, author_id: str, *, prefix: str = "review") -> Draft:
    """Check what a request alone can get wrong; returns the draft as stored (text trimmed).

    Raises one INVALID_ARGUMENT listing every bad field, or ``CANNOT_REVIEW_SELF`` when the request names
    its own author as the subject.
    """
    v = Violations()
    check_rating(v, f"{prefix}.rating", draft.rating)
    check_text(v, f"{prefix}.text", draft.text)
    if draft.subject_type is SubjectType.EVENT and draft.subject_user_id is not None:
        v.add(f"{prefix}.subject_user", "must be empty for EVENT reviews")
    if draft.subject_type is SubjectType.GUEST and draft.subject_user_id is None:
        v.add(f"{prefix}.subject_user", "is required for GUEST reviews: name the guest reviewed")
    v.raise_if_any()
    if draft.subject_user_id == author_id:
        raise InvalidArgument(
            "CANNOT_REVIEW_SELF",
            "nobody can review themselves",
            field_violations=[(f"{prefix}.subject_user", "must not be the author")],
        )
    return Draft(draft.event_id, draft.subject_type, draft.subject_user_id, draft.rating, draft.text.strip())


def validate_edit(edit: Edit, *, prefix: str = "review") -> Edit:
    v = Violations()
    if edit.rating is not None:
        check_rating(v, f"{prefix}.rating", edit.rating)
    if edit.text is not None:
        check_text(v, f"{prefix}.text", edit.text)
    v.raise_if_any()
    return Edit(edit.rating, edit.text.strip() if edit.text is not None else None)


# --------------------------------------------------------------------------- eligibility


def ensure_visible(facts: ReviewableEvent, caller_id: str | None) -> None:
    """A private event does not exist for anyone but its host, its participants and its booked guests."""
    if facts.visibility is not Visibility.PRIVATE:
        return
    if caller_id is not None and (caller_id == facts.host_id or facts.caller_role is not None):
        return
    if facts.caller_has_booking:
        return
    raise errors.event_not_found(facts.name)


def resolve_subject(draft: Draft, facts: ReviewableEvent, author_id: str) -> str | None:
    """Apply the eligibility rules in order; returns the reviewed user's id (``None`` for EVENT reviews).

    Order: the event must be visible, then held; the author must have taken part; the author's role must
    allow the subject; a reviewed guest must have taken part too.
    """
    ensure_visible(facts, author_id)
    if facts.state is not State.COMPLETED:
        raise FailedPrecondition(
            "EVENT_NOT_HELD",
            "only a held event can be reviewed: the host marks it held after it has ended",
            metadata={"event": facts.name, "state": facts.state.value},
        )
    if facts.caller_role is None:
        raise PermissionDenied(
            "NOT_A_PARTICIPANT",
            "only the host and the guests whose booking was confirmed when the event was held may review it",
            metadata={"event": facts.name},
        )
    match draft.subject_type:
        case SubjectType.EVENT:
            return None
        case SubjectType.HOST:
            if facts.caller_role is not Role.GUEST:
                raise PermissionDenied("SUBJECT_NOT_ALLOWED", "the host can't review the host; guests review hosts")
            if draft.subject_user_id is not None and draft.subject_user_id != facts.host_id:
                raise InvalidArgument.field("review.subject_user", "must be the event's host, or empty")
            return facts.host_id
        case SubjectType.GUEST:
            if facts.caller_role is not Role.HOST:
                raise PermissionDenied("SUBJECT_NOT_ALLOWED", "only the host reviews guests")
            subject = draft.subject_user_id
            if subject is None:  # pragma: no cover - validate_draft refuses it
                raise InvalidArgument.field("review.subject_user", "is required for GUEST reviews")
            if facts.subject_role is not Role.GUEST:
                raise FailedPrecondition(
                    "SUBJECT_NOT_A_PARTICIPANT",
                    "the reviewed guest did not take part in the event",
                    metadata={"event": facts.name, "subject_user": names.user(subject)},
                )
            return subject


def reveal_due(facts: ReviewableEvent, window: timedelta) -> datetime:
    """When the event's review window closes: ``window`` after the host marked it held."""
    assert facts.complete_time is not None, "only a held event has a review window"
    return facts.complete_time + window


def ensure_window_open(facts: ReviewableEvent, window: timedelta, now: datetime) -> datetime:
    """Refuse a review once the window has closed; returns when it closes."""
    closes = reveal_due(facts, window)
    if now >= closes:
        raise FailedPrecondition(
            "REVIEW_WINDOW_CLOSED",
            f"reviews of this event closed {window.days} days after it was held",
            metadata={"event": facts.name, "closed_at": closes.isoformat()},
        )
    return closes


def ensure_editable(review: Review, now: datetime) -> None:
    """Only a pending review can be edited or withdrawn: a revealed one (or one whose window has closed, which
    the worker is about to reveal) is frozen."""
    if review.reveal_time is not None or now >= review.reveal_due:
        raise FailedPrecondition(
            "REVIEW_FROZEN",
            "this review has been revealed (or its review window has closed): it can no longer change",
            metadata={"review": review.name},
        )


def counterpart(review: Review, host_id: str) -> tuple[str, SubjectType, str] | None:
    """The review that completes a pair with ``review``: (its author, subject type, subject), or ``None`` for an
    EVENT review (those wait for the window). A guest's HOST review pairs with the host's GUEST review of them."""
    match review.subject_type:
        case SubjectType.HOST:
            return host_id, SubjectType.GUEST, review.author_id
        case SubjectType.GUEST:
            assert review.subject_user_id is not None
            return review.subject_user_id, SubjectType.HOST, review.author_id
        case SubjectType.EVENT:
            return None


def already_reviewed(existing: UUID | None) -> AlreadyExists:
    metadata = {"review": review_name(existing)} if existing is not None else {}
    return AlreadyExists(
        "ALREADY_REVIEWED",
        "you have already reviewed this subject for this event; edit that review instead",
        metadata=metadata,
    )


def ensure_author(review: Review, caller_id: str) -> None:
    if review.author_id != caller_id:
        raise PermissionDenied("NOT_REVIEW_AUTHOR", "only the author may edit or withdraw a review")


def ensure_etag(review: Review, etag: str) -> None:
    if etag and etag != review.etag:
        raise Aborted(
            "ETAG_MISMATCH",
            "the review changed since you read it; read it again and retry",
            metadata={"current_etag": review.etag},
        )


def apply_edit(review: Review, edit: Edit) -> tuple[int, str]:
    """The (rating, text) after ``edit``."""
    rating = review.rating if edit.rating is None else edit.rating
    text = review.text if edit.text is None else edit.text
    return rating, text


# --------------------------------------------------------------------------- aggregates


def _target(subject_type: SubjectType, subject_user_id: str | None) -> tuple[str | None, Role | None]:
    match subject_type:
        case SubjectType.EVENT:
            return None, None
        case SubjectType.HOST:
            return subject_user_id, Role.HOST
        case SubjectType.GUEST:
            return subject_user_id, Role.GUEST


def rating_change_for_new(review: Review) -> RatingChange:
    """A revealed review adds its rating to the sum and one to the count of its subject's aggregate (pending
    reviews count nowhere, and revealed ones never change, so this is the only change an aggregate sees)."""
    user_id, role = _target(review.subject_type, review.subject_user_id)
    return RatingChange(review.subject_type, review.event_id, user_id, role, review.rating, 1)
