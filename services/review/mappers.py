"""Proto ↔ domain for ReviewService. Generated types stop here: nothing below the servicer sees them."""

from __future__ import annotations

from uuid import UUID

from cowatch.review.v1 import resources_pb2, service_pb2

from services.common import context, names
from services.common.errors import InvalidArgument, Violations
from services.common.identity import User
from services.common.protos import rating_to_proto, reliability_to_proto, request_key, to_timestamp
from services.review import domain
from services.review.domain import Draft, Edit, Review, ReviewState, SubjectType
from services.review.service import (
    CreateReview,
    DeleteReview,
    HeldEvent,
    HostProfile,
    ListHeldEvents,
    ListReviews,
    UpdateReview,
    UserRating,
)

_SUBJECT_TO_PROTO = {
    SubjectType.EVENT: resources_pb2.Review.EVENT,
    SubjectType.HOST: resources_pb2.Review.HOST,
    SubjectType.GUEST: resources_pb2.Review.GUEST,
}
_SUBJECT_FROM_PROTO = {v: k for k, v in _SUBJECT_TO_PROTO.items()}
_STATE_TO_PROTO = {
    ReviewState.PENDING_REVEAL: resources_pb2.Review.PENDING_REVEAL,
    ReviewState.REVEALED: resources_pb2.Review.REVEALED,
}
MUTABLE_FIELDS = frozenset({"rating", "text"})


def _collect(v: Violations, exc: InvalidArgument) -> None:
    for field, description in exc.field_violations:
        v.add(field, description)


def _user_child(value: str, child: str, field: str) -> str:
    """``users/{user}/{child}`` → the user id; anything else is INVALID_ARGUMENT on ``field``."""
    head, sep, tail = value.rpartition("/")
    if not sep or tail != child:
        raise InvalidArgument.field(field, f"must be of the form users/{{user}}/{child}")
    try:
        return names.parse_user(head, field)
    except InvalidArgument:
        raise InvalidArgument.field(field, f"must be of the form users/{{user}}/{child}") from None


# --------------------------------------------------------------------------- requests


def to_create_command(request: service_pb2.CreateReviewRequest, user: User) -> CreateReview:
    if not request.HasField("review"):
        raise InvalidArgument.field("review", "is required")
    r = request.review
    v = Violations()
    event_id: UUID | None = None
    if not r.event:
        v.add("review.event", "is required")
    else:
        try:
            event_id = names.parse_event(r.event, "review.event")
        except InvalidArgument as exc:
            _collect(v, exc)
    subject_type = _SUBJECT_FROM_PROTO.get(r.subject_type)
    if subject_type is None:
        v.add("review.subject_type", "must be EVENT, HOST or GUEST")
    subject_user: str | None = None
    if r.subject_user:
        try:
            subject_user = names.parse_user(r.subject_user, "review.subject_user")
        except InvalidArgument as exc:
            _collect(v, exc)
    if r.rating == 0:
        v.add("review.rating", f"is required: {domain.MIN_RATING} to {domain.MAX_RATING} stars")
    else:
        domain.check_rating(v, "review.rating", r.rating)
    domain.check_text(v, "review.text", r.text)
    v.raise_if_any()
    assert event_id is not None and subject_type is not None
    draft = Draft(event_id, subject_type, subject_user, r.rating, r.text)
    key = request_key(user, "CreateReview", request, request.request_id)
    return CreateReview(user=user, draft=draft, request=key, trace_id=context.request_id())


def etag(value: str, field: str = "review.etag") -> str:
    if value and not value.isdigit():
        raise InvalidArgument.field(field, "is not an etag returned by this API")
    return value


def to_update_command(request: service_pb2.UpdateReviewRequest, user: User) -> UpdateReview:
    if not request.HasField("review"):
        raise InvalidArgument.field("review", "is required")
    r = request.review
    review_id = domain.parse_review_name(r.name, "review.name")
    paths = set(request.update_mask.paths)
    if paths:
        if "*" in paths:
            paths = (paths - {"*"}) | MUTABLE_FIELDS
        unknown = sorted(paths - MUTABLE_FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"can't update {', '.join(unknown)}; mutable: {', '.join(sorted(MUTABLE_FIELDS))}"
            )
    else:  # AIP-134: an empty mask means every populated field
        if r.rating:
            paths.add("rating")
        if r.text:
            paths.add("text")
    edit = Edit(
        rating=r.rating if "rating" in paths else None,
        text=r.text if "text" in paths else None,
    )
    return UpdateReview(user=user, review_id=review_id, edit=edit, etag=etag(r.etag), trace_id=context.request_id())


