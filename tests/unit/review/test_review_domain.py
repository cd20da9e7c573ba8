"""Review rules as pure functions: eligibility order and reasons, validation, aggregate arithmetic."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.event.domain import State, Visibility
from services.review import domain
from services.review.domain import Draft, Edit, Rating, Review, ReviewableEvent, ReviewState, Role, SubjectType

EVENT_ID = uuid.uuid4()
HOST, ANA, BEN = "host", "ana", "ben"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = timedelta(days=14)


def facts(
    caller_role: Role | None,
    *,
    state: State = State.COMPLETED,
    visibility: Visibility = Visibility.PUBLIC,
    subject_role: Role | None = None,
    booked: bool = False,
) -> ReviewableEvent:
    return ReviewableEvent(EVENT_ID, HOST, state, visibility, caller_role, booked, subject_role)


def draft(subject_type: SubjectType, subject: str | None = None, rating: int = 4, text: str = "") -> Draft:
    return Draft(EVENT_ID, subject_type, subject, rating, text)


def review(subject_type: SubjectType = SubjectType.HOST, subject: str | None = HOST, rating: int = 4) -> Review:
    return Review(uuid.uuid4(), EVENT_ID, subject_type, subject, ANA, "Ana", rating, "", 3, T0, T0, T0 + WINDOW)


def reason(exc: pytest.ExceptionInfo[DomainError]) -> tuple[type[DomainError], str]:
    return type(exc.value), exc.value.reason


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("d", "field"),
    [
        (draft(SubjectType.EVENT, rating=0), "review.rating"),
        (draft(SubjectType.EVENT, rating=6), "review.rating"),
        (draft(SubjectType.EVENT, text="x" * 2001), "review.text"),
        (draft(SubjectType.EVENT, text="bell\x07"), "review.text"),
        (draft(SubjectType.EVENT, subject=ANA), "review.subject_user"),
        (draft(SubjectType.GUEST), "review.subject_user"),
    ],
)
def test_invalid_drafts_name_the_field(d: Draft, field: str):
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_draft(d, HOST)
    assert exc.value.reason == "INVALID_ARGUMENT"
    assert field in dict(exc.value.field_violations)


def test_draft_text_is_trimmed_and_may_hold_newlines():
    assert domain.validate_draft(draft(SubjectType.EVENT, text="  two\nlines\t "), ANA).text == "two\nlines"
    assert domain.validate_draft(draft(SubjectType.EVENT, text="é" * 2000), ANA).text == "é" * 2000


@pytest.mark.parametrize("subject_type", [SubjectType.HOST, SubjectType.GUEST])
def test_naming_yourself_is_cannot_review_self(subject_type: SubjectType):
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_draft(draft(subject_type, subject=ANA), ANA)
    assert exc.value.reason == "CANNOT_REVIEW_SELF"
    assert "review.subject_user" in dict(exc.value.field_violations)


def test_edit_validation():
    assert domain.validate_edit(Edit(rating=None, text=" hi ")) == Edit(None, "hi")
    with pytest.raises(InvalidArgument) as exc:
        domain.validate_edit(Edit(rating=9, text="t" * 2001))
    assert set(dict(exc.value.field_violations)) == {"review.rating", "review.text"}


# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize(
    ("d", "f", "author", "expected"),
    [
        # The event must be held...
        (draft(SubjectType.EVENT), facts(None, state=State.SCHEDULED), ANA, (FailedPrecondition, "EVENT_NOT_HELD")),
        (
            draft(SubjectType.HOST),
            facts(Role.GUEST, state=State.CANCELLED),
            ANA,
            (FailedPrecondition, "EVENT_NOT_HELD"),
        ),
        # ...by someone who took part...
        (draft(SubjectType.EVENT), facts(None), ANA, (PermissionDenied, "NOT_A_PARTICIPANT")),
        (draft(SubjectType.HOST), facts(None, booked=True), ANA, (PermissionDenied, "NOT_A_PARTICIPANT")),
        # ...in the role the subject allows...
        (draft(SubjectType.HOST), facts(Role.HOST), HOST, (PermissionDenied, "SUBJECT_NOT_ALLOWED")),
        (
            draft(SubjectType.GUEST, BEN),
            facts(Role.GUEST, subject_role=Role.GUEST),
            ANA,
            (PermissionDenied, "SUBJECT_NOT_ALLOWED"),
        ),
        # ...about a guest who took part too.
        (draft(SubjectType.GUEST, BEN), facts(Role.HOST), HOST, (FailedPrecondition, "SUBJECT_NOT_A_PARTICIPANT")),
        (
            draft(SubjectType.GUEST, BEN),
            facts(Role.HOST, subject_role=Role.HOST),
            HOST,
            (FailedPrecondition, "SUBJECT_NOT_A_PARTICIPANT"),
        ),
        # A private event doesn't exist for outsiders, whatever else is wrong.
        (
            draft(SubjectType.EVENT),
            facts(None, visibility=Visibility.PRIVATE, state=State.SCHEDULED),
            ANA,
            (NotFound, "EVENT_NOT_FOUND"),
        ),
        (draft(SubjectType.HOST, HOST), facts(Role.GUEST), ANA, None),
    ],
)
def test_eligibility_reasons(d: Draft, f: ReviewableEvent, author: str, expected):
    if expected is None:
        assert domain.resolve_subject(d, f, author) == HOST
        return
    with pytest.raises(DomainError) as exc:
        domain.resolve_subject(d, f, author)
    assert reason(exc) == expected


def test_who_reviews_what():
    assert domain.resolve_subject(draft(SubjectType.EVENT), facts(Role.HOST), HOST) is None
    assert domain.resolve_subject(draft(SubjectType.EVENT), facts(Role.GUEST), ANA) is None
    assert domain.resolve_subject(draft(SubjectType.HOST), facts(Role.GUEST), ANA) == HOST
    guest = draft(SubjectType.GUEST, BEN)
    assert domain.resolve_subject(guest, facts(Role.HOST, subject_role=Role.GUEST), HOST) == BEN


def test_a_host_review_names_the_host_or_nobody():
    with pytest.raises(InvalidArgument) as exc:
        domain.resolve_subject(draft(SubjectType.HOST, BEN), facts(Role.GUEST), ANA)
    assert "review.subject_user" in dict(exc.value.field_violations)


def test_private_event_visibility():
    private = facts(None, visibility=Visibility.PRIVATE)
    with pytest.raises(NotFound):
        domain.ensure_visible(private, ANA)
    with pytest.raises(NotFound):
        domain.ensure_visible(private, None)
    domain.ensure_visible(private, HOST)
    domain.ensure_visible(replace(private, caller_role=Role.GUEST), ANA)
    domain.ensure_visible(replace(private, caller_has_booking=True), ANA)
    domain.ensure_visible(facts(None), None)  # public: anyone


def test_already_reviewed_points_at_the_existing_review():
    existing = uuid.uuid4()
    err = domain.already_reviewed(existing)
    assert isinstance(err, AlreadyExists) and err.reason == "ALREADY_REVIEWED"
    assert err.metadata == {"review": f"reviews/{existing}"}


# --------------------------------------------------------------------------- editing


def test_only_the_author_edits_with_a_current_etag():
    r = review()
    domain.ensure_author(r, ANA)
    with pytest.raises(PermissionDenied) as denied:
        domain.ensure_author(r, HOST)
    assert denied.value.reason == "NOT_REVIEW_AUTHOR"
    domain.ensure_etag(r, "")
    domain.ensure_etag(r, "3")
    with pytest.raises(Aborted) as aborted:
        domain.ensure_etag(r, "2")
    assert (aborted.value.reason, aborted.value.metadata) == ("ETAG_MISMATCH", {"current_etag": "3"})


def test_apply_edit_keeps_what_is_not_named():
    r = replace(review(rating=4), text="old")
    assert domain.apply_edit(r, Edit()) == (4, "old")
    assert domain.apply_edit(r, Edit(rating=2)) == (2, "old")
    assert domain.apply_edit(r, Edit(text="")) == (4, "")


# --------------------------------------------------------------------------- aggregates


@pytest.mark.parametrize(
    ("subject_type", "subject", "user", "role"),
    [
        (SubjectType.EVENT, None, None, None),
        (SubjectType.HOST, HOST, HOST, Role.HOST),
        (SubjectType.GUEST, BEN, BEN, Role.GUEST),
    ],
)
def test_each_review_counts_towards_its_subjects_aggregate(subject_type, subject, user, role):
    new = domain.rating_change_for_new(review(subject_type, subject, rating=5))
    assert (new.subject_type, new.event_id, new.user_id, new.role) == (subject_type, EVENT_ID, user, role)
    assert (new.rating_sum, new.rating_count) == (5, 1)


# --------------------------------------------------------------------------- blind reveal


def test_reviews_are_refused_once_the_window_has_closed():
    held = replace(facts(Role.GUEST), complete_time=T0)
    assert domain.ensure_window_open(held, WINDOW, T0 + WINDOW - timedelta(seconds=1)) == T0 + WINDOW
    with pytest.raises(FailedPrecondition) as exc:
        domain.ensure_window_open(held, WINDOW, T0 + WINDOW)
    assert exc.value.reason == "REVIEW_WINDOW_CLOSED"
    assert exc.value.metadata["closed_at"] == (T0 + WINDOW).isoformat()


def test_a_pending_review_is_editable_until_revealed_or_its_window_closes():
    pending = review()
    assert pending.state is ReviewState.PENDING_REVEAL
    domain.ensure_editable(pending, T0)
    for frozen, now in ((replace(pending, reveal_time=T0), T0), (pending, T0 + WINDOW)):
        with pytest.raises(FailedPrecondition) as exc:
            domain.ensure_editable(frozen, now)
        assert exc.value.reason == "REVIEW_FROZEN"
    assert replace(pending, reveal_time=T0).state is ReviewState.REVEALED


def test_person_reviews_pair_with_the_other_persons_review_of_the_author():
    by_guest = replace(review(SubjectType.HOST, HOST), author_id=BEN)
    assert domain.counterpart(by_guest, HOST) == (HOST, SubjectType.GUEST, BEN)
    by_host = replace(review(SubjectType.GUEST, BEN), author_id=HOST)
    assert domain.counterpart(by_host, HOST) == (BEN, SubjectType.HOST, HOST)
    assert domain.counterpart(review(SubjectType.EVENT, None), HOST) is None


@given(st.lists(st.integers(1, 5), max_size=50))
def test_rating_average_is_rounded_to_two_decimals(stars: list[int]):
    rating = Rating.of(sum(stars), len(stars))
    assert rating.count == len(stars)
    if stars:
        assert abs(rating.average - sum(stars) / len(stars)) <= 0.005 + 1e-9
        assert 1.0 <= rating.average <= 5.0
    else:
        assert rating.average == 0.0


def test_review_names():
    rid = uuid.uuid4()
    assert domain.parse_review_name(domain.review_name(rid)) == rid
    for bad in ("", "reviews/", "reviews/x", f"events/{rid}"):
        with pytest.raises(InvalidArgument):
            domain.parse_review_name(bad, "review.name")
