"""Proto → command for ReviewService: field violations, update-mask semantics, idempotency keys (no I/O)."""

from __future__ import annotations

import uuid

import pytest
from cowatch.review.v1 import resources_pb2, service_pb2
from google.protobuf import field_mask_pb2

from services.common.errors import InvalidArgument
from services.common.identity import User
from services.review import mappers
from services.review.domain import Edit, SubjectType
from services.review.service import CreateReview

USER = User("ana", "Ana")
EVENT = f"events/{uuid.uuid4()}"
REVIEW = f"reviews/{uuid.uuid4()}"


def _update(*paths: str, rating: int = 0, text: str = "") -> service_pb2.UpdateReviewRequest:
    return service_pb2.UpdateReviewRequest(
        review=resources_pb2.Review(name=REVIEW, rating=rating, text=text),
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
    )


@pytest.mark.parametrize(
    ("request_", "edit"),
    [
        (_update(rating=3), Edit(rating=3)),
        (_update(text="hi"), Edit(text="hi")),
        (_update(rating=2, text="hi"), Edit(rating=2, text="hi")),
        (_update(), Edit()),
        (_update("text", rating=5), Edit(text="")),  # named: cleared; not named: ignored
        (_update("rating", rating=5, text="ignored"), Edit(rating=5)),
        (_update("*", rating=1), Edit(rating=1, text="")),
    ],
)
def test_update_mask_semantics(request_: service_pb2.UpdateReviewRequest, edit: Edit):
    assert mappers.to_update_command(request_, USER).edit == edit


def test_create_command_carries_a_request_key_bound_to_the_content():
    rid = str(uuid.uuid4())

    def command(rating: int) -> CreateReview:
        review = resources_pb2.Review(event=EVENT, subject_type=resources_pb2.Review.HOST, rating=rating)
        return mappers.to_create_command(service_pb2.CreateReviewRequest(review=review, request_id=rid), USER)

    first, same, other = command(4), command(4), command(5)
    assert first.draft.subject_type is SubjectType.HOST and first.draft.subject_user_id is None
    assert first.request is not None and same.request is not None and other.request is not None
    assert first.request == same.request
    assert first.request.request_hash != other.request.request_hash


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (service_pb2.ListReviewsRequest(), {"event", "subject_user"}),
        (service_pb2.ListReviewsRequest(event=EVENT, subject_user="users/a"), {"event", "subject_user"}),
        (service_pb2.ListReviewsRequest(event="events/1", page_size=-5), {"event", "page_size"}),
    ],
)
def test_list_query_violations(request_: service_pb2.ListReviewsRequest, fields: set[str]):
    with pytest.raises(InvalidArgument) as exc:
        mappers.to_list_query(request_, None)
    assert set(dict(exc.value.field_violations)) == fields


def test_list_query_by_subject_with_type():
    q = mappers.to_list_query(
        service_pb2.ListReviewsRequest(subject_user="users/ben", subject_type=resources_pb2.Review.GUEST), None
    )
    assert (q.event_id, q.subject_user_id, q.subject_type) == (None, "ben", SubjectType.GUEST)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("users/ana/rating", "ana"), ("users/a.b@c/rating", "a.b@c")],
)
def test_user_child_names(value: str, expected: str):
    assert mappers.user_rating_user(service_pb2.GetUserRatingRequest(name=value)) == expected