def to_delete_command(request: service_pb2.DeleteReviewRequest, user: User) -> DeleteReview:
    review_id = domain.parse_review_name(request.name, "name")
    return DeleteReview(user=user, review_id=review_id, etag=etag(request.etag, "etag"), trace_id=context.request_id())


def to_list_query(request: service_pb2.ListReviewsRequest, user: User | None) -> ListReviews:
    v = Violations()
    if request.page_size < 0:
        v.add("page_size", "must not be negative")
    event_id: UUID | None = None
    subject_user: str | None = None
    if bool(request.event) == bool(request.subject_user):
        description = "set exactly one of event and subject_user"
        v.add("event", description)
        v.add("subject_user", description)
    elif request.event:
        try:
            event_id = names.parse_event(request.event, "event")
        except InvalidArgument as exc:
            _collect(v, exc)
    else:
        try:
            subject_user = names.parse_user(request.subject_user, "subject_user")
        except InvalidArgument as exc:
            _collect(v, exc)
    subject_type: SubjectType | None = None
    if request.subject_type != resources_pb2.Review.SUBJECT_TYPE_UNSPECIFIED:
        subject_type = _SUBJECT_FROM_PROTO.get(request.subject_type)
        if subject_type is None:
            v.add("subject_type", "must be EVENT, HOST, GUEST or unspecified")
        elif subject_type is SubjectType.EVENT and request.subject_user:
            v.add("subject_type", "reviews about a user are HOST or GUEST reviews")
    v.raise_if_any()
    return ListReviews(
        user=user,
        event_id=event_id,
        subject_user_id=subject_user,
        subject_type=subject_type,
        page_size=request.page_size,
        page_token=request.page_token,
    )


def user_rating_user(request: service_pb2.GetUserRatingRequest) -> str:
    return _user_child(request.name, "rating", "name")


def host_profile_user(request: service_pb2.GetHostProfileRequest) -> str:
    return _user_child(request.name, "hostProfile", "name")


def held_events_host(request: service_pb2.ListHeldEventsRequest) -> str:
    if request.page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return _user_child(request.parent, "hostProfile", "parent")


def to_held_events_query(request: service_pb2.ListHeldEventsRequest) -> ListHeldEvents:
    return ListHeldEvents(held_events_host(request), request.page_size, request.page_token)


# --------------------------------------------------------------------------- responses


def review_to_proto(r: Review) -> resources_pb2.Review:
    return resources_pb2.Review(
        name=r.name,
        event=names.event(r.event_id),
        subject_type=_SUBJECT_TO_PROTO[r.subject_type],
        subject_user=domain.subject_user_name(r.subject_user_id),
        author=names.user(r.author_id),
        author_display_name=r.author_display_name,
        rating=r.rating,
        text=r.text,
        create_time=to_timestamp(r.create_time),
        update_time=to_timestamp(r.update_time),
        etag=r.etag,
        state=_STATE_TO_PROTO[r.state],
        reveal_time=to_timestamp(r.reveal_time) if r.reveal_time is not None else None,
        window_close_time=to_timestamp(r.reveal_due),
    )


def user_rating_to_proto(r: UserRating) -> resources_pb2.UserRating:
    return resources_pb2.UserRating(
        name=f"{names.user(r.user_id)}/rating",
        as_host=rating_to_proto(r.as_host),
        as_guest=rating_to_proto(r.as_guest),
        guest_reliability=reliability_to_proto(r.guest_reliability),
    )


def host_profile_to_proto(p: HostProfile) -> resources_pb2.HostProfile:
    return resources_pb2.HostProfile(
        name=f"{names.user(p.user_id)}/hostProfile",
        display_name=p.display_name,
        host_rating=rating_to_proto(p.host_rating),
        held_event_count=p.held_event_count,
    )


def held_event_to_proto(e: HeldEvent) -> resources_pb2.HeldEvent:
    return resources_pb2.HeldEvent(
        event=names.event(e.event_id),
        title=e.title,
        film_title=e.film_title,
        start_time=to_timestamp(e.start_time),
        rating=rating_to_proto(e.rating),
    )
