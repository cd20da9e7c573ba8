"""ReviewService: CreateReview and UpdateReview rules and reasons, through real servers and database.

Reviews are blind (tests/api/test_reviews_blind.py): ratings count a review once it is revealed, so tests that
check ratings close the review window first (the worker's reveal job, the clock moved 14 days)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2, service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.common.clock import ManualClock
from tests.support.api import expect_error, new_caller
from tests.support.factories import book_directly
from tests.support.reviews import (
    EVENT,
    GUEST,
    HOST,
    close_review_window,
    complete,
    held_event,
    review_request,
    scheduled_event,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _id(name: str) -> uuid.UUID:
    return uuid.UUID(name.split("/")[1])


async def _user_rating(reviews: review_grpc.ReviewServiceAsyncStub, user: str) -> resources_pb2.UserRating:
    return await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{user}/rating"))


def _update(name: str, *paths: str, rating: int = 0, text: str = "", etag: str = "") -> service_pb2.UpdateReviewRequest:
    return service_pb2.UpdateReviewRequest(
        review=resources_pb2.Review(name=name, rating=rating, text=text, etag=etag),
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
    )


# ---------------------------------------------------------------------------------------------- create


async def test_participants_review_the_event_the_host_and_each_guest(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller("Host"), new_caller("Ana"), new_caller("Ben")
    event = await held_event(events, db_pool, clock, host, [ana, ben])

    of_event = await reviews.CreateReview(
        review_request(event.name, EVENT, 5, text=" Great film "), metadata=ana.metadata
    )
    assert of_event.name.startswith("reviews/")
    uuid.UUID(of_event.name.split("/")[1])
    assert (of_event.event, of_event.subject_type, of_event.subject_user) == (event.name, EVENT, "")
    assert (of_event.author, of_event.author_display_name) == (ana.resource, "Ana")
    assert (of_event.rating, of_event.text) == (5, "Great film")
    assert of_event.etag and of_event.HasField("create_time") and of_event.update_time == of_event.create_time

    of_host = await reviews.CreateReview(review_request(event.name, HOST, 4), metadata=ana.metadata)
    assert of_host.subject_user == host.resource  # set by the server
    by_ben = await reviews.CreateReview(
        review_request(event.name, HOST, 2, subject_user=host.resource), metadata=ben.metadata
    )
    assert by_ben.subject_user == host.resource
    of_guest = await reviews.CreateReview(
        review_request(event.name, GUEST, 3, subject_user=ana.resource), metadata=host.metadata
    )
    assert (of_guest.subject_type, of_guest.subject_user, of_guest.author) == (GUEST, ana.resource, host.resource)
    by_host = await reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=host.metadata)
    assert by_host.author == host.resource

    await close_review_window(db_pool, clock, database_url)
    assert (await _user_rating(reviews, host.resource)).as_host.count == 2
    assert (await _user_rating(reviews, host.resource)).as_host.average == 3.0
    assert (await _user_rating(reviews, ana.resource)).as_guest.count == 1
    event_rating = await db_pool.fetchrow(
        "SELECT rating_sum, rating_count FROM review.event_ratings WHERE event_id = $1", _id(event.name)
    )
    assert (event_rating["rating_sum"], event_rating["rating_count"]) == (9, 2)


async def test_unknown_event_is_not_found(reviews: review_grpc.ReviewServiceAsyncStub):
    err = await expect_error(
        reviews.CreateReview(review_request(f"events/{uuid.uuid4()}", EVENT, 5), metadata=new_caller().metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


async def test_only_a_held_event_can_be_reviewed(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller(), new_caller()
    scheduled = await scheduled_event(events, db_pool, clock, host, [guest])
    cancelled = await scheduled_event(events, db_pool, clock, host, [guest])
    await events.CancelEvent(event_service_pb2.CancelEventRequest(name=cancelled.name), metadata=host.metadata)
    for event in (scheduled, cancelled):
        for caller, subject in ((guest, HOST), (guest, EVENT), (host, EVENT)):
            err = await expect_error(
                reviews.CreateReview(review_request(event.name, subject, 4), metadata=caller.metadata)
            )
            assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_HELD")
    # Once held, the same guest may review it.
    await complete(events, clock, host, scheduled)
    assert (await reviews.CreateReview(review_request(scheduled.name, HOST, 4), metadata=guest.metadata)).rating == 4


async def test_only_participants_may_review(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest, leaver, latecomer, stranger = (new_caller() for _ in range(5))
    event = await scheduled_event(events, db_pool, clock, host, [guest], capacity=5)
    leaver_booking = await book_directly(db_pool, event.name, leaver)
    await db_pool.execute(
        "UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = now() WHERE id = $1", leaver_booking
    )
    await complete(events, clock, host, event)
    # A booking that appears after completion doesn't make its guest a participant.
    await book_directly(db_pool, event.name, latecomer)
    for caller in (leaver, latecomer, stranger):
        for subject in (EVENT, HOST):
            err = await expect_error(
                reviews.CreateReview(review_request(event.name, subject, 3), metadata=caller.metadata)
            )
            assert (err.code, err.reason) == (DENIED, "NOT_A_PARTICIPANT"), caller
    err = await expect_error(
        reviews.CreateReview(
            review_request(event.name, GUEST, 3, subject_user=guest.resource), metadata=stranger.metadata
        )
    )
    assert (err.code, err.reason) == (DENIED, "NOT_A_PARTICIPANT")


async def test_guests_review_hosts_and_hosts_review_guests_only(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [ana, ben])
    err = await expect_error(
        reviews.CreateReview(review_request(event.name, GUEST, 2, subject_user=ben.resource), metadata=ana.metadata)
    )
    assert (err.code, err.reason) == (DENIED, "SUBJECT_NOT_ALLOWED")
    err = await expect_error(reviews.CreateReview(review_request(event.name, HOST, 5), metadata=host.metadata))
    assert (err.code, err.reason) == (DENIED, "SUBJECT_NOT_ALLOWED")
    err = await expect_error(
        reviews.CreateReview(review_request(event.name, HOST, 5, subject_user=ben.resource), metadata=ana.metadata)
    )
    assert err.code == INVALID and "review.subject_user" in err.fields  # a HOST review is about the host


async def test_a_reviewed_guest_must_have_taken_part(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest, leaver, elsewhere = new_caller(), new_caller(), new_caller(), new_caller()
    await held_event(events, db_pool, clock, new_caller(), [elsewhere])  # a participant, but elsewhere
    event = await scheduled_event(events, db_pool, clock, host, [guest], capacity=3)
    booking = await book_directly(db_pool, event.name, leaver)
    await db_pool.execute("UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = now() WHERE id = $1", booking)
    await complete(events, clock, host, event)
    for subject in (leaver, elsewhere, new_caller()):
        err = await expect_error(
            reviews.CreateReview(
                review_request(event.name, GUEST, 1, subject_user=subject.resource), metadata=host.metadata
            )
        )
        assert (err.code, err.reason) == (PRECONDITION, "SUBJECT_NOT_A_PARTICIPANT")
        assert err.metadata["subject_user"] == subject.resource
    assert (
        await reviews.CreateReview(
            review_request(event.name, GUEST, 1, subject_user=guest.resource), metadata=host.metadata
        )
    ).subject_user == guest.resource


async def test_nobody_reviews_themselves(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    for caller, subject in ((host, GUEST), (guest, GUEST), (guest, HOST), (host, HOST)):
        err = await expect_error(
            reviews.CreateReview(
                review_request(event.name, subject, 5, subject_user=caller.resource), metadata=caller.metadata
            )
        )
        assert (err.code, err.reason) == (INVALID, "CANNOT_REVIEW_SELF")
        assert "review.subject_user" in err.fields


async def test_one_review_per_author_event_and_subject(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [ana, ben])
    second = await held_event(events, db_pool, clock, host, [ana])
    first = await reviews.CreateReview(review_request(event.name, HOST, 5), metadata=ana.metadata)
    for request in (
        review_request(event.name, HOST, 1),
        review_request(event.name, HOST, 5, subject_user=host.resource),
    ):
        err = await expect_error(reviews.CreateReview(request, metadata=ana.metadata))
        assert (err.code, err.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_REVIEWED")
        assert err.metadata["review"] == first.name
    # Other subjects, other authors and other events are separate reviews.
    await reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=ana.metadata)
    await reviews.CreateReview(review_request(event.name, HOST, 3), metadata=ben.metadata)
    await reviews.CreateReview(review_request(second.name, HOST, 3), metadata=ana.metadata)
    for guest in (ana, ben):
        await reviews.CreateReview(
            review_request(event.name, GUEST, 4, subject_user=guest.resource), metadata=host.metadata
        )
    err = await expect_error(
        reviews.CreateReview(review_request(event.name, GUEST, 2, subject_user=ben.resource), metadata=host.metadata)
    )
    assert err.reason == "ALREADY_REVIEWED"
    await close_review_window(db_pool, clock, database_url)
    rating = await _user_rating(reviews, host.resource)
    assert (rating.as_host.count, rating.as_host.average) == (3, 3.67)


async def test_concurrent_duplicates_create_one_review(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    results = await asyncio.gather(
        *(
            reviews.CreateReview(review_request(event.name, HOST, 1 + i % 5), metadata=guest.metadata)
            for i in range(20)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, resources_pb2.Review)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(created) == 1 and len(refused) == 19
    assert {e.code() for e in refused} == {grpc.StatusCode.ALREADY_EXISTS}
    await close_review_window(db_pool, clock, database_url)
    rating = (await _user_rating(reviews, host.resource)).as_host
    assert (rating.count, rating.average) == (1, created[0].rating)


async def test_request_id_makes_retries_safe(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    request = review_request(event.name, HOST, 4, text="Kind host", request_id=str(uuid.uuid4()))
    first = await reviews.CreateReview(request, metadata=guest.metadata)
    again = await reviews.CreateReview(request, metadata=guest.metadata)
    assert again == first
    racing = review_request(event.name, EVENT, 5, request_id=str(uuid.uuid4()))
    replies = await asyncio.gather(*(reviews.CreateReview(racing, metadata=guest.metadata) for _ in range(10)))
    assert len({r.name for r in replies}) == 1
    await close_review_window(db_pool, clock, database_url)
    rating = (await _user_rating(reviews, host.resource)).as_host
    assert (rating.count, rating.average) == (1, 4.0)

    changed = review_request(event.name, HOST, 1, request_id=request.request_id)
    err = await expect_error(reviews.CreateReview(changed, metadata=guest.metadata))
    assert (err.code, err.reason) == (INVALID, "REQUEST_ID_REUSED")
    err = await expect_error(
        reviews.CreateReview(review_request(event.name, HOST, 4, request_id="not-a-uuid"), metadata=guest.metadata)
    )
    assert err.code == INVALID and "request_id" in err.fields


@pytest.mark.parametrize(
    ("review", "field"),
    [
        (None, "review"),
        ({"event": "", "subject_type": EVENT, "rating": 5}, "review.event"),
        ({"event": "events/not-a-uuid", "subject_type": EVENT, "rating": 5}, "review.event"),
        ({"event": "bookings/1", "subject_type": EVENT, "rating": 5}, "review.event"),
        ({"subject_type": 0, "rating": 5}, "review.subject_type"),
        ({"subject_type": 9, "rating": 5}, "review.subject_type"),
        ({"subject_type": EVENT, "rating": 0}, "review.rating"),
        ({"subject_type": EVENT, "rating": 6}, "review.rating"),
        ({"subject_type": EVENT, "rating": -1}, "review.rating"),
        ({"subject_type": EVENT, "rating": 5, "text": "x" * 2001}, "review.text"),
        ({"subject_type": EVENT, "rating": 5, "text": "nul\x00byte"}, "review.text"),
        ({"subject_type": EVENT, "rating": 5, "subject_user": "users/someone"}, "review.subject_user"),
        ({"subject_type": GUEST, "rating": 5}, "review.subject_user"),
        ({"subject_type": GUEST, "rating": 5, "subject_user": "someone"}, "review.subject_user"),
        ({"subject_type": GUEST, "rating": 5, "subject_user": "users/a/b"}, "review.subject_user"),
    ],
)
async def test_bad_reviews_name_the_field(reviews: review_grpc.ReviewServiceAsyncStub, review, field):
    request = service_pb2.CreateReviewRequest()
    if review is not None:
        request.review.CopyFrom(resources_pb2.Review(**{"event": f"events/{uuid.uuid4()}", **review}))
    err = await expect_error(reviews.CreateReview(request, metadata=new_caller().metadata))
    assert (err.code, err.reason) == (INVALID, "INVALID_ARGUMENT")
    assert field in err.fields, err.fields


async def test_bad_review_lists_every_bad_field(reviews: review_grpc.ReviewServiceAsyncStub):
    request = service_pb2.CreateReviewRequest(review=resources_pb2.Review(event="x", rating=7))
    err = await expect_error(reviews.CreateReview(request, metadata=new_caller().metadata))
    assert {"review.event", "review.subject_type", "review.rating"} <= set(err.fields)


async def test_text_of_2000_characters_is_accepted(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    text = "é" * 1998 + "\nz"
    review = await reviews.CreateReview(review_request(event.name, EVENT, 3, text=text), metadata=guest.metadata)
    assert review.text == text


async def test_writes_need_a_token_reads_do_not(reviews: review_grpc.ReviewServiceAsyncStub):
    err = await expect_error(reviews.CreateReview(review_request(f"events/{uuid.uuid4()}", EVENT, 5)))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    err = await expect_error(reviews.UpdateReview(_update(f"reviews/{uuid.uuid4()}", "rating", rating=2)))
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name="users/nobody/rating"))
    await reviews.ListReviews(service_pb2.ListReviewsRequest(subject_user="users/nobody"))
    # Anonymous reads get as far as the data: an unknown host is NOT_FOUND, not UNAUTHENTICATED.
    for call in (
        reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name="users/nobody/hostProfile")),
        reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent="users/nobody/hostProfile")),
    ):
        err = await expect_error(call)
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")


# ---------------------------------------------------------------------------------------------- private events


async def test_private_events_are_reviewed_by_participants_only(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest, stranger = new_caller(), new_caller(), new_caller()
    event = await scheduled_event(events, db_pool, clock, host, [guest], private=True)
    # Before it is held, its booked guest sees it exists (not held yet); a stranger doesn't see it at all.
    err = await expect_error(reviews.CreateReview(review_request(event.name, HOST, 5), metadata=guest.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_HELD")
    err = await expect_error(reviews.CreateReview(review_request(event.name, HOST, 5), metadata=stranger.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    await complete(events, clock, host, event)
    err = await expect_error(reviews.CreateReview(review_request(event.name, EVENT, 5), metadata=stranger.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    review = await reviews.CreateReview(review_request(event.name, EVENT, 5), metadata=guest.metadata)
    await close_review_window(db_pool, clock, database_url)

    listed = await reviews.ListReviews(service_pb2.ListReviewsRequest(event=event.name), metadata=host.metadata)
    assert [r.name for r in listed.reviews] == [review.name]
    listed = await reviews.ListReviews(service_pb2.ListReviewsRequest(event=event.name), metadata=guest.metadata)
    assert [r.name for r in listed.reviews] == [review.name]
    for metadata in (stranger.metadata, ()):
        err = await expect_error(
            reviews.ListReviews(service_pb2.ListReviewsRequest(event=event.name), metadata=metadata)
        )
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


# ---------------------------------------------------------------------------------------------- update


async def test_the_author_edits_and_ratings_follow(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller("Gina")
    event = await held_event(events, db_pool, clock, host, [guest])
    review = await reviews.CreateReview(review_request(event.name, HOST, 5, text="Lovely"), metadata=guest.metadata)
    await reviews.CreateReview(review_request(event.name, EVENT, 2), metadata=guest.metadata)
    clock.advance(minutes=1)

    edited = await reviews.UpdateReview(
        _update(review.name, "rating", rating=2, etag=review.etag), metadata=guest.metadata
    )
    assert (edited.rating, edited.text) == (2, "Lovely")
    assert edited.etag != review.etag
    assert edited.update_time.ToDatetime() > edited.create_time.ToDatetime() == review.create_time.ToDatetime()
    rating = (await _user_rating(reviews, host.resource)).as_host
    assert (rating.count, rating.average) == (0, 0.0)  # pending: counted nowhere yet

    # Empty mask: the populated fields only (here the text; rating 0 means "not given").
    edited = await reviews.UpdateReview(_update(review.name, text="Lovely, really"), metadata=guest.metadata)
    assert (edited.rating, edited.text) == (2, "Lovely, really")
    # Named in the mask, an empty text clears it.
    edited = await reviews.UpdateReview(_update(review.name, "text"), metadata=guest.metadata)
    assert edited.text == ""
    edited = await reviews.UpdateReview(_update(review.name, "*", rating=3, text="Fine"), metadata=guest.metadata)
    assert (edited.rating, edited.text) == (3, "Fine")
    # Nothing changes: the review (and its etag) stay as they are.
    same = await reviews.UpdateReview(_update(review.name, "rating", rating=3), metadata=guest.metadata)
    assert same.etag == edited.etag
    await close_review_window(db_pool, clock, database_url)  # revealed as last edited
    rating = (await _user_rating(reviews, host.resource)).as_host
    assert (rating.count, rating.average) == (1, 3.0)
    event_rating = await db_pool.fetchval(
        "SELECT rating_sum FROM review.event_ratings WHERE event_id = $1", _id(event.name)
    )
    assert event_rating == 2  # the EVENT review wasn't touched


async def test_only_the_author_may_edit(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    review = await reviews.CreateReview(review_request(event.name, HOST, 5), metadata=guest.metadata)
    for revealed in (False, True):  # pending: nobody else knows it exists; revealed: visible, not theirs
        if revealed:
            await close_review_window(db_pool, clock, database_url)
        for caller in (host, new_caller()):
            err = await expect_error(
                reviews.UpdateReview(_update(review.name, "rating", rating=1), metadata=caller.metadata)
            )
            expected = (DENIED, "NOT_REVIEW_AUTHOR") if revealed else (grpc.StatusCode.NOT_FOUND, "REVIEW_NOT_FOUND")
            assert (err.code, err.reason) == expected
    err = await expect_error(
        reviews.UpdateReview(_update(f"reviews/{uuid.uuid4()}", "rating", rating=1), metadata=guest.metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "REVIEW_NOT_FOUND")
    assert (await _user_rating(reviews, host.resource)).as_host.average == 5.0


async def test_stale_etag_is_aborted(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [guest])
    review = await reviews.CreateReview(review_request(event.name, HOST, 5), metadata=guest.metadata)
    await reviews.UpdateReview(_update(review.name, "rating", rating=4, etag=review.etag), metadata=guest.metadata)
    err = await expect_error(
        reviews.UpdateReview(_update(review.name, "rating", rating=1, etag=review.etag), metadata=guest.metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert err.metadata["current_etag"] != review.etag
    await close_review_window(db_pool, clock, database_url)
    assert (await _user_rating(reviews, host.resource)).as_host.average == 4.0


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (service_pb2.UpdateReviewRequest(), "review"),
        (_update("reviews/nope", "rating", rating=2), "review.name"),
        (_update("", "rating", rating=2), "review.name"),
        (_update(f"reviews/{uuid.uuid4()}", "rating", rating=0), "review.rating"),
        (_update(f"reviews/{uuid.uuid4()}", "rating", rating=6), "review.rating"),
        (_update(f"reviews/{uuid.uuid4()}", "text", text="t" * 2001), "review.text"),
        (_update(f"reviews/{uuid.uuid4()}", "subject_type"), "update_mask"),
        (_update(f"reviews/{uuid.uuid4()}", "event", "rating", rating=3), "update_mask"),
        (_update(f"reviews/{uuid.uuid4()}", "rating", rating=3, etag="W/1"), "review.etag"),
    ],
)
async def test_bad_edits_name_the_field(reviews: review_grpc.ReviewServiceAsyncStub, request_, field):
    err = await expect_error(reviews.UpdateReview(request_, metadata=new_caller().metadata))
    assert err.code == INVALID
    assert field in err.fields, err.fields


async def test_concurrent_edits_keep_the_aggregate_exact(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guests = new_caller(), [new_caller() for _ in range(5)]
    event = await held_event(events, db_pool, clock, host, guests)
    created = [await reviews.CreateReview(review_request(event.name, HOST, 3), metadata=g.metadata) for g in guests]
    edits = [
        reviews.UpdateReview(_update(r.name, "rating", rating=1 + (i * 7 + j) % 5), metadata=g.metadata)
        for j in range(8)
        for i, (g, r) in enumerate(zip(guests, created, strict=True))
    ]
    await asyncio.gather(*edits)
    await close_review_window(db_pool, clock, database_url)
    final = await db_pool.fetch("SELECT rating FROM review.reviews WHERE event_id = $1", _id(event.name))
    rating = (await _user_rating(reviews, host.resource)).as_host
    assert rating.count == 5
    assert rating.average == round(sum(r["rating"] for r in final) / 5, 2)
    versions = await db_pool.fetch("SELECT version FROM review.reviews WHERE event_id = $1", _id(event.name))
    assert all(v["version"] >= 2 for v in versions)
